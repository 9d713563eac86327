"""Sequence objects: transient objects holding running hashes (or an HMAC) until the sequence completes.

HashSequenceStart and HMAC_Start create them and the sequence commands use them
(vtpm.commands.sequences); they share the transient slots with loaded objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vtpm.constants import ALG


@dataclass
class HashSequence:
    """A transient object holding running hashes (one per algorithm for an event sequence)."""

    hash_alg: int  # ALG.NULL for an event sequence
    auth_value: bytes
    hashers: dict[int, Any] = field(default_factory=dict)
    first_bytes: bytes = b""
    is_hmac: bool = False  # an HMAC sequence (HMAC_Start): its hasher is an HMAC

    @property
    def is_event(self) -> bool:
        """Whether this is an event sequence (hash algorithm TPM_ALG_NULL: every hash algorithm at once)."""
        return self.hash_alg == ALG.NULL

    def update(self, data: bytes) -> None:
        """Add data to every running hash; the first four bytes are kept for the hashcheck ticket decision (is it
        TPM_GENERATED_VALUE)."""
        if len(self.first_bytes) < 4:
            self.first_bytes += data[: 4 - len(self.first_bytes)]
        for hasher in self.hashers.values():
            hasher.update(data)
