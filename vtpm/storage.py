"""Where a served vTPM keeps its persistent state: the engine's one persistence callback lands here.

Every home implements ``StateStore``. This module has the plain one,
``PlainStateStore``: a directory with ``tpm2-state.json`` (0600), like swtpm's
--tpmstate dir. Encrypted homes (a state directory under a key file, a VM's
encrypted ``.nvram``) belong to the VM-encryption engine, which hands them to
the server as a ``StateStore`` (see the ``vtpm`` command).

Every write is atomic: a crash leaves the previous state or the new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from durable.atomic import write_atomic
from vtpm.state import StateError, TpmState

PLAIN_STATE_FILE = "tpm2-state.json"
ENCRYPTED_STATE_FILE = "tpm2-state.vmc"  # a state directory's encrypted state: a plain store refuses it


class StateStoreError(Exception):
    """The stored state cannot be read or written; the message names the file."""


class StateStore(Protocol):
    def load(self) -> TpmState | None: ...
    def save(self, raw: bytes) -> None: ...
    def describe(self) -> str: ...


def parse_state(raw: bytes, where: Path) -> TpmState:
    """Stored state as a TpmState; damage is a StateStoreError naming ``where``."""
    try:
        return TpmState.from_bytes(raw)
    except StateError as exc:
        raise StateStoreError(f"{where}: {exc}") from None


class PlainStateStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / PLAIN_STATE_FILE

    def describe(self) -> str:
        return str(self.path)

    def load(self) -> TpmState | None:
        if self.directory.exists() and (self.directory / ENCRYPTED_STATE_FILE).exists():
            raise StateStoreError(f"{self.directory}: holds encrypted state; pass --key-file")
        if not self.path.exists():
            return None
        return parse_state(self.path.read_bytes(), self.path)

    def save(self, raw: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.path, raw, mode=0o600)
