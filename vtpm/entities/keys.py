"""Loaded keys checked for one use, as several chapters of Part 3 need them: a signing key,
an HMAC key, a storage parent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import ALG, HT, RC, TPMA_OBJECT
from vtpm.core import Auth, handle_spec
from vtpm.entities.object_table import get_object
from vtpm.errors import TpmError
from vtpm.objects import LoadedObject

if TYPE_CHECKING:
    from vtpm.engine import Tpm

A = TPMA_OBJECT
KEY = handle_spec("keyHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])


def signing_key(tpm: Tpm, handle: int, number: int = 1) -> LoadedObject:
    """The loaded object at ``handle`` if it is a signing key; TPM_RC_KEY (for handle ``number``) if not."""
    key = get_object(tpm, handle, number)
    if not key.public.has(A.SIGN_ENCRYPT):
        raise TpmError(RC.KEY, handle=number)
    return key


def hmac_key(tpm: Tpm, handle: int, requested: int) -> tuple[bytes, int]:
    """The secret of an unrestricted HMAC key and the hash to use (its scheme's, or the caller's)."""
    key = get_object(tpm, handle)
    if key.public.type != ALG.KEYEDHASH or not key.public.has(A.SIGN_ENCRYPT):
        raise TpmError(RC.TYPE, handle=1)
    if key.public.has(A.RESTRICTED):
        raise TpmError(RC.ATTRIBUTES, handle=1)
    scheme = key.public.area.parameters.scheme
    alg = requested
    if scheme.scheme == ALG.HMAC:
        if alg not in (ALG.NULL, scheme.details.hashAlg):
            raise TpmError(RC.VALUE, param=2)
        alg = scheme.details.hashAlg
    elif alg == ALG.NULL:
        raise TpmError(RC.VALUE, param=2)
    assert key.sensitive is not None
    return key.sensitive.secret, alg


def storage_parent(tpm: Tpm, handle: int) -> LoadedObject:
    """The loaded object at ``handle`` if it can be a parent (a storage key with its sensitive area); TPM_RC_TYPE
    otherwise."""
    parent = get_object(tpm, handle)
    if not parent.public.is_storage_parent or parent.sensitive is None:
        raise TpmError(RC.TYPE, handle=1)
    return parent
