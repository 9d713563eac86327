"""Commitments for the split signing and two-phase key exchange schemes (Part 1 C.2, Part 3 19):
the commit nonce, the commit counter and the array of counter values still usable.

Commit and EC_Ephemeral make a commitment: a secret r derived from the commit nonce and the
counter value (and, for Commit, the key's Name), a point made from it returned, and the counter
value's bit set. Sign (ECDAA) and ZGen_2Phase later name the counter value, derive the same r,
and clear the bit when they succeed, so each commitment is used once. A TPM Reset forgets every
commitment: a new nonce, the counter back to zero, no bit set. This follows the reference
implementation's CryptGenerateR, CryptCommit and CryptEndCommit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtpm import ecmath
from vtpm.constants import ALG, RC
from vtpm.crypto import kdfa
from vtpm.ecmath import Curve
from vtpm.errors import TpmError
from vtpm.keyops import commit_count, sign_digest
from vtpm.objects import LoadedObject

if TYPE_CHECKING:
    from vtpm.engine import Tpm

COMMIT_SLOTS = 128  # bits in the commit array (TPM_PT_SPLIT_MAX)
INDEX_MASK = COMMIT_SLOTS - 1
COMMIT_LABEL = b"ECDAA Commit"
COMMIT_HASH = ALG.SHA256
NONCE_SIZE = 32


def reset(tpm: Tpm) -> None:
    """TPM Reset: a new commit nonce; no counter value is committed."""
    state = tpm.state
    state.commit_nonce = tpm.random(NONCE_SIZE)
    state.commit_counter = 0
    state.commit_array = 0
    tpm.mark_dirty()


def _counter_for(tpm: Tpm, count: int) -> int | None:
    """The full commit counter value a 16-bit ``count`` refers to, or None if it is not committed."""
    state = tpm.state
    if not state.commit_array >> (count & INDEX_MASK) & 1:
        return None
    current = state.commit_counter
    if (count & INDEX_MASK) >= (current & INDEX_MASK):  # the counter has wrapped the array since
        current -= INDEX_MASK + 1
    if ((current & 0xFFFF) & ~INDEX_MASK) != (count & ~INDEX_MASK):
        return None
    return (current & ~0xFFFF) | count


def generate_r(tpm: Tpm, curve: Curve, count: int | None = None, name: bytes = b"") -> int | None:
    """The commitment's secret r for the counter value ``count`` (None: the next value, not yet
    committed), bound to ``name``; None when ``count`` is no live commitment."""
    state = tpm.state
    if not state.commit_nonce:
        reset(tpm)
    if count is None:
        counter = state.commit_counter
    else:
        found = _counter_for(tpm, count)
        if found is None:
            return None
        counter = found
    context = (counter % (1 << 64)).to_bytes(8, "big")
    bits = curve.order_bytes * 8
    for attempt in range(1, 1000):
        # an extra round counter keeps the derivation going when a value falls outside [1, n)
        value = int.from_bytes(kdfa(COMMIT_HASH, state.commit_nonce, COMMIT_LABEL, name,
                                    context + attempt.to_bytes(4, "big"), bits), "big")
        if 0 < value < curve.n and value >> (bits // 2):
            return value
    return None


def commit(tpm: Tpm) -> int:
    """Commit the current counter value: set its bit, advance the counter; the 16-bit value."""
    state = tpm.state
    count = state.commit_counter & 0xFFFF
    state.commit_counter += 1
    state.commit_array |= 1 << (count & INDEX_MASK)
    tpm.mark_dirty()
    return count


def end_commit(tpm: Tpm, count: int) -> None:
    """The commitment ``count`` was used: it cannot be used again."""
    tpm.state.commit_array &= ~(1 << (count & INDEX_MASK))
    tpm.mark_dirty()


def create_signature(tpm: Tpm, key: LoadedObject, scheme: int, alg: int, requested: Any,
                     data_digest: bytes) -> dict[str, Any]:
    """Sign ``data_digest``; an ECDAA signature uses (and then ends) the commitment the scheme names."""
    if scheme != ALG.ECDAA:
        return sign_digest(key, scheme, alg, data_digest)
    count = commit_count(requested)
    r = generate_r(tpm, ecmath.curve(key.public.area.parameters.curveID), count, key.name)
    if r is None:
        raise TpmError(RC.VALUE)  # no live commitment for this counter value
    signature = sign_digest(key, scheme, alg, data_digest, commit_r=r)
    end_commit(tpm, count)
    return signature
