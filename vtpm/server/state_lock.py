"""One served vTPM per state: an flock on ``DIR/.lock`` and a store that writes only while holding it.

Two servers on one state directory would overwrite each other's NV writes, so
a server takes the lock before it serves and a second one is refused. Live
migration moves the lock like swtpm does: the source gives it up after QEMU
has read the last state blob (and from then on writes nothing: the state now
belongs to the destination), the destination takes it when the state arrives
or when QEMU sends CMD_LOCK_STORAGE; a source whose migration failed takes it
back on CMD_LOCK_STORAGE or on its next TPM command.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Collection
from pathlib import Path

from vtpm.journal_store import JournaledStore
from vtpm.state import TpmState
from vtpm.storage import StateStore, StateStoreError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
RETRY_INTERVAL = 0.01  # seconds between attempts, as swtpm (CMD_LOCK_STORAGE retries count in 10 ms steps)
DEFAULT_RETRIES = 300  # after giving the lock away: 3 s for the other side to let go, as swtpm


class StateInUseError(StateStoreError):
    """Another server holds the state's lock."""


class StateLock:
    """An exclusive, non-blocking flock on ``directory/.lock`` (0600), held until released or the process ends."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """This object holds the lock now."""
        return self._fd is not None

    def acquire(self, retries: int = 0) -> bool:
        """Take the lock, trying ``retries`` more times 10 ms apart; False if another holder keeps it."""
        if self._fd is not None:
            return True
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        for attempt in range(retries + 1):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if attempt < retries:
                    time.sleep(RETRY_INTERVAL)
                continue
            self._fd = fd
            return True
        os.close(fd)
        return False

    def acquire_or_raise(self) -> None:
        """Take the lock at once or raise StateInUseError naming the state directory and the lock file."""
        if not self.acquire():
            raise StateInUseError(f"{self.directory}: the vTPM state is in use by another server "
                                  f"(it holds {self.path})")

    def release(self) -> None:
        """Let go of the lock (another server may take it); does nothing when it is not held."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_for(store: StateStore) -> StateLock | None:
    """The lock of a store kept in a state directory; None for stores that lock by themselves (a VM's .nvram)."""
    directory = getattr(store, "directory", None)
    return StateLock(directory) if directory is not None else None


class GuardedStore:
    """The engine's persistence callback: saves go to ``store`` only while the state's lock is held.

    ``retries`` is how long the next automatic re-lock may wait (swtpm's locking
    retries): 0 normally, 300 after the lock was given to a migration target.
    ``max_retries`` caps every wait (the event loop of `vtpm host` must never
    sleep: it serves other vTPMs meanwhile, so it passes 0).
    """

    def __init__(self, store: StateStore, lock: StateLock | None, journal: JournaledStore | None = None, *,
                 max_retries: int | None = None) -> None:
        self.store = store
        self.lock = lock
        self.journal = journal  # the store's journal: the engine's changes go there as records
        self.max_retries = max_retries
        self.retries = 0
        self.skipped = 0  # saves dropped while the lock was elsewhere

    @property
    def held(self) -> bool:
        """Saves go through now: the lock is held, or the store locks by itself."""
        return self.lock is None or self.lock.held

    def ensure_locked(self, retries: int | None = None) -> bool:
        """Hold the lock, taking it back if it was given away (waiting up to ``retries`` × 10 ms, default the
        wait set by ``release``, capped by ``max_retries``); False, logged, if another server keeps it."""
        if self.lock is None or self.lock.held:
            return True
        wait = self.retries if retries is None else retries
        if self.lock.acquire(wait if self.max_retries is None else min(wait, self.max_retries)):
            self.retries = 0
            return True
        log.error("could not lock %s: another server holds it", self.lock.path)
        return False

    def release(self, retries: int = DEFAULT_RETRIES) -> None:
        """Give the lock away (outgoing migration); later saves are dropped until it is taken back."""
        if self.lock is not None:
            if self.journal is not None:
                self.journal.release()  # the target writes the state next; this journal is done
            self.lock.release()
            self.retries = retries

    def _dropped(self) -> bool:
        if self.held:
            return False
        self.skipped += 1
        log.info("state not saved: the storage lock was handed to a migration target")
        return True

    def save(self, raw: bytes) -> None:
        """Write a full state (through the journal, if any) while the lock is held; dropped otherwise."""
        if not self._dropped():
            (self.journal or self.store).save(raw)

    def persist_state(self, state: TpmState, nv: Collection[int] | None = None) -> None:
        """The engine's sink: journaled (one record, one fdatasync) or written whole, only while locked."""
        if self._dropped():
            return
        if self.journal is not None:
            self.journal.persist_state(state, nv)
        else:
            self.store.save(state.to_bytes())

    def close(self) -> None:
        """Fold and remove the journal while the lock is held; otherwise let go of it untouched."""
        if self.journal is None:
            return
        if self.held:
            self.journal.close()
        else:
            self.journal.abandon()

    def describe(self) -> str:
        """The guarded store's description, for messages."""
        return self.store.describe()
