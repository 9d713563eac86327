"""Duplication Commands (Part 3, section 13): Duplicate, Rewrap and Import (Part 1, 23.3),
moving a key to another parent, possibly on another TPM, under an optional inner
(symmetric) and outer (seed sealed to the new parent) wrapper. Rewrap moves the outer
wrapper from one parent to another without touching the inner one."""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from vtpm.constants import ALG, CC, HT, RC, RH, TPMA_OBJECT
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, digest, hmac_digest, kdfa
from vtpm.entities.keys import storage_parent
from vtpm.entities.object_table import get_object
from vtpm.errors import TpmError
from vtpm.keyops import decrypt_secret, seal_to
from vtpm.marshal.objects import TPM2B_ENCRYPTED_SECRET, TPM2B_PRIVATE, TPM2B_PUBLIC, TPMT_SYM_DEF_OBJECT
from vtpm.marshal.structures import TPM2B_DATA, TPM2B_NAME
from vtpm.objects import LoadedObject, Public, Sensitive, check_binding, check_template, wrap_private
from vtpm.sessions import CFB

if TYPE_CHECKING:
    from vtpm.engine import Tpm

A = TPMA_OBJECT


def _cfb(key: bytes, data: bytes, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), CFB(bytes(16)))
    op = cipher.encryptor() if encrypt else cipher.decryptor()
    return op.update(data) + op.finalize()


def _sym_bits(sym: object, param: int) -> int:
    if sym.algorithm == ALG.NULL:  # type: ignore[attr-defined]
        return 0
    if sym.algorithm != ALG.AES or sym.mode != ALG.CFB or sym.keyBits not in (128, 192, 256):  # type: ignore[attr-defined]
        raise TpmError(RC.SYMMETRIC, param=param)
    return sym.keyBits  # type: ignore[attr-defined,no-any-return]


def _outer_keys(parent: LoadedObject, seed: bytes, name: bytes) -> tuple[bytes, bytes]:
    alg = parent.public.name_alg
    bits = parent.public.symmetric().keyBits
    return (kdfa(alg, seed, b"STORAGE", name, b"", bits), kdfa(alg, seed, b"INTEGRITY", b"", b"", HASHES[alg].size * 8))


@command(
    CC.Duplicate,
    handles=[handle_spec("objectHandle", Auth.DUP, types=[HT.TRANSIENT]),
             handle_spec("newParentHandle", types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL])],
    params=[("encryptionKeyIn", TPM2B_DATA), ("symmetricAlg", TPMT_SYM_DEF_OBJECT)],
    response_tpm2b=True,
)
def duplicate(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_Duplicate (Part 3 13.1): wrap a loaded object for a new parent, with the inner and outer wrappers the
    object's attributes and the caller ask for; TPM_RC_ATTRIBUTES for a fixedParent object."""
    obj = get_object(tpm, cmd.handles[0])
    if obj.public.has(A.FIXED_PARENT):
        raise TpmError(RC.ATTRIBUTES, handle=1)
    bits = _sym_bits(cmd.params.symmetricAlg, 2)
    new_parent = None if cmd.handles[1] == RH.NULL else get_object(tpm, cmd.handles[1], 2)
    if obj.public.has(A.ENCRYPTED_DUPLICATION):
        if not bits:
            raise TpmError(RC.SYMMETRIC, param=2)
        if new_parent is None:
            raise TpmError(RC.HIERARCHY, handle=2)
    key_in = cmd.params.encryptionKeyIn
    if not bits and key_in:
        raise TpmError(RC.SIZE, param=1)
    assert obj.sensitive is not None
    sensitive = obj.sensitive.build()
    name = obj.name
    key_out = b""
    blob = sensitive
    if bits:
        if key_in and len(key_in) != bits // 8:
            raise TpmError(RC.SIZE, param=1)
        key = key_in or secrets.token_bytes(bits // 8)
        key_out = b"" if key_in else key
        inner = digest(obj.public.name_alg, sensitive, name)
        blob = _cfb(key, len(inner).to_bytes(2, "big") + inner + sensitive, True)
    seed_out = b""
    if new_parent is not None:
        if not new_parent.public.is_storage_parent:
            raise TpmError(RC.TYPE, handle=2)
        seed, seed_out = seal_to(new_parent, b"DUPLICATE")
        blob = _outer_wrap(new_parent, seed, name, blob)
    body = TPM2B_DATA.build(key_out) + TPM2B_PRIVATE.build(blob) + TPM2B_ENCRYPTED_SECRET.build(seed_out)
    return Response(params=body)


def _outer_wrap(parent: LoadedObject, seed: bytes, name: bytes, blob: bytes) -> bytes:
    """The outer wrapper of a duplicate for ``parent``: HMAC || CFB(blob) under keys from the seed."""
    sym_key, hmac_key = _outer_keys(parent, seed, name)
    encrypted = _cfb(sym_key, blob, True)
    outer = hmac_digest(parent.public.name_alg, hmac_key, encrypted, name)
    return len(outer).to_bytes(2, "big") + outer + encrypted


def _outer_unwrap(parent: LoadedObject, seed: bytes, name: bytes, blob: bytes, param: int) -> bytes:
    sym_key, hmac_key = _outer_keys(parent, seed, name)
    size = int.from_bytes(blob[:2], "big") if len(blob) >= 2 else -1
    outer, encrypted = blob[2 : 2 + size], blob[2 + size :]
    expected = hmac_digest(parent.public.name_alg, hmac_key, encrypted, name)
    if size != len(expected) or not hmac.compare_digest(outer, expected):
        raise TpmError(RC.INTEGRITY, param=param)
    return _cfb(sym_key, encrypted, False)


@command(
    CC.Rewrap,
    handles=[handle_spec("oldParent", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL]),
             handle_spec("newParent", types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL])],
    params=[("inDuplicate", TPM2B_PRIVATE), ("name", TPM2B_NAME), ("inSymSeed", TPM2B_ENCRYPTED_SECRET)],
    response_tpm2b=True,
)
def rewrap(tpm: Tpm, cmd: Command) -> Response:
    """Take the outer wrapper of a duplicate off for the old parent and put one on for the new
    parent (Part 3 13.2); TPM_RH_NULL on either side means no outer wrapper there."""
    old_handle, new_handle = cmd.handles
    p = cmd.params
    if bool(p.inSymSeed) != (old_handle != RH.NULL):
        raise TpmError(RC.HANDLE, handle=1)
    blob = p.inDuplicate
    if old_handle != RH.NULL:
        old_parent = get_object(tpm, old_handle)
        if not old_parent.public.is_storage_parent or old_parent.sensitive is None:
            raise TpmError(RC.TYPE, handle=1)
        try:
            seed = decrypt_secret(old_parent, p.inSymSeed, b"DUPLICATE", 3)
        except TpmError:
            raise TpmError(RC.VALUE, param=3) from None
        blob = _outer_unwrap(old_parent, seed, p.name, blob, 1)
    seed_out = b""
    if new_handle != RH.NULL:
        new_parent = get_object(tpm, new_handle, 2)
        if not new_parent.public.is_storage_parent:
            raise TpmError(RC.TYPE, handle=2)
        seed, seed_out = seal_to(new_parent, b"DUPLICATE")
        if len(blob) + 2 + HASHES[new_parent.public.name_alg].size > TPM2B_PRIVATE.max_size:
            raise TpmError(RC.VALUE, param=1)
        blob = _outer_wrap(new_parent, seed, p.name, blob)
    return Response(params=TPM2B_PRIVATE.build(blob) + TPM2B_ENCRYPTED_SECRET.build(seed_out))


