"""The state journal on real stores: a journaled plain directory, a VM's encrypted .nvram under a real
native key provider, and real processes killed by SIGKILL at every step of appends and folds.

Attacks on a VM's journal tried (each refused with nothing loaded or overwritten, or harmless): the
journal's tail truncated, the journal deleted, emptied (0 bytes), a byte flipped in a middle record and
in the header, the journal of another VM put in its place, an old journal (of an older .nvram
generation) put back after a fold, and the .nvram rolled back with its own journal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.files import refuse_writes
from support.servers import REPO_ROOT
from vmcrypt.errors import RollbackError
from vmcrypt.keys import KeyManager
from vmcrypt.vm import VmHome, VmSpec, create_vm
from vmcrypt.vm_encryption import encrypt_vm
from vmcrypt.vm_vtpm import VmNvramStore, journal_path
from vtpm.journal import RECORDS_OFFSET, RECORD_HEAD
from vtpm.journal_store import JournaledStore, JournalGroup, JournalRollbackError
from vtpm.state import NvIndex, TpmState
from vtpm.storage import JOURNAL_FILE, PLAIN_STATE_FILE, PlainStateStore, StateStoreError

INDEX = 0x01500000


def _write(store: JournaledStore, state: TpmState, value: int) -> None:
    state.nv[INDEX] = NvIndex(INDEX, 11, 0x2000A, b"", 8, b"", value.to_bytes(8, "big"))
    store.persist_state(state)


def _value(state: TpmState | None) -> int:
    assert state is not None
    return int.from_bytes(state.nv[INDEX].data, "big") if INDEX in state.nv else 0


def _plain(directory: Path, fold_bytes: int = 32 << 10) -> tuple[JournaledStore, TpmState]:
    store = JournaledStore(PlainStateStore(directory), fold_bytes=fold_bytes, journal_size=64 << 10)
    state = store.load()
    if state is None:
        store.save(TpmState.manufacture().to_bytes())
        state = store.load()
    assert state is not None
    return store, state


# ----------------------------------------------------------------------------- plain directory


def test_killed_store_loses_nothing_acknowledged_and_open_folds(tmp_path: Path) -> None:
    store, state = _plain(tmp_path)
    folds = store.folds
    for value in range(1, 6):
        _write(store, state, value)
    assert store.syncs == 5 and store.folds == folds
    stored = (tmp_path / PLAIN_STATE_FILE).read_bytes()
    store.abandon()  # as if killed: no fold
    assert os.stat(tmp_path / JOURNAL_FILE).st_mode & 0o777 == 0o600
    assert _value(PlainStateStore(tmp_path).load()) == 5  # replayed, and folded into the state file
    assert (tmp_path / PLAIN_STATE_FILE).read_bytes() != stored and not (tmp_path / JOURNAL_FILE).exists()


def test_fold_on_size_and_a_stale_journal_is_ignored(tmp_path: Path) -> None:
    store, state = _plain(tmp_path, fold_bytes=RECORDS_OFFSET + 2000)
    _write(store, state, 1)
    old_journal = (tmp_path / JOURNAL_FILE).read_bytes()  # value 1, on the first base
    for value in range(2, 30):
        _write(store, state, value)
    assert store.folds >= 2
    store.close()
    assert not (tmp_path / JOURNAL_FILE).exists()  # folded and removed on close
    (tmp_path / JOURNAL_FILE).write_bytes(old_journal)
    assert _value(PlainStateStore(tmp_path).load()) == 29
    assert not (tmp_path / JOURNAL_FILE).exists()  # the stale journal was removed


def test_group_commit_defers_until_commit_and_syncs_each_journal_once(tmp_path: Path) -> None:
    group = JournalGroup()
    members = [_plain(tmp_path / str(i)) for i in range(3)]
    for store, _ in members:
        group.add(store)
    for value in (1, 2):
        for store, state in members:
            _write(store, state, value)
    assert all(store.pending and store.syncs == 0 for store, _ in members)
    assert _value(PlainStateStore(tmp_path / "0").load()) == 0  # nothing written before the commit
    assert group.commit() == 6 and group.rounds == 1
    assert all(not store.pending and store.syncs == 1 for store, _ in members)
    assert _value(PlainStateStore(tmp_path / "2").load()) == 2
    group.close()


def test_group_commit_visits_only_the_journals_written_since_the_last_one(tmp_path: Path) -> None:
    """A host's group holds every vTPM's journal; a commit looks at the ones that have records waiting
    (in the order they started to wait), not at all of them."""
    group = JournalGroup(parallel=False)
    members = [_plain(tmp_path / str(i)) for i in range(40)]
    for store, _ in members:
        group.add(store)
    assert group.pending_stores() == []
    for value, i in enumerate((17, 3, 17), 1):
        _write(*members[i], value)
    assert group.pending_stores() == [members[17][0], members[3][0]]
    assert group.commit() == 3
    assert group.pending_stores() == [] and group.commit() == 0
    assert [store.syncs for store, _ in members].count(1) == 2 and sum(store.syncs for store, _ in members) == 2
    group.discard(members[5][0])
    _write(*members[5], 5)  # out of the group: committed at once, never waiting
    assert members[5][0].syncs == 1 and group.pending_stores() == []
    group.close()


# ----------------------------------------------------------------------------- a VM's encrypted .nvram


def _vm(tmp_path: Path, name: str, keys: KeyManager) -> VmHome:
    vm = create_vm(tmp_path / name, VmSpec(name))
    encrypt_vm(vm, keys)
    return vm


def _served(vm: VmHome, home: Path, writes: range, *, accept_rollback: bool = False) -> None:
    """Serve the vTPM in-process: write ``writes``, record the position, then 'crash' (no fold)."""
    store = JournaledStore(VmNvramStore.open(vm.vmx_path, home=str(home), accept_rollback=accept_rollback))
    state = store.load()
    if state is None:
        store.save(TpmState.manufacture().to_bytes())
        state = store.load()
    assert state is not None
    for value in writes:
        _write(store, state, value)
    store.record_position()
    store.abandon()


def _open_value(vm: VmHome, home: Path, **options: bool) -> int:
    with VmNvramStore.open(vm.vmx_path, home=str(home), **options) as store:
        return _value(store.load())


def _files(vm: VmHome) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (vm.nvram_path, journal_path(vm)) if p.exists()}


def _record_offsets(data: bytes) -> list[int]:
    offsets, offset = [], RECORDS_OFFSET
    while (length := RECORD_HEAD.unpack_from(data, offset)[0]):
        offsets.append(offset)
        offset += RECORD_HEAD.size + length
    return offsets


def test_vm_journal_is_sealed_and_replays_after_a_crash(tmp_path: Path, home: Path, keys: KeyManager) -> None:
    vm = _vm(tmp_path, "vm1", keys)
    _served(vm, home, range(1, 4))
    data = journal_path(vm).read_bytes()
    assert len(_record_offsets(data)) == 3 and (3).to_bytes(8, "big").hex().encode() not in data
    assert _open_value(vm, home) == 3
    # Opening folded the records into a new .nvram generation and removed the journal.
    assert not journal_path(vm).exists() and _open_value(vm, home) == 3


def test_vm_journal_position_is_recorded_in_the_background(tmp_path: Path, home: Path, keys: KeyManager) -> None:
    import time

    from vmcrypt.vm_vtpm import NVRAM_JOURNAL_ROLE

    vm = _vm(tmp_path, "vm1", keys)
    store = JournaledStore(VmNvramStore.open(vm.vmx_path, home=str(home)), record_interval=0.05)
    store.save(TpmState.manufacture().to_bytes())
    state = store.load()
    assert state is not None
    for value in range(1, 4):
        _write(store, state, value)  # acknowledged without waiting for the key provider
    reference = store.base.key.reference
    provider = keys.provider(reference.provider_id)
    deadline = time.monotonic() + 30
    while (provider.generation(reference.key_id, NVRAM_JOURNAL_ROLE) or 0) & 0xFFFFFFFF < 3:
        assert time.monotonic() < deadline, "the position was never recorded"
        time.sleep(0.02)
    assert provider.generation(reference.key_id, NVRAM_JOURNAL_ROLE) >> 32 == store.base.generation
    store.close()


@pytest.mark.parametrize("attack", ["truncate-tail", "delete", "empty"])
def test_vm_journal_cut_short_is_a_rollback(tmp_path: Path, home: Path, keys: KeyManager, attack: str) -> None:
    vm = _vm(tmp_path, "vm1", keys)
    _served(vm, home, range(1, 2))
    _open_value(vm, home)  # folded
    _served(vm, home, range(2, 6))
    path = journal_path(vm)
    data = bytearray(path.read_bytes())
    if attack == "truncate-tail":  # the last two acknowledged records zeroed: looks like a clean end
        cut = _record_offsets(data)[-2]
        data[cut:] = bytes(len(data) - cut)
        path.write_bytes(data)
    elif attack == "delete":
        path.unlink()
    else:
        path.write_bytes(b"")
    before = _files(vm)
    with pytest.raises(JournalRollbackError, match="--accept-rollback"):
        _open_value(vm, home)
    assert _files(vm) == before  # nothing overwritten
    expected = {"truncate-tail": 3, "delete": 1, "empty": 1}[attack]
    assert _open_value(vm, home, accept_rollback=True) == expected
    assert _open_value(vm, home) == expected  # accepted once: the record was lowered


@pytest.mark.parametrize("attack", ["flip-middle-record", "flip-header", "other-vm-journal"])
def test_vm_journal_damaged_or_foreign_is_refused(tmp_path: Path, home: Path, keys: KeyManager, attack: str) -> None:
    vm = _vm(tmp_path, "vm1", keys)
    _served(vm, home, range(1, 4))
    path = journal_path(vm)
    data = bytearray(path.read_bytes())
    if attack == "flip-middle-record":
        data[_record_offsets(data)[1] + 20] ^= 0x40
    elif attack == "flip-header":
        data[40] ^= 1
    else:
        other = _vm(tmp_path, "vm2", keys)
        _served(other, home, range(7, 10))
        data = bytearray(journal_path(other).read_bytes())
    path.write_bytes(data)
    before = _files(vm)
    with pytest.raises(StateStoreError, match="nothing was loaded or changed"):
        _open_value(vm, home)
    assert _files(vm) == before


def test_old_journal_against_newer_nvram_is_ignored_and_old_nvram_is_refused(tmp_path: Path, home: Path,
                                                                             keys: KeyManager) -> None:
    vm = _vm(tmp_path, "vm1", keys)
    _served(vm, home, range(1, 3))
    old = _files(vm)  # .nvram of generation G and its journal with values 1, 2
    assert _open_value(vm, home) == 2
    _served(vm, home, range(3, 5))
    assert _open_value(vm, home) == 4
    journal_path(vm).write_bytes(old[journal_path(vm).name])  # the old journal against the newer .nvram
    assert _open_value(vm, home) == 4  # stale: ignored, nothing of it applied
    vm.nvram_path.write_bytes(old[vm.nvram_path.name])  # and the old .nvram with it: a rollback
    with pytest.raises(RollbackError):
        _open_value(vm, home)


def test_decrypt_after_a_crash_keeps_the_journaled_writes(tmp_path: Path, home: Path, keys: KeyManager) -> None:
    from vmcrypt.nvram import Nvram
    from vmcrypt.vm_encryption import decrypt_vm
    from vmcrypt.vm_vtpm import fold_leftover_journal

    vm = _vm(tmp_path, "vm1", keys)
    _served(vm, home, range(1, 4))  # killed with three records in the journal
    fold_leftover_journal(vm, keys)  # what `vmcrypt decrypt` and the management plane do first
    decrypt_vm(vm, keys)
    section = Nvram.parse(vm.nvram_path.read_bytes()).vtpm_state
    assert section is not None and _value(TpmState.from_bytes(section)) == 3
    assert not journal_path(vm).exists()


# ----------------------------------------------------------------------------- SIGKILL at every step

WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from vtpm.journal_store import JournaledStore
    from vtpm.state import NvIndex, TpmState
    from vtpm.storage import PlainStateStore
    from vmcrypt.vtpm_key_file import EncryptedStateStore

    directory, kind, step, when, start = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    after = step.endswith("-after")  # killed when the call has returned, before its caller goes on
    step = step.removesuffix("-after")
    calls = {"pwrite": 0, "fdatasync": 0, "fsync": 0, "replace": 0}
    real = {name: getattr(os, name) for name in calls}

    def hooked(name):
        def call(*args):
            calls[name] += 1
            kill = name == step and calls[name] == when
            if kill and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            result = real[name](*args)
            if kill:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return call

    base = PlainStateStore(directory) if kind == "plain" else EncryptedStateStore(directory, bytes(range(32)))
    store = JournaledStore(base, fold_bytes=4096 + 600, journal_size=8192)  # a fold every few records
    state = store.load()
    for name in calls:
        setattr(os, name, hooked(name))
    value = start
    while True:
        value += 1
        state.nv[0x01500000] = NvIndex(0x01500000, 11, 0x2000A, b"", 8, b"", value.to_bytes(8, "big"))
        store.persist_state(state)
        print(value, flush=True)  # acknowledged: persist_state returned
    """
)


