"""Encryption with loaded keys (Part 3, sections 14 and 15): RSA_Encrypt, RSA_Decrypt,
ECDH_KeyGen, ECDH_ZGen, EncryptDecrypt, EncryptDecrypt2."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from Crypto.PublicKey import ECC
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from vtpm.constants import ALG, CC, HT, RC, TPMA_OBJECT
from vtpm.core import Command, Response, command, handle_spec
from vtpm.entities.keys import KEY
from vtpm.entities.object_table import get_object
from vtpm.errors import TpmError
from vtpm.keyops import hash_class
from vtpm.marshal.objects import TPM2B_ECC_POINT, TPM2B_IV, TPM2B_PUBLIC_KEY_RSA, TPMT_ASYM_SCHEME
from vtpm.marshal.primitives import U8, U16, OneOf
from vtpm.marshal.structures import TPM2B_DATA, TPM2B_MAX_BUFFER
from vtpm.objects import CURVES, LoadedObject

if TYPE_CHECKING:
    from vtpm.engine import Tpm

A = TPMA_OBJECT
BLOCK = 16
PUBLIC_KEY = handle_spec("keyHandle", types=[HT.TRANSIENT, HT.PERSISTENT])
SYM_MODES = (ALG.CTR, ALG.OFB, ALG.CBC, ALG.CFB, ALG.ECB, ALG.NULL)


# ----------------------------------------------------------------------------- RSA


def _decryption_key(tpm: Tpm, handle: int, kind: int) -> LoadedObject:
    """An unrestricted decryption key of type ``kind`` (RSA for RSA_*, ECC for ECDH_*)."""
    key = get_object(tpm, handle)
    if key.public.type != kind:
        raise TpmError(RC.KEY, handle=1)
    if key.public.has(A.RESTRICTED) or not key.public.has(A.DECRYPT):
        raise TpmError(RC.ATTRIBUTES, handle=1)
    return key


def _rsa_scheme(key: LoadedObject, requested: Any) -> tuple[int, int]:
    params = key.public.area.parameters.scheme
    if params.scheme != ALG.NULL:
        if requested.scheme not in (ALG.NULL, params.scheme):
            raise TpmError(RC.SCHEME, param=2)
        return params.scheme, params.details.hashAlg if params.details is not None else ALG.NULL
    if requested.scheme not in (ALG.NULL, ALG.RSAES, ALG.OAEP):
        raise TpmError(RC.SCHEME, param=2)
    return requested.scheme, requested.details.hashAlg if requested.details is not None else ALG.NULL


def _label(label: bytes) -> bytes:
    return label if not label or label.endswith(b"\x00") else label + b"\x00"


@command(CC.RSA_Encrypt, handles=[PUBLIC_KEY],
         params=[("message", TPM2B_PUBLIC_KEY_RSA), ("inScheme", TPMT_ASYM_SCHEME), ("label", TPM2B_DATA)],
         response_tpm2b=True)
def rsa_encrypt(tpm: Tpm, cmd: Command) -> Response:
    key = _decryption_key(tpm, cmd.handles[0], ALG.RSA)
    scheme, alg = _rsa_scheme(key, cmd.params.inScheme)
    public = key.public_key()
    message = cmd.params.message
    size = public.key_size // 8
    try:
        if scheme == ALG.OAEP:
            out = public.encrypt(message, padding.OAEP(padding.MGF1(hash_class(alg)), hash_class(alg), _label(cmd.params.label) or None))
        elif scheme == ALG.RSAES:
            out = public.encrypt(message, padding.PKCS1v15())
        else:  # raw RSA: the message is a number smaller than the modulus
            value = int.from_bytes(message, "big")
            if value >= public.public_numbers().n:
                raise TpmError(RC.VALUE, param=1)
            out = pow(value, public.public_numbers().e, public.public_numbers().n).to_bytes(size, "big")
    except ValueError:
        raise TpmError(RC.VALUE, param=1) from None
    return Response(params=TPM2B_PUBLIC_KEY_RSA.build(out))


@command(CC.RSA_Decrypt, handles=[KEY],
         params=[("cipherText", TPM2B_PUBLIC_KEY_RSA), ("inScheme", TPMT_ASYM_SCHEME), ("label", TPM2B_DATA)],
         response_tpm2b=True)
def rsa_decrypt(tpm: Tpm, cmd: Command) -> Response:
    key = _decryption_key(tpm, cmd.handles[0], ALG.RSA)
    scheme, alg = _rsa_scheme(key, cmd.params.inScheme)
    private = key.private_key()
    data = cmd.params.cipherText
    size = private.key_size // 8
    if len(data) != size:
        raise TpmError(RC.SIZE, param=1)
    try:
        if scheme == ALG.OAEP:
            out = private.decrypt(data, padding.OAEP(padding.MGF1(hash_class(alg)), hash_class(alg), _label(cmd.params.label) or None))
        elif scheme == ALG.RSAES:
            out = private.decrypt(data, padding.PKCS1v15())
        else:
            numbers = private.private_numbers()
            value = int.from_bytes(data, "big")
            if value >= numbers.public_numbers.n:
                raise TpmError(RC.VALUE, param=1)
            out = pow(value, numbers.d, numbers.public_numbers.n).to_bytes(size, "big")
    except ValueError:
        raise TpmError(RC.VALUE, param=1) from None
    return Response(params=TPM2B_PUBLIC_KEY_RSA.build(out))


# ----------------------------------------------------------------------------- ECDH


def _point(key: LoadedObject, public: Any) -> dict[str, bytes]:
    size = CURVES[key.public.area.parameters.curveID][1]
    numbers = public.public_numbers()
    return {"x": numbers.x.to_bytes(size, "big"), "y": numbers.y.to_bytes(size, "big")}


_PYCRYPTODOME_CURVES = {0x0003: "P-256", 0x0004: "P-384", 0x0005: "P-521"}


def _multiply(key: LoadedObject, scalar: int, x: bytes, y: bytes, param: int) -> dict[str, bytes]:
    """The full point scalar*(x, y) on the key's curve; the TPM returns both coordinates."""
    curve_id = key.public.area.parameters.curveID
    size = CURVES[curve_id][1]
    try:
        point = ECC.EccPoint(int.from_bytes(x, "big"), int.from_bytes(y, "big"), _PYCRYPTODOME_CURVES[curve_id])
    except ValueError:
        raise TpmError(RC.ECC_POINT, param=param) from None
    result = point * scalar
    if result.is_point_at_infinity():
        raise TpmError(RC.NO_RESULT)
    return {"x": int(result.x).to_bytes(size, "big"), "y": int(result.y).to_bytes(size, "big")}


