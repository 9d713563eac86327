"""The one interface every key provider offers: native, KMIP and trusted alike.

A provider holds key-encryption keys (KEKs) by id. Callers ask it for a new
KEK per VM, fetch a KEK by id to unwrap a DEK, and destroy keys no longer used.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass


class KeyState(str, enum.Enum):
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
