"""Hash/HMAC/Event Sequences (Part 3, section 17): HMAC_Start, HashSequenceStart,
SequenceUpdate, SequenceComplete, EventSequenceComplete."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from vtpm.constants import ALG, CC, HT, RC, RH
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, new_hash
from vtpm.entities.hierarchy import TPMI_RH_HIERARCHY_NULL
from vtpm.entities.keys import hmac_key
from vtpm.entities.object_table import allocate_transient
from vtpm.entities.pcr import extend
from vtpm.entities.sequences import HashSequence
from vtpm.entities.tickets import check_ticket_hierarchy, hash_check_ticket
from vtpm.errors import TpmError
from vtpm.marshal.structures import TPM2B_AUTH, TPM2B_DIGEST, TPM2B_MAX_BUFFER, TPMI_ALG_HASH_NULL, TPML_DIGEST_VALUES

if TYPE_CHECKING:
    from vtpm.engine import Tpm


@command(
    CC.HMAC_Start,
    handles=[handle_spec("handle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
    params=[("auth", TPM2B_AUTH), ("hashAlg", TPMI_ALG_HASH_NULL)],
)
def hmac_start(tpm: Tpm, cmd: Command) -> Response:
    """An HMAC sequence keyed by a loaded HMAC key (Part 3 17.2)."""
    secret, alg = hmac_key(tpm, cmd.handles[0], cmd.params.hashAlg)
    hasher = hmac.new(secret, digestmod=HASHES[alg].name)
    sequence = HashSequence(alg, cmd.params.auth.rstrip(b"\x00"), {alg: hasher}, is_hmac=True)
    return Response(handles=(allocate_transient(tpm, sequence),))


@command(CC.HashSequenceStart, params=[("auth", TPM2B_AUTH), ("hashAlg", TPMI_ALG_HASH_NULL)])
def hash_sequence_start(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_HashSequenceStart (Part 3, section 17): start a hash sequence, or for TPM_ALG_NULL an event sequence
    (every hash algorithm)."""
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
    """TPM2_SequenceUpdate (Part 3, section 17): add data to a hash, HMAC or event sequence."""
    _sequence(tpm, cmd.handles[0], 1).update(cmd.params.buffer)
    return Response()


@command(
    CC.SequenceComplete,
    handles=[SEQUENCE],
    params=[("buffer", TPM2B_MAX_BUFFER), ("hierarchy", TPMI_RH_HIERARCHY_NULL)],
    response_tpm2b=True,
)
def sequence_complete(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_SequenceComplete (Part 3, section 17): the digest or HMAC of a sequence with the last data added and, for
    a hash the TPM may sign, a hashcheck ticket; the sequence object is flushed. TPM_RC_MODE for an event sequence."""
    sequence = _sequence(tpm, cmd.handles[0], 1)
    if sequence.is_event:
        raise TpmError(RC.MODE, handle=1)
    check_ticket_hierarchy(tpm, cmd.params.hierarchy, 2)
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
    """TPM2_EventSequenceComplete (Part 3, section 17): the digests of an event sequence under every hash algorithm,
    extended into the PCR named (unless TPM_RH_NULL); the sequence object is flushed. TPM_RC_MODE for a hash or HMAC
    sequence."""
    sequence = _sequence(tpm, cmd.handles[1], 2)
    if not sequence.is_event:
        raise TpmError(RC.MODE, handle=2)
    sequence.update(cmd.params.buffer)
    digests = {alg: hasher.digest() for alg, hasher in sorted(sequence.hashers.items())}
    if cmd.handles[0] != RH.NULL:
        extend(tpm, cmd.handles[0], list(digests.items()))
    del tpm.volatile.objects[cmd.handles[1]]
    return Response(params=TPML_DIGEST_VALUES.build([{"hashAlg": a, "digest": d} for a, d in digests.items()]))