@command(CC.ECDH_KeyGen, handles=[PUBLIC_KEY], response_tpm2b=True)
def ecdh_keygen(tpm: Tpm, cmd: Command) -> Response:
    key = _decryption_key(tpm, cmd.handles[0], ALG.ECC)
    curve, size = CURVES[key.public.area.parameters.curveID]
    ephemeral = ec.generate_private_key(curve)
    unique = key.public.area.unique
    z_point = _multiply(key, ephemeral.private_numbers().private_value, unique.x, unique.y, 0)
    body = TPM2B_ECC_POINT.build(z_point) + TPM2B_ECC_POINT.build(_point(key, ephemeral.public_key()))
    return Response(params=body)


@command(CC.ECDH_ZGen, handles=[KEY], params=[("inPoint", TPM2B_ECC_POINT)], response_tpm2b=True)
def ecdh_zgen(tpm: Tpm, cmd: Command) -> Response:
    key = _decryption_key(tpm, cmd.handles[0], ALG.ECC)
    p = cmd.params.inPoint
    scalar = key.private_key().private_numbers().private_value
    return Response(params=TPM2B_ECC_POINT.build(_multiply(key, scalar, p.x, p.y, 1)))


# ----------------------------------------------------------------------------- symmetric


def _sym_key(tpm: Tpm, handle: int, decrypt: bool) -> LoadedObject:
    key = get_object(tpm, handle)
    if key.public.type != ALG.SYMCIPHER:
        raise TpmError(RC.KEY, handle=1)
    if key.public.has(A.RESTRICTED):
        raise TpmError(RC.ATTRIBUTES, handle=1)
    if not key.public.has(A.DECRYPT if decrypt else A.SIGN_ENCRYPT):
        raise TpmError(RC.ATTRIBUTES, handle=1)
    return key


