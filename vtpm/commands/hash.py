"""Hash and hash/event sequences (Part 3, sections 15 and 17), with hash-check tickets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vtpm.constants import ALG, CC, HT, RC, RH, ST, TPM_GENERATED_VALUE, TRANSIENT_FIRST
from vtpm.core import Auth, Command, Entity, Response, command, entity_resolver, handle_spec
from vtpm.crypto import HASHES, hmac_digest, new_hash
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U32, OneOf
from vtpm.marshal.structures import (
    TPM2B_AUTH,
    TPM2B_DIGEST,
    TPM2B_MAX_BUFFER,
    TPMI_ALG_HASH,
    TPMI_ALG_HASH_NULL,
    TPML_DIGEST_VALUES,
    TPMT_TK_HASHCHECK,
)

if TYPE_CHECKING:
    from vtpm.engine import Tpm

MAX_LOADED_OBJECTS = 3
TPMI_RH_HIERARCHY_NULL = OneOf(U32, [RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.NULL], RC.VALUE)


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
        return self.hash_alg == ALG.NULL

    def update(self, data: bytes) -> None:
        if len(self.first_bytes) < 4:
            self.first_bytes += data[: 4 - len(self.first_bytes)]
        for hasher in self.hashers.values():
            hasher.update(data)


def proof_for(tpm: Tpm, hierarchy: int) -> bytes:
    return {
        RH.OWNER: tpm.state.sh_proof,
        RH.ENDORSEMENT: tpm.state.eh_proof,
        RH.PLATFORM: tpm.state.ph_proof,
    }[hierarchy]


def hash_check_ticket(tpm: Tpm, hierarchy: int, alg: int, out_hash: bytes, first_bytes: bytes) -> bytes:
    """TPMT_TK_HASHCHECK: HMAC over the digest with the hierarchy's proof, or a NULL ticket."""
    if hierarchy == RH.NULL or first_bytes[:4] == TPM_GENERATED_VALUE.to_bytes(4, "big"):
        return TPMT_TK_HASHCHECK.build({"tag": ST.HASHCHECK, "hierarchy": RH.NULL, "digest": b""})
    ticket = hmac_digest(alg, proof_for(tpm, hierarchy), ST.HASHCHECK.to_bytes(2, "big"), out_hash)
    return TPMT_TK_HASHCHECK.build({"tag": ST.HASHCHECK, "hierarchy": hierarchy, "digest": ticket})


def _check_hierarchy(tpm: Tpm, hierarchy: int, param: int) -> None:
    from vtpm.commands.hierarchy import hierarchy_enabled

    if hierarchy != RH.NULL and not hierarchy_enabled(tpm, hierarchy):
        raise TpmError(RC.HIERARCHY, param=param)


@command(
    CC.Hash,
    params=[("data", TPM2B_MAX_BUFFER), ("hashAlg", TPMI_ALG_HASH), ("hierarchy", TPMI_RH_HIERARCHY_NULL)],
    response_tpm2b=True,
)
def hash_command(tpm: Tpm, cmd: Command) -> Response:
    p = cmd.params
    _check_hierarchy(tpm, p.hierarchy, 3)
    hasher = new_hash(p.hashAlg)
    hasher.update(p.data)
    out = hasher.digest()
    return Response(params=TPM2B_DIGEST.build(out) + hash_check_ticket(tpm, p.hierarchy, p.hashAlg, out, p.data))


def allocate_transient(tpm: Tpm, obj: Any) -> int:
    objects = tpm.volatile.objects
    if len(objects) >= MAX_LOADED_OBJECTS:
        raise TpmError(RC.OBJECT_MEMORY)
    handle = TRANSIENT_FIRST
    while handle in objects:
        handle += 1
    objects[handle] = obj
    return handle


@entity_resolver(HT.TRANSIENT)
def transient_entity(tpm: Tpm, handle: int) -> Entity:
    obj = tpm.volatile.objects.get(handle)
    if obj is None:
        raise TpmError(RC.REFERENCE_H0)
    if isinstance(obj, HashSequence):
        return Entity(obj.auth_value, da_protected=False)
    return obj.entity()


