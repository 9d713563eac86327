"""TPM2B_PRIVATE as the reference implementation lays it out (tpm2-pytss' FAPI test_get_tpm_blobs
checks its size): integrity, a random IV, the encrypted sensitive area with the authValue padded to
the nameAlg digest size; blobs written before the IV load still."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from vtpm import wire
from vtpm.client import TpmClient
from vtpm.constants import ALG, CC, RC, RH, TPMA_OBJECT
from vtpm.crypto import hmac_digest
from vtpm.engine import Tpm
from vtpm.marshal.objects import TPMT_PUBLIC
from vtpm.marshal.primitives import U16, U32
from vtpm.objects import Public, _parent_keys, unwrap_private
from vtpm.sessions import CFB

A = TPMA_OBJECT
NULL_SYM = {"algorithm": ALG.NULL, "keyBits": None, "mode": None}


@pytest.fixture
def client() -> TpmClient:
    tpm = Tpm()
    tpm.execute(0, wire.STARTUP_CLEAR)
    return TpmClient(tpm)


def _ecc(attributes: int, symmetric: dict = NULL_SYM) -> bytes:
    scheme = {"scheme": ALG.NULL, "details": None}
    return TPMT_PUBLIC.build({
        "type": ALG.ECC, "nameAlg": ALG.SHA256, "objectAttributes": int(attributes), "authPolicy": b"",
        "parameters": {"symmetric": symmetric, "scheme": scheme, "curveID": 0x0003,
                       "kdf": {"scheme": ALG.NULL, "details": None}},
        "unique": {"x": b"", "y": b""}})


def _create(client: TpmClient, parent: int, auth: bytes) -> tuple[bytes, bytes]:
    """Create a P-256 signing key with ``auth``: (TPM2B_PRIVATE, TPMT_PUBLIC)."""
    template = _ecc(A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH | A.SIGN_ENCRYPT)
    params = wire.tpm2b(wire.tpm2b(auth) + wire.tpm2b(b"")) + wire.tpm2b(template) + wire.tpm2b(b"") + U32.build(0)
    out = client.call(wire.build_command(CC.Create, [parent], params, wire.PASSWORD_SESSION)).parameters()
    end = 2 + int.from_bytes(out[:2], "big")
    return out[:end], out[end + 2 : end + 2 + int.from_bytes(out[end : end + 2], "big")]


def _parent(client: TpmClient) -> int:
    storage = A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH | A.RESTRICTED | A.DECRYPT
    return client.create_primary(RH.OWNER, _ecc(storage, {"algorithm": ALG.AES, "keyBits": 128, "mode": ALG.CFB}))[0]


def _sign(client: TpmClient, key: int, password: bytes) -> int:
    ticket = U16.build(0x8024) + U32.build(RH.NULL) + U16.build(0)
    scheme = U16.build(ALG.ECDSA) + U16.build(ALG.SHA256)
    command = wire.build_command(CC.Sign, [key], wire.tpm2b(hashlib.sha256(b"m").digest()) + scheme + ticket,
                                 [wire.auth_entry(RH.PW, b"", 0, password)])
    return wire.response_code(client.transact(command))


def _load(client: TpmClient, parent: int, private: bytes, public: bytes) -> int:
    response = client.call(wire.build_command(CC.Load, [parent], private + wire.tpm2b(public), wire.PASSWORD_SESSION))
    return response.split(1)[0][0]


def test_private_has_an_iv_and_a_padded_auth_value(client: TpmClient) -> None:
    parent = _parent(client)
    for auth in (b"", b"ab"):
        private, public = _create(client, parent, auth)
        # integrity 2 + 32, IV 2 + 16, TPM2B_SENSITIVE 2 + (type 2, authValue 2 + 32, seedValue 2, key 2 + 32)
        assert len(private) == 2 + 0x7E
        assert private[2 + 34 : 2 + 36] == (16).to_bytes(2, "big")
        key = _load(client, parent, private, public)
        assert _sign(client, key, auth) == RC.SUCCESS
        assert _sign(client, key, auth + b"x") != RC.SUCCESS
        client.flush(key)
    first, _ = _create(client, parent, b"")
    second, _ = _create(client, parent, b"")
    assert first[36:54] != second[36:54]  # a fresh IV each time


def test_a_private_written_before_the_iv_still_loads(client: TpmClient) -> None:
    """The earlier layout: HMAC over the ciphertext, the unpadded TPM2B_SENSITIVE under a zero IV."""
    parent = _parent(client)
    private, public = _create(client, parent, b"pw")
    parent_object = client.tpm.volatile.objects[parent]
    name = Public.parse(public).name
    sensitive = unwrap_private(parent_object, private[2:], name, param=1)
    assert sensitive.auth_value == b"pw"  # the padding is gone once loaded
    sym_key, hmac_key = _parent_keys(parent_object, name)
    enc = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    encrypted = enc.update(sensitive.build()) + enc.finalize()
    integrity = hmac_digest(ALG.SHA256, hmac_key, encrypted, name)
    old = wire.tpm2b(wire.tpm2b(integrity) + encrypted)
    key = _load(client, parent, old, public)
    assert _sign(client, key, b"pw") == RC.SUCCESS
    damaged = bytearray(old)
    damaged[-1] ^= 1
    command = wire.build_command(CC.Load, [parent], bytes(damaged) + wire.tpm2b(public), wire.PASSWORD_SESSION)
    assert wire.response_code(client.transact(command)) == RC.INTEGRITY | 0x40 | 0x100
