"""The state journal: its format (vtpm.journal) and the change tracking (vtpm.state). The journaled
stores on real files, the attacks on a VM's journal and the crash tests are in tests/e2e/test_journal_store.py.

Journal inputs tried: a torn last record (cut short, zeros after), a flipped byte in a middle record,
in the last record and in the header, two records swapped, a record spliced in from another journal of
the same key, stray bytes after the end, the wrong key, the wrong context, a sealed journal read as a
plain one, zeros where a header should be, 400 random mutations; records that verify but do not apply
(forged in a clear journal: not JSON, wrong shapes and types, unknown parts, deep nesting).
"""

from __future__ import annotations

import random

import pytest

from vtpm import journal
from vtpm.journal import Base, JournalError, RECORDS_OFFSET
from vtpm.journal_store import encode_delta
from vtpm.state import (NvIndex, TpmState, apply_delta, changes, diff_parts, encode_parts, load_parts, nv_change_json,
                        snapshot)

SECRET = bytes(range(32))
CONTEXT = b"nvram:vm1.nvram\0vm-id"


def _journal(payloads: list[bytes], secret: bytes | None = SECRET, context: bytes = CONTEXT,
             base: Base = Base(7, b"d" * 32)) -> bytearray:
    block, header, sealer = journal.new_header(base, secret, context)
    data, tag = bytearray(block), header.tag[:journal.TAG_SIZE]
    for seq, payload in enumerate(payloads, 1):
        record = sealer.seal(base.generation, seq, tag, payload)
        data += record
        tag = record[-journal.TAG_SIZE:]
    return data + bytes(4096)


def _offsets(data: bytes) -> list[int]:
    offsets, offset = [], RECORDS_OFFSET
    while True:
        length, seq = journal.RECORD_HEAD.unpack_from(data, offset)
        if not length:
            return offsets
        offsets.append(offset)
        offset += journal.RECORD_HEAD.size + length


@pytest.mark.parametrize("secret", [SECRET, None], ids=["sealed", "checksum"])
def test_records_replay_in_order_and_torn_tail_is_dropped(secret: bytes | None) -> None:
    payloads = [b"first", b"second" * 20, b"third"]
    data = _journal(payloads, secret)
    found = journal.replay(bytes(data), secret, CONTEXT)
    assert found.payloads == payloads and not found.torn and found.position == (7 << 32) | 3
    if secret is not None:
        assert b"second" not in data  # sealed: the payload is encrypted
    last = _offsets(data)[-1]
    # The last append torn at three places: in its length (it reads as the end), in its seq, in its tag.
    for cut, torn_seen in ((last + 3, False), (last + 10, True), (len(data) - 4096 - 2, True)):
        torn = bytearray(data)
        torn[cut:] = bytes(len(torn) - cut)
        found = journal.replay(bytes(torn), secret, CONTEXT)
        assert found.payloads == payloads[:2] and found.torn is torn_seen and found.end == last


def test_damage_that_is_not_a_torn_tail_is_refused() -> None:
    data = _journal([b"a" * 40, b"b" * 40, b"c" * 40])
    first, second, third = _offsets(data)
    flipped = bytearray(data)
    flipped[second + 20] ^= 1
    with pytest.raises(JournalError, match="record 2 .* damaged"):
        journal.replay(bytes(flipped), SECRET, CONTEXT)
    swapped = bytearray(data)
    swapped[first:third] = data[second:third] + data[first:second]
    with pytest.raises(JournalError):
        journal.replay(bytes(swapped), SECRET, CONTEXT)
    other = _journal([b"x" * 40, b"y" * 40, b"z" * 40])  # same key and base, another journal id and salt
    spliced = bytearray(data)
    spliced[second:third] = other[second:third]
    with pytest.raises(JournalError):
        journal.replay(bytes(spliced), SECRET, CONTEXT)
    stray = bytearray(data)
    stray[-10] = 1
    with pytest.raises(JournalError, match="stray bytes"):
        journal.replay(bytes(stray), SECRET, CONTEXT)
    header = bytearray(data)
    header[30] ^= 1
    with pytest.raises(JournalError, match="header does not verify"):
        journal.replay(bytes(header), SECRET, CONTEXT)
    # A flipped byte in the LAST record looks like a torn append: dropped (a truncation, which the
    # recorded position catches), never replayed.
    last = bytearray(data)
    last[third + 20] ^= 1
    assert journal.replay(bytes(last), SECRET, CONTEXT).payloads == [b"a" * 40, b"b" * 40]


