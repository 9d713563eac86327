"""LoadExternal, MakeCredential and ActivateCredential (Part 3 12.3, 12.5, 12.6):
the credential protocol an attestation service uses to trust an AK by its EK."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from vtpm.constants import ALG, CC, HT, RC, RH, TPMA_OBJECT
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, hmac_digest, kdfa
from vtpm.entities.hierarchy import TPMI_RH_HIERARCHY_NULL
from vtpm.entities.object_table import allocate_transient, get_object
from vtpm.errors import TpmError
from vtpm.keyops import decrypt_secret, seal_to
from vtpm.marshal.objects import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPMT_PUBLIC, TPMT_SENSITIVE
from vtpm.marshal.primitives import Tpm2bStruct
from vtpm.marshal.structures import TPM2B_DIGEST, TPM2B_NAME
from vtpm.objects import LoadedObject, Public, Sensitive, check_binding, check_template
from vtpm.sessions import CFB

if TYPE_CHECKING:
    from vtpm.engine import Tpm

A = TPMA_OBJECT


@command(
    CC.LoadExternal,
    params=[("inPrivate", Tpm2bStruct(TPMT_SENSITIVE, optional=True)), ("inPublic", Tpm2bStruct(TPMT_PUBLIC)),
            ("hierarchy", TPMI_RH_HIERARCHY_NULL)],
    response_tpm2b=True,
)
def load_external(tpm: Tpm, cmd: Command) -> Response:
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
    try:
        check_binding(obj)
    except TpmError as exc:
        raise exc.at_param(1) from None
    return Response(params=TPM2B_NAME.build(public.name), handles=(allocate_transient(tpm, obj),))


def _protection_key(key: LoadedObject) -> tuple[int, int]:
    """(name hash, symmetric key bits) of a restricted decryption key (an EK)."""
    if not (key.public.has(A.RESTRICTED) and key.public.has(A.DECRYPT)) or key.public.type not in (ALG.RSA, ALG.ECC):
        raise TpmError(RC.TYPE, handle=1)
    return key.public.name_alg, key.public.symmetric().keyBits


def _credential_keys(alg: int, seed: bytes, name: bytes, bits: int) -> tuple[bytes, bytes]:
    return kdfa(alg, seed, b"STORAGE", name, b"", bits), kdfa(alg, seed, b"INTEGRITY", b"", b"", HASHES[alg].size * 8)


@command(
    CC.MakeCredential,
    handles=[handle_spec("handle", types=[HT.TRANSIENT, HT.PERSISTENT])],
    params=[("credential", TPM2B_DIGEST), ("objectName", TPM2B_NAME)],
    response_tpm2b=True,
)
def make_credential(tpm: Tpm, cmd: Command) -> Response:
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


@command(
    CC.ActivateCredential,
    handles=[handle_spec("activateHandle", Auth.ADMIN, types=[HT.TRANSIENT, HT.PERSISTENT]),
             handle_spec("keyHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
    params=[("credentialBlob", TPM2B_ID_OBJECT), ("secret", TPM2B_ENCRYPTED_SECRET)],
    response_tpm2b=True,
)
def activate_credential(tpm: Tpm, cmd: Command) -> Response:
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