def _kill_at(directory: Path, kind: str, step: str, when: int, start: int) -> list[int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", WRITER, str(directory), kind, step, str(when), str(start)],
                          capture_output=True, env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    return [int(line) for line in proc.stdout.split()]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "key-file"])
def test_sigkill_at_every_step_of_appends_and_folds(tmp_path: Path, kind: str) -> None:
    """The writer journals one NV change after another, folding every few records; it is killed at
    the n-th pwrite (record or zero fill; before it, and just after it returned), fdatasync
    (acknowledgement), fsync (fold's state file or new journal) and rename (fold), for each n in a range
    covering several folds. After each kill the store must open and hold the last acknowledged value, or the one
    after it (written, not yet acknowledged)."""
    from vmcrypt.vtpm_key_file import EncryptedStateStore

    directory = tmp_path / "state"
    base = PlainStateStore(directory) if kind == "plain" else EncryptedStateStore(directory, bytes(range(32)))
    store = JournaledStore(base, fold_bytes=4096 + 600, journal_size=8192)
    store.save(TpmState.manufacture().to_bytes())
    store.close()
    value, kills = 0, 0
    for step, counts in (("pwrite", range(1, 16)), ("pwrite-after", range(1, 12)), ("fdatasync", range(1, 12)),
                         ("fsync", range(1, 10)), ("replace", range(1, 6))):
        for when in counts:
            acked = _kill_at(directory, kind, step, when, value)
            kills += 1
            base = PlainStateStore(directory) if kind == "plain" else EncryptedStateStore(directory, bytes(range(32)))
            found = _value(base.load())
            last = acked[-1] if acked else value
            assert found in (last, last + 1), (step, when, acked, found)
            value = found
    assert kills == 51 and value > 25