def test_a_journal_opens_only_with_its_key_and_context() -> None:
    data = bytes(_journal([b"payload"]))
    with pytest.raises(JournalError, match="header does not verify"):
        journal.replay(data, bytes(32), CONTEXT)
    with pytest.raises(JournalError, match="header does not verify"):
        journal.replay(data, SECRET, b"nvram:vm2.nvram\0other-vm")
    with pytest.raises(JournalError, match="encrypted but the store is not"):
        journal.replay(data, None, CONTEXT)
    with pytest.raises(JournalError, match="not a vTPM state journal"):
        journal.replay(b"\0" * 8192, SECRET, CONTEXT)


def _mutate(state: TpmState, rng: random.Random) -> None:
    choice = rng.randrange(6)
    if choice == 0:
        handle = 0x01000000 + rng.randrange(4)
        state.nv[handle] = NvIndex(handle, 11, rng.randrange(1 << 20), b"", 16, b"", rng.randbytes(rng.randrange(17)))
    elif choice == 1 and state.nv:
        del state.nv[rng.choice(sorted(state.nv))]
    elif choice == 2:
        state.owner.auth = rng.randbytes(rng.randrange(8))
    elif choice == 3:
        state.pcr_partial = [[11, rng.randrange(1 << 24)]]
    elif choice == 4:
        state.failed_tries = rng.randrange(5)
        state.disable_clear = bool(rng.randrange(2))
    else:
        state.primary_cache[str(rng.randrange(3))] = {"n": rng.randbytes(4), "p": b"", "seed_value": b"s"}


def test_change_tracking_matches_the_encoded_difference_and_replays_to_the_same_state() -> None:
    rng = random.Random(5)
    state = TpmState.manufacture()
    parts, snap = encode_parts(state), snapshot(state)
    base = load_parts(state.to_bytes())
    fast_taken = inexact = 0
    for _ in range(200):
        _mutate(state, rng)
        hint = list(state.nv)  # as if the engine said these indices changed: the fast form is the hinted one
        fast = nv_change_json(snap, state, hint)  # None when an index was added or removed
        hinted, hinted_after = changes(snap, state, hint)
        exact = set(hinted) <= {"nv"}  # the hint is exact: nothing but NV fields changed
        if fast is not None and exact:
            assert fast == ((encode_delta(hinted) if hinted else b""), hinted_after)
            fast_taken += 1
        elif fast is not None:  # a change the hint did not cover: not in this record, still in the snapshot's
            payload, fast_after = fast  # past, so the next full comparison finds it
            assert b'"set"' not in payload
            assert changes(fast_after, state)[0].get("set") == hinted["set"]
            inexact += 1
        delta, snap = changes(snap, state)
        encoded = encode_parts(state)
        assert delta == diff_parts(parts, encoded)
        apply_delta(base, delta)
        parts = encoded
    assert TpmState.from_parts(base).to_bytes() == state.to_bytes()
    assert fast_taken > 10 and inexact > 10


