"""Symmetric Primitives (Part 3, section 15): EncryptDecrypt, EncryptDecrypt2, Hash, HMAC."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from vtpm.constants import ALG, CC, HT, RC, TPMA_OBJECT
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import hmac_digest, new_hash
from vtpm.entities.hierarchy import TPMI_RH_HIERARCHY_NULL
from vtpm.entities.keys import KEY, hmac_key
from vtpm.entities.object_table import get_object
from vtpm.entities.tickets import check_ticket_hierarchy, hash_check_ticket
from vtpm.errors import TpmError
from vtpm.marshal.objects import TPM2B_IV
from vtpm.marshal.primitives import U8, U16, OneOf
from vtpm.marshal.structures import TPM2B_DIGEST, TPM2B_MAX_BUFFER, TPMI_ALG_HASH, TPMI_ALG_HASH_NULL
from vtpm.objects import LoadedObject

if TYPE_CHECKING:
    from vtpm.engine import Tpm

A = TPMA_OBJECT
BLOCK = 16
SYM_MODES = (ALG.CTR, ALG.OFB, ALG.CBC, ALG.CFB, ALG.ECB, ALG.NULL)


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
    """TPM2_EncryptDecrypt (Part 3 15.2): encrypt or decrypt with a loaded symmetric key."""
    p = cmd.params
    return _encrypt_decrypt(tpm, cmd, p.inData, bool(p.decrypt), p.mode, p.ivIn, {"mode": 2, "iv": 3, "data": 4})


@command(CC.EncryptDecrypt2, handles=[KEY],
         params=[("inData", TPM2B_MAX_BUFFER), ("decrypt", TPMI_YES_NO), ("mode", TPMI_ALG_SYM_MODE), ("ivIn", TPM2B_IV)],
         response_tpm2b=True)
def encrypt_decrypt2(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_EncryptDecrypt2 (Part 3 15.3): EncryptDecrypt with the data first, so that it can be encrypted by a session.
    """
    p = cmd.params
    return _encrypt_decrypt(tpm, cmd, p.inData, bool(p.decrypt), p.mode, p.ivIn, {"mode": 3, "iv": 4, "data": 1})


@command(
    CC.Hash,
    params=[("data", TPM2B_MAX_BUFFER), ("hashAlg", TPMI_ALG_HASH), ("hierarchy", TPMI_RH_HIERARCHY_NULL)],
    response_tpm2b=True,
)
def hash_command(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_Hash (Part 3 15.4): the digest of data and, when the TPM may sign it, a hashcheck ticket for the hierarchy
    given."""
    p = cmd.params
    check_ticket_hierarchy(tpm, p.hierarchy, 3)
    hasher = new_hash(p.hashAlg)
    hasher.update(p.data)
    out = hasher.digest()
    return Response(params=TPM2B_DIGEST.build(out) + hash_check_ticket(tpm, p.hierarchy, p.hashAlg, out, p.data))


@command(CC.HMAC, handles=[handle_spec("handle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
         params=[("buffer", TPM2B_MAX_BUFFER), ("hashAlg", TPMI_ALG_HASH_NULL)], response_tpm2b=True)
def hmac_command(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_HMAC (Part 3 15.5): the HMAC of a buffer under a loaded keyed-hash key."""
    key, alg = hmac_key(tpm, cmd.handles[0], cmd.params.hashAlg)
    return Response(params=TPM2B_DIGEST.build(hmac_digest(alg, key, cmd.params.buffer)))