@command(CC.HashSequenceStart, params=[("auth", TPM2B_AUTH), ("hashAlg", TPMI_ALG_HASH_NULL)])
def hash_sequence_start(tpm: Tpm, cmd: Command) -> Response:
    alg = cmd.params.hashAlg
    algs = sorted(HASHES) if alg == ALG.NULL else [alg]
    sequence = HashSequence(alg, cmd.params.auth.rstrip(b"\x00"), {a: new_hash(a) for a in algs})
    return Response(handles=(allocate_transient(tpm, sequence),))


def _sequence(tpm: Tpm, handle: int, number: int) -> HashSequence:
    obj = tpm.volatile.objects.get(handle)
    if not isinstance(obj, HashSequence):
        raise TpmError(RC.MODE, handle=number)
    return obj


SEQUENCE = handle_spec("sequenceHandle", Auth.USER, types=[HT.TRANSIENT])


@command(CC.SequenceUpdate, handles=[SEQUENCE], params=[("buffer", TPM2B_MAX_BUFFER)])
def sequence_update(tpm: Tpm, cmd: Command) -> Response:
    _sequence(tpm, cmd.handles[0], 1).update(cmd.params.buffer)
    return Response()


@command(
    CC.SequenceComplete,
    handles=[SEQUENCE],
    params=[("buffer", TPM2B_MAX_BUFFER), ("hierarchy", TPMI_RH_HIERARCHY_NULL)],
    response_tpm2b=True,
)
def sequence_complete(tpm: Tpm, cmd: Command) -> Response:
    sequence = _sequence(tpm, cmd.handles[0], 1)
    if sequence.is_event:
        raise TpmError(RC.MODE, handle=1)
    _check_hierarchy(tpm, cmd.params.hierarchy, 2)
    sequence.update(cmd.params.buffer)
    out = sequence.hashers[sequence.hash_alg].digest()
    del tpm.volatile.objects[cmd.handles[0]]
    hierarchy = RH.NULL if sequence.is_hmac else cmd.params.hierarchy  # an HMAC is no digest to sign
    ticket = hash_check_ticket(tpm, hierarchy, sequence.hash_alg, out, sequence.first_bytes)
    return Response(params=TPM2B_DIGEST.build(out) + ticket)


@command(
    CC.EventSequenceComplete,
    handles=[handle_spec("pcrHandle", Auth.USER, types=[HT.PCR], permanent=[RH.NULL]), SEQUENCE],
    params=[("buffer", TPM2B_MAX_BUFFER)],
)
def event_sequence_complete(tpm: Tpm, cmd: Command) -> Response:
    sequence = _sequence(tpm, cmd.handles[1], 2)
    if not sequence.is_event:
        raise TpmError(RC.MODE, handle=2)
    sequence.update(cmd.params.buffer)
    digests = {alg: hasher.digest() for alg, hasher in sorted(sequence.hashers.items())}
    if cmd.handles[0] != RH.NULL:
        from vtpm.commands.pcr import extend

        extend(tpm, cmd.handles[0], list(digests.items()))
    del tpm.volatile.objects[cmd.handles[1]]
    return Response(params=TPML_DIGEST_VALUES.build([{"hashAlg": a, "digest": d} for a, d in digests.items()]))


@command(
    CC.HMAC_Start,
    handles=[handle_spec("handle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
    params=[("auth", TPM2B_AUTH), ("hashAlg", TPMI_ALG_HASH_NULL)],
)
def hmac_start(tpm: Tpm, cmd: Command) -> Response:
    """An HMAC sequence keyed by a loaded HMAC key (Part 3 17.2)."""
    import hmac as hmac_mod

    from vtpm.commands.signing import hmac_key

    secret, alg = hmac_key(tpm, cmd.handles[0], cmd.params.hashAlg)
    hasher = hmac_mod.new(secret, digestmod=HASHES[alg].name)
    sequence = HashSequence(alg, cmd.params.auth.rstrip(b"\x00"), {alg: hasher}, is_hmac=True)
    return Response(handles=(allocate_transient(tpm, sequence),))
