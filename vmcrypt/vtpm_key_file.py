"""A vTPM state directory encrypted under a key file (`vtpm serve --state DIR --key-file F`).

The state is a vmcrypt container (AES-XTS-256 + HMAC) named ``tpm2-state.vmc``
in the state directory, under a 32-byte key read from a file. It is handed to
the vTPM server as a ``vtpm.storage.StateStore``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vmcrypt import container
from vmcrypt.errors import VmcryptError
from vmcrypt.keyref import DataKey, KeyReference, WrapAlgorithm
from vtpm.journal_store import JournalBinding, recover
from vtpm.state import TpmState
from vtpm.storage import ENCRYPTED_STATE_FILE, JOURNAL_FILE, PLAIN_STATE_FILE, StateStoreError, parse_state

STATE_LABEL = "vtpm-state"


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
    """A vTPM state directory whose state file is a vmcrypt container under a key from ``--key-file`` (the key is
    identified by a fingerprint, never stored)."""
    def __init__(self, directory: str | os.PathLike[str], key: bytes) -> None:
        self.directory = Path(directory)
        self.path = self.directory / ENCRYPTED_STATE_FILE
        # The key id is a fingerprint that tells keys apart without revealing them.
        fingerprint = hashlib.sha256(b"vtpm key-file id" + key).hexdigest()[:16]
        self.key = DataKey(key, KeyReference("key-file", fingerprint, WrapAlgorithm.NONE))
        self._generation = 0

    def describe(self) -> str:
        """The state file's path, for messages."""
        return str(self.path)

    @property
    def generation(self) -> int:
        """The container generation last read or written: saves go above it, the journal binds it."""
        return self._generation

    def journal_binding(self) -> JournalBinding:
        """The journal's keys derive from the state's key (HKDF with the journal's own label and salt)."""
        return JournalBinding(self.directory / JOURNAL_FILE, self.key.dek, f"{STATE_LABEL}:key-file".encode())

    def load_raw(self) -> tuple[bytes | None, int]:
        """The decrypted state bytes (None when there is no state yet) and the container's generation; StateStoreError
        for a directory with plain state or a container that does not open under the key."""
        if not self.path.exists():
            if (self.directory / PLAIN_STATE_FILE).exists():
                raise StateStoreError(f"{self.directory}: holds unencrypted state; drop --key-file")
            return None, 0
        try:
            raw = container.read_file(self.path, self.key)
            self._generation = container.read_header(self.path).generation
        except VmcryptError as exc:
            raise StateStoreError(str(exc)) from None
        return raw, self._generation

    def load(self) -> TpmState | None:
        """The state with its journal recovered, or None when there is none."""
        raw = recover(self)
        return None if raw is None else parse_state(raw, self.path)

    def save(self, raw: bytes) -> None:
        """Write ``raw`` as a new container generation (mode 0600, directory 0700)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        header = container.write_file(self.path, raw, self.key, label=STATE_LABEL, mode=0o600,
                                      min_generation=self._generation + 1)
        self._generation = header.generation