def _ecb(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


def sym_crypt(key: bytes, mode: int, iv: bytes, data: bytes, decrypt: bool) -> tuple[bytes, bytes]:
    """AES in the TPM's modes, returning the chaining value the TPM hands back as ivOut."""
    out = bytearray()
    if mode == ALG.ECB:
        ctx = Cipher(algorithms.AES(key), modes.ECB())
        op = ctx.decryptor() if decrypt else ctx.encryptor()
        return op.update(data) + op.finalize(), iv
    if mode == ALG.CBC:
        ctx = Cipher(algorithms.AES(key), modes.CBC(iv))
        op = ctx.decryptor() if decrypt else ctx.encryptor()
        result = op.update(data) + op.finalize()
        last = (data if decrypt else result)[-BLOCK:] if data else iv
        return result, last
    chain = bytearray(iv)
    for offset in range(0, len(data), BLOCK):
        piece = data[offset : offset + BLOCK]
        if mode == ALG.CFB:
            stream = _ecb(key, bytes(chain))
            result = _xor(piece, stream)
            cipher_bytes = piece if decrypt else result
            chain = bytearray(cipher_bytes + stream[len(piece):]) if len(piece) < BLOCK else bytearray(cipher_bytes)
        elif mode == ALG.OFB:
            stream = _ecb(key, bytes(chain))
            result = _xor(piece, stream)
            chain = bytearray(stream)
        elif mode == ALG.CTR:
            stream = _ecb(key, bytes(chain))
            result = _xor(piece, stream)
            chain = bytearray((int.from_bytes(chain, "big") + 1 & (1 << 128) - 1).to_bytes(BLOCK, "big"))
        else:
            raise TpmError(RC.MODE)
        out += result
    return bytes(out), bytes(chain)


def _encrypt_decrypt(tpm: Tpm, cmd: Command, data: bytes, decrypt: bool, mode: int, iv: bytes, numbers: dict[str, int]) -> Response:
    key = _sym_key(tpm, cmd.handles[0], decrypt)
    key_mode = key.public.area.parameters.sym.mode
    if key_mode != ALG.NULL:
        if mode not in (ALG.NULL, key_mode):
            raise TpmError(RC.MODE, param=numbers["mode"])
        mode = key_mode
    elif mode == ALG.NULL:
        raise TpmError(RC.MODE, param=numbers["mode"])
    if len(iv) != (0 if mode == ALG.ECB else BLOCK):  # ECB takes no IV at all
        raise TpmError(RC.SIZE, param=numbers["iv"])
    if mode in (ALG.CBC, ALG.ECB) and len(data) % BLOCK:
        raise TpmError(RC.SIZE, param=numbers["data"])
    assert key.sensitive is not None
    out, iv_out = sym_crypt(key.sensitive.secret, mode, iv, data, decrypt)
    return Response(params=TPM2B_MAX_BUFFER.build(out) + TPM2B_IV.build(iv_out))


TPMI_YES_NO = OneOf(U8, [0, 1], RC.VALUE)
TPMI_ALG_SYM_MODE = OneOf(U16, SYM_MODES, RC.MODE)


@command(CC.EncryptDecrypt, handles=[KEY],
         params=[("decrypt", TPMI_YES_NO), ("mode", TPMI_ALG_SYM_MODE), ("ivIn", TPM2B_IV), ("inData", TPM2B_MAX_BUFFER)],
         response_tpm2b=True)
def encrypt_decrypt(tpm: Tpm, cmd: Command) -> Response:
    p = cmd.params
    return _encrypt_decrypt(tpm, cmd, p.inData, bool(p.decrypt), p.mode, p.ivIn, {"mode": 2, "iv": 3, "data": 4})


@command(CC.EncryptDecrypt2, handles=[KEY],
         params=[("inData", TPM2B_MAX_BUFFER), ("decrypt", TPMI_YES_NO), ("mode", TPMI_ALG_SYM_MODE), ("ivIn", TPM2B_IV)],
         response_tpm2b=True)
def encrypt_decrypt2(tpm: Tpm, cmd: Command) -> Response:
    p = cmd.params
    return _encrypt_decrypt(tpm, cmd, p.inData, bool(p.decrypt), p.mode, p.ivIn, {"mode": 3, "iv": 4, "data": 1})