@pytest.mark.slow
@pytest.mark.parametrize("key_file", [False, True], ids=["plain", "key-file"])
def test_sigkill_of_vtpm_serve_keeps_every_acknowledged_nv_write(tmp_path: Path, key_file: bool) -> None:
    """A real `vtpm serve` (journal on, the default) gets NV_Writes of a counter over TCP and is
    killed with SIGKILL after a varying number of acknowledged writes; the state it leaves must hold
    the last acknowledged value or the one in flight, never less."""
    from support.servers import start_vtpm
    from support.tpm_helpers import LATENCY_NV_INDEX, nv_write, prepare_latency_target, response_code
    from vmcrypt.vtpm_key_file import EncryptedStateStore
    from vtpm.constants import RH

    state_dir = tmp_path / "state"
    options = ["--state", str(state_dir), "--startup-clear"]
    if key_file:
        (tmp_path / "key").write_bytes(bytes(range(32)))
        options += ["--key-file", str(tmp_path / "key")]
    value = 0
    for attempt, writes in enumerate((1, 7, 40)):
        with start_vtpm(options, tmp_path / f"log{attempt}") as server:
            conn = server.connect()
            prepare_latency_target(conn)
            for _ in range(writes):
                value += 1
                assert response_code(conn.transact(nv_write(LATENCY_NV_INDEX, value.to_bytes(32, "big"),
                                                            auth_handle=RH.OWNER))) == 0
            conn.sock.sendall(nv_write(LATENCY_NV_INDEX, (value + 1).to_bytes(32, "big"), auth_handle=RH.OWNER))
            server.proc.send_signal(signal.SIGKILL)  # one more write in flight, never acknowledged
            server.proc.wait()
            conn.close()
        base = EncryptedStateStore(state_dir, bytes(range(32))) if key_file else PlainStateStore(state_dir)
        state = base.load()
        assert state is not None
        found = int.from_bytes(state.nv[LATENCY_NV_INDEX].data, "big")
        assert found in (value, value + 1)
        value = found


