"""Where a served vTPM keeps its persistent state: the engine's one persistence callback lands here.

Three homes, one interface:

- ``PlainStateStore``: a directory with ``tpm2-state.json`` (0600), like swtpm's --tpmstate dir;
- ``EncryptedStateStore``: the same directory, the state in a vmcrypt container
  (AES-XTS-256 + HMAC) under a 32-byte key from a key file;
- ``VmNvramStore``: the vTPM section of a VM's ``.nvram``, encrypted with the
  VM's DEK when the VM is encrypted.

Every write is atomic: a crash leaves the previous state or the new one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

from durable.atomic import write_atomic
from vmcrypt import container
from vmcrypt.errors import VmcryptError
from vmcrypt.keyref import DataKey, KeyReference, WrapAlgorithm
from vtpm.state import StateError, TpmState

PLAIN_STATE_FILE = "tpm2-state.json"
ENCRYPTED_STATE_FILE = "tpm2-state.vmc"
STATE_LABEL = "vtpm-state"


class StateStoreError(Exception):
    """The stored state cannot be read or written; the message names the file."""


class StateStore(Protocol):
    def load(self) -> TpmState | None: ...
    def save(self, raw: bytes) -> None: ...
    def describe(self) -> str: ...


def _parse(raw: bytes, where: Path) -> TpmState:
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
        return _parse(self.path.read_bytes(), self.path)

    def save(self, raw: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.path, raw, mode=0o600)


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """A 32-byte key: raw bytes, or 64 hex digits (a trailing newline is allowed)."""
    raw = Path(path).read_bytes()
    text = raw.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(raw) == 32:
        return raw
    raise StateStoreError(f"{path}: a key file must hold 32 bytes or 64 hex digits")


class EncryptedStateStore:
    def __init__(self, directory: str | os.PathLike[str], key: bytes) -> None:
        self.directory = Path(directory)
        self.path = self.directory / ENCRYPTED_STATE_FILE
        # The key id is a fingerprint that tells keys apart without revealing them.
        fingerprint = hashlib.sha256(b"vtpm key-file id" + key).hexdigest()[:16]
        self.key = DataKey(key, KeyReference("key-file", fingerprint, WrapAlgorithm.NONE))

    def describe(self) -> str:
        return str(self.path)

    def load(self) -> TpmState | None:
        if not self.path.exists():
            if (self.directory / PLAIN_STATE_FILE).exists():
                raise StateStoreError(f"{self.directory}: holds unencrypted state; drop --key-file")
            return None
        try:
            raw = container.read_file(self.path, self.key)
        except VmcryptError as exc:
            raise StateStoreError(str(exc)) from None
        return _parse(raw, self.path)

    def save(self, raw: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        container.write_file(self.path, raw, self.key, label=STATE_LABEL, mode=0o600)
