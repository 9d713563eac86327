"""Durable state changes at the cost of one ``fdatasync``: a store's full state plus its journal.

``JournaledStore`` wraps a store that can write a full state (``JournalBase``:
the plain directory, the key-file directory, a VM's ``.nvram``). After every
command that changed persistent state the engine hands it the state
(``persist_state``); it appends a record with just the parts that changed
(``vtpm.state.diff_parts``) to the journal (``vtpm.journal``) and syncs it
before the command's response leaves. The full state is rewritten the store's
normal way (a *fold*: new generation, recorded at the key provider) on close,
when the server has been idle a while, and when the journal passes a bound;
the journal then starts over, bound to the new base.

Opening (``recover``) loads the base, replays the journal's verified records
and folds them, so every tool that opens the store sees the whole state.

Deferred mode and group commit: a host that serves many vTPMs from one event
loop puts their stores in a ``JournalGroup``; ``persist_state`` then only seals
the record, and the loop calls ``group.commit()`` once per iteration, before it
writes the responses of that iteration: every dirty journal is written, then
all are synced, one flush round for all of them.

Rollback: when the base records positions (a VM's key provider), the synced
position (base generation, record count) is recorded in the background at most
every ``record_interval`` seconds, and opening refuses a journal that ends
before the recorded position (truncated, deleted, an older copy) unless the
rollback is accepted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from durable.atomic import fsync_directory
from durable.prealloc import PreallocatedFile
from vtpm import journal
from vtpm.journal import Base, JournalError, Sealer
from vtpm.state import StateError, TpmState, apply_delta, changes, load_parts, nv_change_json, snapshot

log = logging.getLogger(__name__)

JOURNAL_SIZE = 1 << 20  # preallocated at each start: normal use never grows the file
FOLD_BYTES = 3 << 18  # fold once the records pass 768 KiB
IDLE_FOLD_SECONDS = 5.0
RECORD_INTERVAL = 1.0
_ENCODER = json.JSONEncoder(separators=(",", ":"))
# The C encoder behind json.dumps, made once (JSONEncoder.encode builds one per call): no indent, no
# key sorting, no circular check (a delta is a fresh tree of dicts, lists, strings and ints).
_C_ENCODE = None if json.encoder.c_make_encoder is None else json.encoder.c_make_encoder(
    None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)


def encode_delta(delta: dict[str, Any]) -> bytes:
    """A record's payload: the delta as compact JSON (what ``_ENCODER`` writes)."""
    if _C_ENCODE is None:
        return _ENCODER.encode(delta).encode()
    return "".join(_C_ENCODE(delta, 0)).encode()


class StateStoreError(Exception):
    """The stored state cannot be read or written; the message names the file."""


class JournalRollbackError(StateStoreError):
    """The journal ends before the position recorded outside the store: it was truncated or replaced."""


class PositionLog(Protocol):
    """Where a store's journal position is recorded outside its directory (a VM's key provider)."""

    def recorded(self) -> int | None:
        """The last position recorded (base generation << 32 | record count), or None if none was."""
        ...

    def record(self, position: int, *, allow_lower: bool = False) -> None:
        """Record ``position``; a lower one is ignored unless ``allow_lower`` (an accepted rollback)."""
        ...


@dataclass(frozen=True)
class JournalBinding:
    """What a store gives its journal: the file, the secret its keys derive from (None: checksums
    only, for a store kept in clear), the context bound into every tag (which file of which VM), and
    where positions are recorded (None: nowhere, as the store records no generations either)."""

    path: Path
    secret: bytes | None
    context: bytes
    positions: PositionLog | None = None


class JournalBase(Protocol):
    """A store that a journal sits on: full reads and writes with generations."""

    def describe(self) -> str:
        """Names the store (its path) for messages."""
        ...

    def load_raw(self) -> tuple[bytes | None, int]:
        """The stored full state (None when there is none) and the store's generation."""
    def save(self, raw: bytes) -> None:
        """Write a full state, atomically, at a higher generation where the store has generations."""
    @property
    def generation(self) -> int:
        """The generation of the full state last read or written (0 where the store keeps none)."""
        ...

    def journal_binding(self) -> JournalBinding:
        """Where this store's journal lives, what keys and binds its records, where positions go."""
        ...