@pytest.mark.parametrize("secret", [SECRET, None], ids=["sealed", "checksum"])
def test_mutated_journals_replay_a_prefix_or_are_refused(secret: bytes | None) -> None:
    """400 random mutations (bit flips, byte runs, cuts, zeroed runs, duplicated slices) of a journal
    of five records: replay gives a prefix of the records written or a JournalError, nothing else."""
    payloads = [bytes([65 + i]) * (10 + 7 * i) for i in range(5)]
    data = bytes(_journal(payloads, secret))
    rng = random.Random(11)
    refused = 0
    for _ in range(400):
        mutated = bytearray(data)
        at = rng.randrange(len(data) - 4096 + 64)
        kind = rng.randrange(5)
        if kind == 0:
            mutated[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            mutated[at:at + 4] = rng.randbytes(4)
        elif kind == 2:
            mutated = mutated[:at]
        elif kind == 3:
            mutated[at:at + 40] = bytes(len(mutated[at:at + 40]))
        else:
            mutated[at:at] = mutated[RECORDS_OFFSET:RECORDS_OFFSET + rng.randrange(1, 80)]
        try:
            found = journal.replay(bytes(mutated), secret, CONTEXT)
        except JournalError:
            refused += 1
            continue
        assert found.payloads == payloads[:len(found.payloads)]
    assert refused > 100


@pytest.mark.parametrize("payload", [
    b"not json", b"[]", b'{"bogus": 1}', b'{"set": {"eps": 5}}', b'{"set": {"no_such_part": 1}}',
    b'{"nv": {"1": "x"}}', b'{"nv": {"16777217": {"index": 16777217}}}', b'{"nv": []}',
    b'{"set": {"orderly": "sideways"}}', b"[" * 100_000 + b"]" * 100_000,
], ids=["not-json", "list", "unknown-key", "seed-type", "unknown-part", "nv-string", "nv-partial", "nv-list",
        "orderly", "deep"])
def test_a_forged_record_that_does_not_apply_is_refused_and_nothing_changes(tmp_path, payload: bytes) -> None:
    """A checksummed (clear) journal can be forged by anyone who can write the directory: a record
    that verifies but does not make a valid state is refused, with the state file and journal kept."""
    from vtpm.journal import Base
    from vtpm.journal_store import StateStoreError
    from vtpm.storage import JOURNAL_FILE, PLAIN_STATE_FILE, PlainStateStore

    raw = TpmState.manufacture().to_bytes()
    (tmp_path / PLAIN_STATE_FILE).write_bytes(raw)
    (tmp_path / JOURNAL_FILE).write_bytes(bytes(_journal([payload], None, b"vtpm plain state directory",
                                                         Base.of(0, raw))))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(StateStoreError, match="do not apply"):
        PlainStateStore(tmp_path).load()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


class _CheckingSink:
    """The engine's StateSink: for every save it computes the change both ways, narrowed by the
    engine's NV hint and in full, and notes a difference instead of journaling."""

    def __init__(self, state: TpmState) -> None:
        self.snap = snapshot(state)
        self.hints: list[object] = []
        self.fast = 0
        self.mismatches: list[str] = []

    def persist_state(self, state: TpmState, nv: object = None) -> None:
        full, after = changes(self.snap, state)
        if nv is not None:
            narrowed, narrowed_after = changes(self.snap, state, nv)  # type: ignore[arg-type]
            if narrowed != full or narrowed_after != after:
                self.mismatches.append(f"hint {nv}: {narrowed} != {full}")
            fast = nv_change_json(self.snap, state, nv)  # type: ignore[arg-type]
            if fast is not None:
                self.fast += 1
                payload, fast_after = fast
                if payload != (encode_delta(full) if full else b"") or fast_after != after:
                    self.mismatches.append(f"hint {nv}: fast JSON {payload!r} != {encode_delta(full)!r}")
        self.hints.append(nv)
        self.snap = after


def test_nv_write_hints_journal_what_a_full_comparison_finds() -> None:
    """NV_Write, NV_Increment, NV_Extend and NV_SetBits say which index they changed (mark_nv_dirty);
    the narrowed comparison finds the same change as the full one, also around defines, undefines and
    a failed authorization (the dictionary-attack counter is a scalar)."""
    from support import tpm_helpers as th
    from vtpm.engine import Tpm

    state = TpmState.manufacture()
    sink = _CheckingSink(state)
    tpm = Tpm(state, persist=sink)
    ordinary, counter, bits, extend = 0x01000300, 0x01000301, 0x01000302, 0x01000303
    attrs = th.TPMA_NV_AUTHWRITE | th.TPMA_NV_AUTHREAD
    commands = [th.startup()]
    for handle, kind in ((ordinary, th.TPM_NT_ORDINARY), (counter, th.TPM_NT_COUNTER), (bits, th.TPM_NT_BITS),
                         (extend, th.TPM_NT_EXTEND)):
        size = {ordinary: 16, extend: 32}.get(handle, 8)
        commands.append(th.nv_define_space(handle, attrs | kind, size, auth=b"pw"))
    for round_ in range(3):
        commands += [th.nv_write(ordinary, bytes([round_]) * 16, password=b"pw"),
                     th.nv_write(ordinary, b"ab", offset=round_, password=b"pw"),
                     th.nv_increment(counter, password=b"pw"),
                     th.nv_set_bits(bits, 1 << round_, password=b"pw"),
                     th.nv_extend(extend, b"event", password=b"pw"),
                     th.nv_write(ordinary, b"x" * 16, password=b"wrong")]
    commands += [th.nv_undefine_space(counter), th.nv_write(ordinary, b"y" * 16, password=b"pw")]
    for command in commands:
        tpm.execute(0, command)
    assert sink.mismatches == []
    assert sum(hint is not None for hint in sink.hints) >= 12  # the narrowed path was taken
    assert sink.fast >= 12  # and the JSON built directly, byte for byte the general encoding
    assert None in sink.hints  # and the full one for the others
