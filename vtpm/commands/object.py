"""Object Commands (Part 3, section 12): Create, Load, LoadExternal, ReadPublic,
ActivateCredential, MakeCredential, Unseal, ObjectChangeAuth, CreateLoaded.

MakeCredential and ActivateCredential are the credential protocol an attestation
service uses to trust an AK by its EK.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from vtpm.constants import ALG, CC, HT, RC, RH, TPMA_OBJECT
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, hmac_digest, kdfa
from vtpm.entities.creation import check_sensitive_data, creation_data, primary_material, qualified_name
from vtpm.entities.hierarchy import OBJECT_HIERARCHIES, TPMI_RH_HIERARCHY_NULL
from vtpm.entities.keys import storage_parent
from vtpm.entities.object_table import OBJECT_HANDLE, allocate_transient, get_object
from vtpm.errors import TpmError
from vtpm.keyops import decrypt_secret, seal_to
from vtpm.marshal.objects import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMT_PUBLIC,
    TPMT_SENSITIVE,
)
from vtpm.marshal.primitives import Tpm2bStruct
from vtpm.marshal.structures import TPM2B_AUTH, TPM2B_DATA, TPM2B_DIGEST, TPM2B_NAME, TPM2B_SENSITIVE_DATA, TPML_PCR_SELECTION
from vtpm.objects import (
    LoadedObject,
    Public,
    Sensitive,
    check_binding,
    check_template,
    generate,
    unwrap_private,
    wrap_private,
)
from vtpm.sessions import CFB

if TYPE_CHECKING:
    from vtpm.engine import Tpm

A = TPMA_OBJECT
PARENT = handle_spec("parentHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])


def _check_parent_rules(parent: LoadedObject, public: Public, param: int) -> None:
    if public.has(A.FIXED_TPM) and not parent.public.has(A.FIXED_TPM):
        raise TpmError(RC.ATTRIBUTES, param=param)
    if public.has(A.FIXED_PARENT) != public.has(A.FIXED_TPM) and public.has(A.FIXED_TPM):
        raise TpmError(RC.ATTRIBUTES, param=param)


@command(
    CC.Create,
    handles=[PARENT],
    params=[("inSensitive", TPM2B_SENSITIVE_CREATE), ("inPublic", TPM2B_PUBLIC), ("outsideInfo", TPM2B_DATA),
            ("creationPCR", TPML_PCR_SELECTION)],
    response_tpm2b=True,
)
def create(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_Create (Part 3 12.1): create an ordinary object under a storage parent and return its private area wrapped
    by the parent, its public area and creation data and ticket."""
    parent = storage_parent(tpm, cmd.handles[0])
    p = cmd.params
    template = Public.from_container(p.inPublic)
    check_template(template, param=2, primary=False)
    _check_parent_rules(parent, template, 2)
    check_sensitive_data(template, p.inSensitive.data)
    public, secret, seed_value = generate(template, p.inSensitive.data, tpm.random)
    sensitive = Sensitive(public.type, p.inSensitive.userAuth.rstrip(b"\x00"), seed_value, secret)
    private = wrap_private(parent, sensitive, public.name)
    creation = creation_data(tpm, public, public.name, parent.hierarchy, parent.name, parent.qualified_name,
                             parent.public.name_alg, p.outsideInfo, p.creationPCR)
    body = TPM2B_PRIVATE.build(private) + len(public.raw).to_bytes(2, "big") + public.raw + creation
    return Response(params=body)


@command(CC.Load, handles=[PARENT], params=[("inPrivate", TPM2B_PRIVATE), ("inPublic", TPM2B_PUBLIC)],
         response_tpm2b=True)
