"""The one interface every key provider offers: native, KMIP and trusted alike.

A provider holds key-encryption keys (KEKs) by id. Callers ask it for a new
KEK per VM, fetch a KEK by id to unwrap a DEK, and destroy keys no longer used.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass


class KeyState(str, enum.Enum):
    """Whether a KEK can still be fetched; a destroyed key is listed but its material is gone."""

    ACTIVE = "active"
    DESTROYED = "destroyed"


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: never its material."""

    key_id: str
    created: str
    state: KeyState


class KeyProvider(abc.ABC):
    """A source of KEKs, addressed by a stable provider id."""

    kind: str = "abstract"

    def __init__(self, provider_id: str, name: str) -> None:
        self.provider_id = provider_id
        self.name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} id={self.provider_id}>"

    @abc.abstractmethod
    def create_key(self) -> str:
        """Create a new 256-bit KEK and return its id."""

    @abc.abstractmethod
    def get_key(self, key_id: str) -> bytes:
        """Return the KEK with this id, or raise KeyNotFoundError."""

    def get_key_again(self, key_id: str) -> bytes:
        """Fetch the KEK again the slow, sure way, after the one from get_key failed to unwrap."""
        return self.get_key(key_id)

    @abc.abstractmethod
    def destroy_key(self, key_id: str) -> None:
        """Destroy the KEK; data wrapped only by it becomes unreadable."""

    @abc.abstractmethod
    def list_keys(self) -> list[KeyInfo]:
        """Every key this provider knows, active or destroyed."""

    # A VM file's high-water mark: the latest generation written of a file (its role, e.g. "nvram")
    # kept under the VM's key, outside the VM's directory, so that an older copy put back in place
    # (a rollback) is noticed. Providers that cannot keep one accept the calls and remember nothing.
    keeps_generations = False

    def record_generation(self, key_id: str, file_role: str, generation: int, *, allow_lower: bool = False) -> None:
        """Remember ``generation`` as the latest of ``file_role`` under ``key_id``; never lowers it unless
        ``allow_lower`` (a rollback an administrator accepted). Default: remembers nothing."""

    def generation(self, key_id: str, file_role: str) -> int | None:
        """The latest generation recorded for ``file_role`` under ``key_id``, or None. Default: None."""
        return None