def _read_journal(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def recover(base: JournalBase, *, accept_rollback: bool = False, write: bool = True) -> bytes | None:
    """The store's full state with its journal's records applied (and folded: written as a new full
    state), after the rollback check; the journal is then removed. A stale journal (of an older base)
    is ignored. Called on open, when no served vTPM holds the store. ``write=False`` changes no file
    (a migration target reading the state before it holds the lock)."""
    raw, generation = base.load_raw()
    binding = base.journal_binding()
    current = Base.of(generation, raw or b"")
    reached = journal.position(generation, 0)
    payloads: list[bytes] = []
    data = _read_journal(binding.path)
    claimed = None if not data else journal.peek_base(data)
    stale = claimed is not None and claimed != current and (binding.secret is None or claimed.generation < generation)
    if data and not stale:  # stale: the state was rewritten after this journal was last used; ignored
        try:
            found = journal.replay(data, binding.secret, binding.context)
        except JournalError as exc:
            raise StateStoreError(f"{binding.path}: {exc}; nothing was loaded or changed") from None
        if found.header.base != current:
            same = found.header.base.generation == generation
            raise StateStoreError(
                f"{binding.path}: the journal applies to generation {found.header.base.generation} of the state "
                f"but the state is generation {generation}{' with other contents' if same else ''}; "
                "nothing was loaded or changed")
        payloads = found.payloads
        reached = found.position
    if binding.positions is not None:
        recorded = binding.positions.recorded()
        if recorded is not None and reached < recorded:
            if not accept_rollback or not write:
                raise JournalRollbackError(
                    f"{binding.path}: the journal ends at generation {reached >> 32} record {reached & 0xFFFFFFFF}, "
                    f"before the recorded generation {recorded >> 32} record {recorded & 0xFFFFFFFF}: it was truncated, "
                    "deleted or replaced by an older copy; if that was deliberate, accept it with --accept-rollback")
            binding.positions.record(reached, allow_lower=True)
    if not payloads or raw is None:
        if data is not None and write:
            remove_journal(binding)
        return raw
    try:
        parts = load_parts(raw)
        for payload in payloads:
            apply_delta(parts, json.loads(payload))
        state = TpmState.from_parts(parts)
    except (StateError, ValueError, RecursionError) as exc:
        raise StateStoreError(f"{binding.path}: the journal's records do not apply ({exc}); nothing was changed") from None
    folded = state.to_bytes()
    if not write:
        return folded
    base.save(folded)
    remove_journal(binding)  # stale now; removed so that copies of the directory carry no leftovers
    return folded


class _PositionRecorder:
    """Records the latest synced journal position off the acknowledged path, at most once per interval."""

    def __init__(self, positions: PositionLog, interval: float) -> None:
        self._positions = positions
        self._interval = interval
        self._latest = 0
        self._recorded = 0
        self._wake = threading.Event()
        self._stop = False
        self._lock = threading.Lock()
        self._pid = 0  # the process whose thread runs: started at the first note, again after a fork

    def note(self, position: int) -> None:
        self._latest = position
        if self._pid != os.getpid():  # `vtpm socket --daemon` forks after loading: threads do not follow
            self._pid = os.getpid()
            self._lock = threading.Lock()
            threading.Thread(target=self._run, name="journal-position", daemon=True).start()
        self._wake.set()

    def _record_latest(self) -> None:
        with self._lock:
            latest = self._latest
            if latest > self._recorded:
                self._positions.record(latest)
                self._recorded = latest

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            try:
                self._record_latest()
            except Exception:  # noqa: BLE001 - a provider outage must not stop the vTPM; retried next time
                log.warning("recording the journal position failed; will retry")
            time.sleep(self._interval)

    def flush(self) -> None:
        self._record_latest()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def close(self) -> None:
        """Record what is synced now, then stop."""
        self.stop()
        self._record_latest()


class JournaledStore:
    """A ``StateStore`` (and the engine's ``persist_state`` sink) that journals changes; see the module."""

    def __init__(self, base: JournalBase, *, fold_bytes: int = FOLD_BYTES, journal_size: int = JOURNAL_SIZE,
                 record_interval: float = RECORD_INTERVAL, accept_rollback: bool = False) -> None:
        self.base = base
        self.binding = base.journal_binding()
        self.fold_bytes = fold_bytes
        self.journal_size = max(journal_size, fold_bytes + journal.RECORDS_OFFSET)
        self.deferred = False
        self._accept_rollback = accept_rollback
        self._state: TpmState | None = None  # the engine's state (changed in place by each command)
        self._snapshot: dict[str, Any] | None = None  # its parts as last journaled
        self._file: PreallocatedFile | None = None
        self._sealer: Sealer | None = None
        self._generation = 0
        self._seq = 0  # records sealed
        self._synced = 0  # records durable
        self._synced_end = 0  # the journal's length at the last sync
        self._prev_tag = b""
        self._pending: list[bytes] = []
        self._broken = False
        self._last_change = time.monotonic()
        self._recorder = (None if self.binding.positions is None
                          else _PositionRecorder(self.binding.positions, record_interval))
        self.folds = 0
        self.syncs = 0
        # called with this store when a deferred record starts waiting (its group's list of dirty stores)
        self.on_pending: Callable[[JournaledStore], None] | None = None

    # ------------------------------------------------------------------ StateStore

    def describe(self) -> str:
        """The base's description and the journal's file name, for messages."""
        return f"{self.base.describe()} (journal {self.binding.path.name})"

    def load(self) -> TpmState | None:
        """The stored state with the journal replayed and folded (None: no state yet), then tracked and a
        fresh journal started. StateStoreError if the state or the journal is unreadable or does not
        apply (nothing changed); JournalRollbackError if the journal ends before the recorded position."""
        raw = recover(self.base, accept_rollback=self._accept_rollback)
        if raw is None:
            return None
        try:
            state = TpmState.from_bytes(raw)
        except StateError as exc:
            raise StateStoreError(f"{self.base.describe()}: {exc}") from None
        self._track(state)
        self._restart(raw)
        return state

    def peek(self) -> TpmState | None:
        """The state with the journal applied, changing no file and tracking nothing (read before
        holding the state's lock); the first ``persist_state`` after it writes the state whole."""
        raw = recover(self.base, write=False)
        try:
            return None if raw is None else TpmState.from_bytes(raw)
        except StateError as exc:
            raise StateStoreError(f"{self.base.describe()}: {exc}") from None

    def release(self) -> None:
        """The state's lock goes to another server (live migration): stop using this journal, write
        nothing; a ``persist_state`` after the lock is taken back writes the state whole."""
        self._forget()

    def save(self, raw: bytes) -> None:
        """A full state (a new TPM, or a caller with bytes): written to the base; the journal starts over."""
        self._track(TpmState.from_bytes(raw))
        self._fold_raw(raw)

    def _track(self, state: TpmState) -> None:
        self._state = state
        self._snapshot = snapshot(state)

    # ------------------------------------------------------------------ the engine's seam

    def persist_state(self, state: TpmState, nv: Collection[int] | None = None) -> None:
        """Journal what changed in ``state`` since the last call; durable on return unless deferred.
        ``nv``: only these NV indices can have changed of the keyed collections (the engine knows)."""
        if self._snapshot is None or self._broken or state is not self._state:
            self._track(state)
            self._fold_raw(state.to_bytes())
            return
        fast = None if nv is None else nv_change_json(self._snapshot, state, nv)
        if fast is not None:  # NV_Write & co.: the record's JSON built directly, no delta tree
            payload, after = fast
            if not payload:
                return
        else:
            delta, after = changes(self._snapshot, state, nv)
            if not delta:
                return
            payload = encode_delta(delta)
        assert self._sealer is not None
        record = self._sealer.seal(self._generation, self._seq + 1, self._prev_tag, payload)
        self._pending.append(record)
        self._seq += 1
        self._prev_tag = record[-journal.TAG_SIZE:]
        self._snapshot = after
        self._last_change = time.monotonic()
        if not self.deferred:
            self.commit()
        elif len(self._pending) == 1 and self.on_pending is not None:
            self.on_pending(self)

    @property
    def pending(self) -> bool:
        """Sealed records are waiting to be written (a deferred store before its group's commit)."""
        return bool(self._pending)

    def write_pending(self) -> int:
        """Write the sealed records (not yet durable); the number written."""
        if not self._pending:
            return 0
        assert self._file is not None
        count = len(self._pending)
        try:
            self._file.append(b"".join(self._pending))
        except BaseException:
            self._broken = True  # the next change writes a full state instead
            raise
        self._pending.clear()
        return count

    def sync(self) -> None:
        """Make the written records durable (the acknowledgement point)."""
        assert self._file is not None
        try:
            self._file.sync()
        except BaseException:
            self._broken = True
            raise
        self.syncs += 1
        self._synced = self._seq
        self._synced_end = self._file.end
        if self._recorder is not None:
            self._recorder.note(journal.position(self._generation, self._synced))

    def commit(self) -> None:
        """Write and sync pending records; fold when the journal has passed its bound."""
        if self.write_pending():
            self.sync()
        if self._file is not None and self._file.end > self.fold_bytes:
            self.fold()

    # ------------------------------------------------------------------ fold

    def fold(self) -> None:
        """Write the full state the store's normal way and start a new journal bound to it."""
        if self._state is None:
            return
        self._snapshot = snapshot(self._state)
        self._fold_raw(self._state.to_bytes())

    def fold_if_idle(self, idle_seconds: float = IDLE_FOLD_SECONDS) -> bool:
        """Fold when records exist and nothing changed for ``idle_seconds`` (the server's idle hook)."""
        if self._seq == 0 or self._pending or time.monotonic() - self._last_change < idle_seconds:
            return False
        self.fold()
        return True

    def _fold_raw(self, raw: bytes) -> None:
        self._pending.clear()
        self.base.save(raw)
        self.folds += 1
        self._restart(raw)

    def _restart(self, raw: bytes) -> None:
        """A fresh journal (new id and salt) bound to the base just read or written."""
        base = Base.of(self.base.generation, raw)
        block, header, sealer = journal.new_header(base, self.binding.secret, self.binding.context)
        if self._file is not None:
            self._file.close()
        self._file = PreallocatedFile.create(self.binding.path, block, size=self.journal_size)
        self._sealer = sealer
        self._generation = base.generation
        self._seq = self._synced = 0
        self._synced_end = self._file.end
        self._prev_tag = header.tag[:journal.TAG_SIZE]
        self._broken = False

    @property
    def loaded(self) -> bool:
        """A state is tracked (``load`` or ``save`` ran and nothing unloaded or dropped it since)."""
        return self._state is not None

    def unload(self) -> None:
        """Fold what the journal holds, remove the journal and forget the state (a host evicting an
        idle vTPM); ``load`` starts again from the store."""
        if self._state is not None and (self._seq or self._pending or self._broken):
            self._pending.clear()
            self.base.save(self._state.to_bytes())
            self.folds += 1
        self._forget()
        remove_journal(self.binding)

    def drop_unacknowledged(self) -> None:
        """A commit failed: erase every record after the last sync from the journal (zeros, synced),
        and forget the in-memory state, which holds changes whose clients were told they failed. The
        next ``load`` starts from the store: base plus acknowledged records. Raises when the erase
        fails; the caller must then keep the vTPM out of service (the records may be on disk)."""
        self._pending.clear()
        file = self._file
        self._state = self._snapshot = None
        if file is not None:
            self._file = None
            try:
                file.erase_from(self._synced_end)
            finally:
                file.close()

    def _forget(self) -> None:
        self._pending.clear()
        self._state = self._snapshot = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def record_position(self) -> None:
        """Record the synced position now (the background recorder does it within ``record_interval``)."""
        if self._recorder is not None:
            self._recorder.flush()

    def abandon(self) -> None:
        """Let go of the journal and the base (its lock) without folding: what a crash leaves behind."""
        self._let_go(record=False)

    def _let_go(self, *, record: bool) -> None:
        """Stop the position recorder (recording what is synced first if ``record``), close the journal
        file and release the base."""
        if self._recorder is not None:
            if record:
                self._recorder.close()
            else:
                self._recorder.stop()
        if self._file is not None:
            self._file.close()
            self._file = None
        close = getattr(self.base, "close", None)
        if close is not None:
            close()

    def close(self) -> None:
        """Fold what the journal holds (so the base is the whole state), remove the journal, record,
        release the base."""
        try:
            if self._state is not None and (self._seq or self._pending or self._broken):
                self._pending.clear()
                self.base.save(self._state.to_bytes())
                self.folds += 1
            if self._file is not None:
                self._file.close()
                self._file = None
                remove_journal(self.binding)
        finally:
            self._let_go(record=True)

    def __enter__(self) -> "JournaledStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GroupCommitError(StateStoreError):
    """Some journals of a group could not be written or synced; ``failed`` maps each to its error.
    The others were committed."""

    def __init__(self, failed: dict["JournaledStore", BaseException]) -> None:
        super().__init__(f"{len(failed)} journal(s) could not be made durable: "
                         + "; ".join(f"{store.binding.path.name}: {type(exc).__name__}" for store, exc in failed.items()))
        self.failed = failed


class JournalGroup:
    """Group commit for the vTPMs of one host process: one flush round for every journal dirtied in
    one round of the event loop. ``commit`` before sending the round's responses."""

    def __init__(self, *, parallel: bool = True, max_threads: int = 16) -> None:
        self._stores: list[JournaledStore] = []
        # the stores whose records wait, in the order they started to: a commit visits these, not every
        # store of a host serving a thousand vTPMs
        self._dirty: dict[JournaledStore, None] = {}
        self._parallel = parallel
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="journal-sync") if parallel else None
        self.rounds = 0
        self.records = 0

    def add(self, store: JournaledStore) -> JournaledStore:
        """Put ``store`` in deferred mode: its records wait for ``commit``; returned for chaining."""
        store.deferred = True
        store.on_pending = self._note_pending
        self._stores.append(store)
        if store.pending:
            self._note_pending(store)
        return store

    def _note_pending(self, store: JournaledStore) -> None:
        self._dirty[store] = None

    def pending_stores(self) -> list[JournaledStore]:
        """The stores with records waiting for ``commit``."""
        return [store for store in self._dirty if store.pending]

    def remove(self, store: JournaledStore) -> None:
        """Take ``store`` out of the group and commit what it has pending (ValueError if not in the group;
        the store's write and sync errors propagate)."""
        self._stores.remove(store)
        self._take_out(store)
        store.commit()

    def discard(self, store: JournaledStore) -> None:
        """Take ``store`` out of the group without committing (its ``close`` folds what it holds)."""
        if store in self._stores:
            self._stores.remove(store)
        self._take_out(store)

    def _take_out(self, store: JournaledStore) -> None:
        """Out of the group: nothing of it waits for a commit, its records are committed as they come."""
        self._dirty.pop(store, None)
        store.deferred = False
        store.on_pending = None

    def commit(self) -> int:
        """Write every pending record, then sync every journal written (in threads when several);
        the number of records made durable. Raises ``GroupCommitError`` naming the journals that
        failed, after the others were committed."""
        dirty = self.pending_stores()
        self._dirty.clear()
        if not dirty:
            return 0
        failed: dict[JournaledStore, BaseException] = {}
        written = 0
        for store in dirty:
            try:
                written += store.write_pending()
            except Exception as exc:  # noqa: BLE001 - collected, raised below
                failed[store] = exc
        synced = [store for store in dirty if store not in failed]
        if self._pool is not None and len(synced) > 1:
            for store, future in [(store, self._pool.submit(store.sync)) for store in synced]:
                error = future.exception()
                if error is not None:
                    failed[store] = error
        else:
            for store in synced:
                try:
                    store.sync()
                except Exception as exc:  # noqa: BLE001 - collected, raised below
                    failed[store] = exc
        for store in synced:
            if store not in failed and store._file is not None and store._file.end > store.fold_bytes:
                try:
                    store.fold()
                except Exception:  # noqa: BLE001 - the records are durable; the fold is retried later
                    log.warning("folding %s failed; the journal keeps growing", store.binding.path.name)
        self.rounds += 1
        self.records += written
        for store in failed:
            if store.pending:  # records that could not be written wait for the next commit
                self._note_pending(store)
        if failed:
            raise GroupCommitError(failed)
        return written

    def fold_idle(self, idle_seconds: float = IDLE_FOLD_SECONDS, *, limit: int = 1) -> int:
        """Fold up to ``limit`` stores idle for ``idle_seconds`` (a periodic task: a few at a time, so
        a host's loop is held for one fold, not all of them); the number folded."""
        folded = 0
        for store in self._stores:
            if folded >= limit:
                break
            if store.loaded and store.fold_if_idle(idle_seconds):
                folded += 1
        return folded

    def close(self) -> None:
        """Close every store of the group (each folds what it holds) and stop the sync threads."""
        for store in list(self._stores):
            store.close()
        self._stores.clear()
        if self._pool is not None:
            self._pool.shutdown()


def remove_journal(binding: JournalBinding) -> None:
    """Delete a store's journal (its state was written elsewhere whole); durable on return."""
    try:
        os.unlink(binding.path)
    except FileNotFoundError:
        return
    fsync_directory(binding.path.parent)

