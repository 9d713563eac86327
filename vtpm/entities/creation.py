"""What creating an object takes, in Create and CreateLoaded (Part 3, 12) as in CreatePrimary
(Part 3, 24): primary key material from a hierarchy's seed, the rules for caller-supplied
sensitive data, qualified names, and the creation data with its ticket."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtpm.constants import ALG, RC, RH, ST, TPMA_OBJECT
from vtpm.crypto import digest, hmac_digest
from vtpm.entities.hierarchy import hierarchy_proof, hierarchy_seed
from vtpm.entities.pcr import pcr_digest
from vtpm.errors import TpmError
from vtpm.marshal.objects import TPMS_CREATION_DATA, TPMT_TK
from vtpm.marshal.structures import TPM2B_DIGEST
from vtpm.objects import KdfStream, Public, generate, primary_context

if TYPE_CHECKING:
    from vtpm.engine import Tpm

A = TPMA_OBJECT
PRIMARY_CACHE_SIZE = 16


def qualified_name(parent_qn: bytes, public: Public) -> bytes:
    """An object's qualified name: nameAlg || H(parent's qualified name || the object's Name)."""
    alg = public.name_alg
    return alg.to_bytes(2, "big") + digest(alg, parent_qn, public.name)


def check_sensitive_data(public: Public, data: bytes) -> None:
    """The rules for a TPMS_SENSITIVE_CREATE's data: none for RSA and ECC (which need sensitiveDataOrigin), never
    both data and sensitiveDataOrigin otherwise, and one of them for a keyed-hash object; TPM_RC_VALUE or
    TPM_RC_ATTRIBUTES."""
    origin = public.has(A.SENSITIVE_DATA_ORIGIN)
    if public.type in (ALG.RSA, ALG.ECC):
        if data:
            raise TpmError(RC.VALUE, param=1)
        if not origin:
            raise TpmError(RC.ATTRIBUTES, param=2)
    elif data and origin:
        raise TpmError(RC.ATTRIBUTES, param=2)
    elif not data and not origin and public.type == ALG.KEYEDHASH:
        raise TpmError(RC.ATTRIBUTES, param=2)


def primary_material(tpm: Tpm, hierarchy: int, template: Public, data: bytes) -> tuple[Public, bytes, bytes]:
    """The public area, sensitive secret and seed value of a primary object, derived from the hierarchy's seed and the
    template; an RSA primary's prime is cached in the state, since finding it is slow."""
    seed = hierarchy_seed(tpm, hierarchy)
    context = primary_context(template, data)
    cache_key = digest(ALG.SHA256, seed, context).hex()
    cache = tpm.state.primary_cache
    if template.type == ALG.RSA and cache_key in cache:
        entry = cache[cache_key]
        area = template.area
        area.unique = entry["n"]
        cache[cache_key] = cache.pop(cache_key)  # most recently used last
        return Public.from_container(area), entry["p"], entry["seed_value"]
    random = KdfStream(template.name_alg, seed, b"vTPM primary object", context)
    public, secret, seed_value = generate(template, data, random)
    if template.type == ALG.RSA and hierarchy != RH.NULL:
        cache[cache_key] = {"n": public.area.unique, "p": secret, "seed_value": seed_value}
        while len(cache) > PRIMARY_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        tpm.mark_dirty()
    return public, secret, seed_value


def creation_data(tpm: Tpm, public: Public, name: bytes, hierarchy: int, parent_name: bytes, parent_qn: bytes,
                  parent_alg: int, outside: bytes, selection: Any) -> bytes:
    """creationData, creationHash and creationTicket (Part 3 12.1)."""
    data = TPMS_CREATION_DATA.build({
        "pcrSelect": selection,
        "pcrDigest": pcr_digest(tpm, public.name_alg, selection),
        "locality": 1 << tpm.locality if tpm.locality < 5 else tpm.locality,
        "parentNameAlg": parent_alg,
        "parentName": parent_name,
        "parentQualifiedName": parent_qn,
        "outsideInfo": outside,
    })
    creation_hash = digest(public.name_alg, data)
    if hierarchy == RH.NULL:
        ticket = {"tag": ST.CREATION, "hierarchy": RH.NULL, "digest": b""}
    else:
        mac = hmac_digest(public.name_alg, hierarchy_proof(tpm, hierarchy), ST.CREATION.to_bytes(2, "big"), name,
                          creation_hash)
        ticket = {"tag": ST.CREATION, "hierarchy": hierarchy, "digest": mac}
    return len(data).to_bytes(2, "big") + data + TPM2B_DIGEST.build(creation_hash) + TPMT_TK.build(ticket)
