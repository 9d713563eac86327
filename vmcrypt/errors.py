"""Every error vmcrypt raises on purpose: one base class, each naming its file.

Messages never contain key material; they say which file or key failed and why.
"""

from __future__ import annotations

import os


class VmcryptError(Exception):
    """Base class: an operation was refused or failed, with a reason a person can act on."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ContainerError(VmcryptError):
    """An encrypted file cannot be opened."""


class NotEncryptedError(ContainerError):
    """The file is not an encrypted container (no magic)."""


class UnsupportedFormatError(ContainerError):
    """The container uses a format version or algorithm this build does not know."""


class TruncatedError(ContainerError):
    """The container is shorter than its header says."""


class CorruptError(ContainerError):
    """The container's structure is damaged (header or size mismatch)."""


class WrongKeyError(ContainerError):
    """The key offered does not open this file."""


class IntegrityError(ContainerError):
    """The MAC does not match: the file was modified or damaged."""


class KeyProviderError(VmcryptError):
    """A key provider could not deliver, create or destroy a key."""


class KeyNotFoundError(KeyProviderError):
    """The key provider has no such key."""


class VmError(VmcryptError):
    """A VM home directory is missing, malformed or in the wrong state for an operation."""


class InterruptedOperationError(VmError):
    """An earlier operation on this VM did not finish; it must be resumed or rolled back."""


class RollbackError(VmError):
    """A file is older than the latest generation recorded for it: an older copy was put back."""