# ----------------------------------------------------------------------------- host and migration seams


def test_drop_unacknowledged_erases_records_written_but_not_synced(tmp_path: Path) -> None:
    store, state = _plain(tmp_path)
    _write(store, state, 1)  # acknowledged
    group = JournalGroup(parallel=False)
    group.add(store)
    _write(store, state, 2)
    assert store.write_pending() == 1
    assert store._file is not None
    store._file.sync()  # the blocks reached the disk but the store's sync reported a failure: never acknowledged
    journal = (tmp_path / JOURNAL_FILE).read_bytes()
    store.drop_unacknowledged()
    assert not store.loaded and (tmp_path / JOURNAL_FILE).read_bytes() != journal
    again = JournaledStore(PlainStateStore(tmp_path))
    assert _value(again.load()) == 1  # the dropped change is gone from the disk too
    again.close()


def test_unload_folds_and_peek_reads_without_writing(tmp_path: Path) -> None:
    store, state = _plain(tmp_path)
    _write(store, state, 7)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    reader = JournaledStore(PlainStateStore(tmp_path))
    assert _value(reader.peek()) == 7 and not reader.loaded  # base + journal, in memory only
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    store.unload()  # evict: the state is folded, the journal removed
    assert not (tmp_path / JOURNAL_FILE).exists() and not store.loaded
    assert _value(PlainStateStore(tmp_path).load()) == 7
    state = store.load()
    _write(store, state, 8)  # loaded again: a new journal
    store.close()
    assert _value(PlainStateStore(tmp_path).load()) == 8


def test_group_commit_names_the_journal_that_failed_and_commits_the_others(tmp_path: Path) -> None:
    from vtpm.journal_store import GroupCommitError

    group = JournalGroup(parallel=True)
    (ok_store, ok_state), (bad_store, bad_state) = _plain(tmp_path / "ok"), _plain(tmp_path / "bad")
    group.add(ok_store)
    group.add(bad_store)
    assert bad_store._file is not None
    refuse_writes(bad_store._file)  # the disk refuses writes (EBADF)
    _write(ok_store, ok_state, 3)
    _write(bad_store, bad_state, 3)
    with pytest.raises(GroupCommitError) as failed:
        group.commit()
    assert list(failed.value.failed) == [bad_store]
    assert _value(PlainStateStore(tmp_path / "ok").load()) == 3  # committed (recover folds it on open)
    assert group.pending_stores() == [bad_store]  # its record waits for the next commit
    group.discard(ok_store)
    group.discard(bad_store)
    bad_store.abandon()
    group.close()
