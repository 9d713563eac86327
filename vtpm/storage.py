"""Where a served vTPM keeps its persistent state: the engine's one persistence callback lands here.

Every home implements ``StateStore``. This module has the plain one,
``PlainStateStore``: a directory with ``tpm2-state.json`` (0600), like swtpm's
--tpmstate dir. Encrypted homes (a state directory under a key file, a VM's
encrypted ``.nvram``) belong to the VM-encryption engine, which hands them to
the server as a ``StateStore`` (see the ``vtpm`` command).

Every write is atomic: a crash leaves the previous state or the new one.
Every store also has a journal beside its state (``tpm2-state.journal``; see
``vtpm.journal_store``): ``load`` replays and folds what a served vTPM left there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from durable.atomic import write_atomic
from vtpm.journal_store import JournalBinding, StateStoreError, recover
from vtpm.state import StateError, TpmState

PLAIN_STATE_FILE = "tpm2-state.json"
ENCRYPTED_STATE_FILE = "tpm2-state.vmc"  # a state directory's encrypted state: a plain store refuses it
JOURNAL_FILE = "tpm2-state.journal"

__all__ = ["JOURNAL_FILE", "PLAIN_STATE_FILE", "ENCRYPTED_STATE_FILE", "PlainStateStore", "StateStore",
           "StateStoreError", "parse_state"]


class StateStore(Protocol):
    """Where a TPM's state lives: ``load`` it at start-up, ``save`` the serialized state after a change."""

    def load(self) -> TpmState | None:
        """The stored state, or None before the first save."""
        ...

    def save(self, raw: bytes) -> None:
        """Store ``raw`` (a serialized TpmState) durably, replacing what was there."""
        ...

    def describe(self) -> str:
        """Where the state lives, for messages (never its contents)."""
        ...


def parse_state(raw: bytes, where: Path) -> TpmState:
    """Stored state as a TpmState; damage is a StateStoreError naming ``where``."""
    try:
        return TpmState.from_bytes(raw)
    except StateError as exc:
        raise StateStoreError(f"{where}: {exc}") from None


class PlainStateStore:
    """Unencrypted state in ``DIRECTORY/tpm-state`` (0600, written atomically), with its crash-safe journal.

    For tests and hosts whose disk is already protected; ``vmcrypt`` keeps a VM's
    state encrypted in its ``.nvram`` instead.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / PLAIN_STATE_FILE

    def describe(self) -> str:
        """Where the state lives, for messages (the path, never the contents)."""
        return str(self.path)

    def load_raw(self) -> tuple[bytes | None, int]:
        """The stored bytes (None before the first save) and their generation (always 0 here)."""
        if self.directory.exists() and (self.directory / ENCRYPTED_STATE_FILE).exists():
            raise StateStoreError(f"{self.directory}: holds encrypted state; pass --key-file")
        if not self.path.exists():
            return None, 0
        return self.path.read_bytes(), 0

    @property
    def generation(self) -> int:
        """Always 0: a plain file has no generation, its journal is bound to the state's digest only."""
        return 0  # a plain file has none: its journal is bound to the state's digest only

    def journal_binding(self) -> JournalBinding:
        """Where the journal lives and what binds it to this store."""
        return JournalBinding(self.directory / JOURNAL_FILE, None, b"vtpm plain state directory")

    def load(self) -> TpmState | None:
        """The stored state with its journal replayed, or None before the first save."""
        raw = recover(self)
        return None if raw is None else parse_state(raw, self.path)

    def save(self, raw: bytes) -> None:
        """Replace the stored state atomically (the directory is created 0700 if missing)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.path, raw, mode=0o600)