@command(
    CC.Import,
    handles=[handle_spec("parentHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
    params=[("encryptionKey", TPM2B_DATA), ("objectPublic", TPM2B_PUBLIC), ("duplicate", TPM2B_PRIVATE),
            ("inSymSeed", TPM2B_ENCRYPTED_SECRET), ("symmetricAlg", TPMT_SYM_DEF_OBJECT)],
    response_tpm2b=True,
)
def import_object(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_Import (Part 3 13.3): unwrap a duplicated object under a storage parent and return it as a TPM2B_PRIVATE of
    that parent."""
    parent = storage_parent(tpm, cmd.handles[0])
    p = cmd.params
    public = Public.from_container(p.objectPublic)
    check_template(public, param=2, primary=False)
    if public.attributes & (A.FIXED_TPM | A.FIXED_PARENT):
        raise TpmError(RC.ATTRIBUTES, param=2)
    bits = _sym_bits(p.symmetricAlg, 5)
    if public.has(A.ENCRYPTED_DUPLICATION) and (not bits or not p.inSymSeed):
        raise TpmError(RC.ATTRIBUTES, param=2)
    name = public.name
    blob = p.duplicate
    if p.inSymSeed:
        seed = decrypt_secret(parent, p.inSymSeed, b"DUPLICATE", 4)
        blob = _outer_unwrap(parent, seed, name, blob, 3)
    if bits:
        if len(p.encryptionKey) != bits // 8:
            raise TpmError(RC.SIZE, param=1)
        plain = _cfb(p.encryptionKey, blob, False)
        size = int.from_bytes(plain[:2], "big")
        inner, blob = plain[2 : 2 + size], plain[2 + size :]
        if not hmac.compare_digest(inner, digest(public.name_alg, blob, name)):
            raise TpmError(RC.INTEGRITY, param=3)
    try:
        sensitive = Sensitive.parse_tpm2b(blob)
    except Exception:
        raise TpmError(RC.INTEGRITY, param=3) from None
    obj = LoadedObject(public, sensitive, parent.hierarchy, name)
    try:
        check_binding(obj)
    except TpmError as exc:
        raise exc.at_param(3) from None
    return Response(params=TPM2B_PRIVATE.build(wrap_private(parent, sensitive, name)))