def load(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_Load (Part 3 12.2): unwrap an object's private area under its parent, check it binds to the public area, and
    load it."""
    parent = storage_parent(tpm, cmd.handles[0])
    public = Public.from_container(cmd.params.inPublic)
    check_template(public, param=2, primary=False)
    _check_parent_rules(parent, public, 2)
    sensitive = unwrap_private(parent, cmd.params.inPrivate, public.name, param=1)
    obj = LoadedObject(public, sensitive, parent.hierarchy, qualified_name(parent.qualified_name, public))
    try:
        check_binding(obj)
    except TpmError as exc:
        raise exc.at_param(2) from None
    handle = allocate_transient(tpm, obj)
    return Response(params=TPM2B_NAME.build(public.name), handles=(handle,))


@command(
    CC.LoadExternal,
    params=[("inPrivate", Tpm2bStruct(TPMT_SENSITIVE, optional=True)), ("inPublic", Tpm2bStruct(TPMT_PUBLIC)),
            ("hierarchy", TPMI_RH_HIERARCHY_NULL)],
    response_tpm2b=True,
)
def load_external(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_LoadExternal (Part 3 12.3): load a public area, with a sensitive area in clear or without one, into a
    hierarchy; one with a sensitive area must be in TPM_RH_NULL (TPM_RC_HIERARCHY) and neither fixedTPM nor
    fixedParent (TPM_RC_ATTRIBUTES)."""
    p = cmd.params
    public = Public.from_container(p.inPublic)
    check_template(public, param=2, primary=False)
    sensitive = None
    if p.inPrivate is not None:
        if p.hierarchy != RH.NULL:
            raise TpmError(RC.HIERARCHY, param=3)
        if public.attributes & (A.FIXED_TPM | A.FIXED_PARENT):
            raise TpmError(RC.ATTRIBUTES, param=2)
        s = p.inPrivate
        sensitive = Sensitive(s.sensitiveType, s.authValue, s.seedValue, s.sensitive)
    obj = LoadedObject(public, sensitive, p.hierarchy, public.name)
    if public.type in (ALG.RSA, ALG.ECC):
        try:
            obj.public_key()  # an ECC point on the curve, an RSA modulus of keyBits
        except TpmError as exc:
            raise exc.at_param(2) from None
    try:
        check_binding(obj)
    except TpmError as exc:
        raise exc.at_param(1) from None
    return Response(params=TPM2B_NAME.build(public.name), handles=(allocate_transient(tpm, obj),))


@command(CC.ReadPublic, handles=[OBJECT_HANDLE], response_tpm2b=True)
def read_public(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_ReadPublic (Part 3 12.4): the public area, Name and qualified name of a loaded object."""
    obj = get_object(tpm, cmd.handles[0])
    raw = obj.public.raw
    body = len(raw).to_bytes(2, "big") + raw + TPM2B_NAME.build(obj.name) + TPM2B_NAME.build(obj.qualified_name)
    return Response(params=body)


def _protection_key(key: LoadedObject) -> tuple[int, int]:
    """(name hash, symmetric key bits) of a restricted decryption key (an EK)."""
    if not (key.public.has(A.RESTRICTED) and key.public.has(A.DECRYPT)) or key.public.type not in (ALG.RSA, ALG.ECC):
        raise TpmError(RC.TYPE, handle=1)
    return key.public.name_alg, key.public.symmetric().keyBits


def _credential_keys(alg: int, seed: bytes, name: bytes, bits: int) -> tuple[bytes, bytes]:
    return kdfa(alg, seed, b"STORAGE", name, b"", bits), kdfa(alg, seed, b"INTEGRITY", b"", b"", HASHES[alg].size * 8)


@command(
    CC.ActivateCredential,
    handles=[handle_spec("activateHandle", Auth.ADMIN, types=[HT.TRANSIENT, HT.PERSISTENT]),
             handle_spec("keyHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
    params=[("credentialBlob", TPM2B_ID_OBJECT), ("secret", TPM2B_ENCRYPTED_SECRET)],
    response_tpm2b=True,
)
def activate_credential(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_ActivateCredential (Part 3 12.5): recover the credential that MakeCredential sealed to a key and the Name of
    the object loaded here."""
    activated = get_object(tpm, cmd.handles[0])
    key = get_object(tpm, cmd.handles[1], 2)
    try:
        alg, bits = _protection_key(key)
    except TpmError as exc:
        exc.handle = 2
        raise
    seed = decrypt_secret(key, cmd.params.secret, b"IDENTITY", 2)
    blob = cmd.params.credentialBlob
    size = int.from_bytes(blob[:2], "big") if len(blob) >= 2 else -1
    if size != HASHES[alg].size or len(blob) < 2 + size:
        raise TpmError(RC.SIZE, param=1)
    outer, enc_identity = blob[2 : 2 + size], blob[2 + size :]
    sym_key, hmac_key = _credential_keys(alg, seed, activated.name, bits)
    if not hmac.compare_digest(outer, hmac_digest(alg, hmac_key, enc_identity, activated.name)):
        raise TpmError(RC.INTEGRITY, param=1)
    dec = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).decryptor()
    plain = dec.update(enc_identity) + dec.finalize()
    n = int.from_bytes(plain[:2], "big") if len(plain) >= 2 else -1
    if n < 0 or n > 64 or len(plain) != 2 + n:
        raise TpmError(RC.SIZE, param=1)
    return Response(params=TPM2B_DIGEST.build(plain[2:]))


@command(
    CC.MakeCredential,
    handles=[handle_spec("handle", types=[HT.TRANSIENT, HT.PERSISTENT])],
    params=[("credential", TPM2B_DIGEST), ("objectName", TPM2B_NAME)],
    response_tpm2b=True,
)
def make_credential(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_MakeCredential (Part 3 12.6): seal a credential to an encryption key's public part and an object Name
    (credentialBlob and secret)."""
    key = get_object(tpm, cmd.handles[0])
    alg, bits = _protection_key(key)
    name = cmd.params.objectName
    seed, secret = seal_to(key, b"IDENTITY")
    sym_key, hmac_key = _credential_keys(alg, seed, name, bits)
    enc = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = enc.update(TPM2B_DIGEST.build(cmd.params.credential)) + enc.finalize()
    outer = hmac_digest(alg, hmac_key, enc_identity, name)
    blob = len(outer).to_bytes(2, "big") + outer + enc_identity
    return Response(params=TPM2B_ID_OBJECT.build(blob) + TPM2B_ENCRYPTED_SECRET.build(secret))


@command(CC.Unseal, handles=[handle_spec("itemHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
         response_tpm2b=True)
def unseal(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_Unseal (Part 3 12.7): the data of a loaded sealed data object; TPM_RC_TYPE for an object that is not a
    keyed-hash one, TPM_RC_ATTRIBUTES for a keyed-hash key (sign, decrypt or restricted)."""
    obj = get_object(tpm, cmd.handles[0])
    if obj.public.type != ALG.KEYEDHASH:
        raise TpmError(RC.TYPE, handle=1)
    if obj.public.attributes & (A.DECRYPT | A.SIGN_ENCRYPT | A.RESTRICTED):
        raise TpmError(RC.ATTRIBUTES, handle=1)
    assert obj.sensitive is not None
    return Response(params=TPM2B_SENSITIVE_DATA.build(obj.sensitive.secret))


@command(
    CC.ObjectChangeAuth,
    handles=[handle_spec("objectHandle", Auth.ADMIN, types=[HT.TRANSIENT]),
             handle_spec("parentHandle", types=[HT.TRANSIENT, HT.PERSISTENT])],
    params=[("newAuth", TPM2B_AUTH)],
    response_tpm2b=True,
)
def object_change_auth(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_ObjectChangeAuth (Part 3 12.8): a new private area with a new authValue for a loaded object, wrapped for its
    parent (the loaded object keeps the old one); TPM_RC_TYPE when that parent is not the object's."""
    obj = get_object(tpm, cmd.handles[0])
    parent = storage_parent(tpm, cmd.handles[1])
    if obj.qualified_name != qualified_name(parent.qualified_name, obj.public):
        raise TpmError(RC.TYPE, handle=2)
    if len(cmd.params.newAuth) > HASHES[obj.public.name_alg].size:
        raise TpmError(RC.SIZE, param=1)
    assert obj.sensitive is not None
    changed = Sensitive(obj.sensitive.sensitive_type, cmd.params.newAuth.rstrip(b"\x00"), obj.sensitive.seed_value,
                        obj.sensitive.secret)
    return Response(params=TPM2B_PRIVATE.build(wrap_private(parent, changed, obj.name)))


@command(
    CC.CreateLoaded,
    handles=[handle_spec("parentHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=OBJECT_HIERARCHIES)],
    params=[("inSensitive", TPM2B_SENSITIVE_CREATE), ("inPublic", TPM2B_PUBLIC)],
    response_tpm2b=True,
)
def create_loaded(tpm: Tpm, cmd: Command) -> Response:
    """Create and load in one step: a primary under a hierarchy, or an ordinary child of a storage parent."""
    parent_handle = cmd.handles[0]
    p = cmd.params
    template = Public.from_container(p.inPublic)
    primary = parent_handle >> 24 == HT.PERMANENT
    check_template(template, param=2, primary=primary)
    check_sensitive_data(template, p.inSensitive.data)
    auth = p.inSensitive.userAuth.rstrip(b"\x00")
    if primary:
        public, secret, seed_value = primary_material(tpm, parent_handle, template, p.inSensitive.data)
        sensitive = Sensitive(public.type, auth, seed_value, secret)
        obj = LoadedObject(public, sensitive, parent_handle, qualified_name(parent_handle.to_bytes(4, "big"), public))
        private = b""
    else:
        parent = storage_parent(tpm, parent_handle)
        _check_parent_rules(parent, template, 2)
        public, secret, seed_value = generate(template, p.inSensitive.data, tpm.random)
        sensitive = Sensitive(public.type, auth, seed_value, secret)
        obj = LoadedObject(public, sensitive, parent.hierarchy, qualified_name(parent.qualified_name, public))
        private = wrap_private(parent, sensitive, public.name)
    handle = allocate_transient(tpm, obj)
    body = TPM2B_PRIVATE.build(private) + len(public.raw).to_bytes(2, "big") + public.raw + TPM2B_NAME.build(public.name)
    return Response(params=body, handles=(handle,))
