"""vtpm.ecmath's keys on every curve: the curves OpenSSL has give `cryptography` keys, the BN and SM2
curves the Python ones; both kinds sign, verify and agree on ECDH the same way, and refuse bad input."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from vtpm import ecmath, wire
from vtpm.client import TpmClient
from vtpm.constants import ALG, CC, ECC_CURVE, RC, RH, TPMA_OBJECT
from vtpm.engine import Tpm
from vtpm.marshal.objects import TPMT_PUBLIC
from vtpm.marshal.primitives import U16, U32

PREHASHED = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
DIGEST = hashlib.sha256(b"message").digest()


def test_every_curve_is_consistent() -> None:
    for c in ecmath.CURVES.values():
        assert c.on_curve(c.g), c.curve_id
        assert c.multiply(c.n) is None and c.multiply(c.n + 1) == c.g
        assert c.size == (c.key_bits + 7) // 8


def test_openssl_keeps_the_nist_curves_and_python_the_others() -> None:
    assert {cid for cid in ecmath.CURVES if ecmath.openssl_curve(cid) is not None} == {
        ECC_CURVE.NIST_P192, ECC_CURVE.NIST_P224, ECC_CURVE.NIST_P256, ECC_CURVE.NIST_P384, ECC_CURVE.NIST_P521}
    assert isinstance(ecmath.derive_private_key(ECC_CURVE.BN_P256, 5), ecmath.SoftPrivateKey)
    assert isinstance(ecmath.derive_private_key(ECC_CURVE.NIST_P192, 5), ec.EllipticCurvePrivateKey)


@pytest.mark.parametrize("curve_id", [ECC_CURVE.BN_P256, ECC_CURVE.SM2_P256])
def test_python_keys_sign_verify_and_agree(curve_id: int) -> None:
    alice = ecmath.generate_private_key(curve_id)
    bob = ecmath.generate_private_key(curve_id)
    assert alice.exchange(ec.ECDH(), bob.public_key()) == bob.exchange(ec.ECDH(), alice.public_key())
    signature = alice.sign(DIGEST, PREHASHED)
    alice.public_key().verify(signature, DIGEST, PREHASHED)
    with pytest.raises(InvalidSignature):
        bob.public_key().verify(signature, DIGEST, PREHASHED)
    with pytest.raises(InvalidSignature):
        alice.public_key().verify(signature, hashlib.sha256(b"other").digest(), PREHASHED)


def test_python_ecdsa_verifies_openssl_signatures_with_a_longer_digest() -> None:
    """P-192 with a SHA-256 digest: both truncate the digest to the order's 192 bits."""
    key = ec.generate_private_key(ec.SECP192R1())
    r, s = utils.decode_dss_signature(key.sign(DIGEST, PREHASHED))
    numbers = key.public_key().public_numbers()
    curve = ecmath.curve(ECC_CURVE.NIST_P192)
    assert ecmath.ecdsa_verify(curve, (numbers.x, numbers.y), DIGEST, r, s)
    assert not ecmath.ecdsa_verify(curve, (numbers.x, numbers.y), DIGEST, r, (s + 1) % curve.n)
    mine_r, mine_s = ecmath.ecdsa_sign(curve, key.private_numbers().private_value, DIGEST)
    key.public_key().verify(utils.encode_dss_signature(mine_r, mine_s), DIGEST, PREHASHED)


@pytest.mark.parametrize("curve_id", [ECC_CURVE.BN_P256, ECC_CURVE.NIST_P224])
def test_bad_scalars_and_points_are_refused(curve_id: int) -> None:
    c = ecmath.curve(curve_id)
    for d in (0, c.n, c.n + 1):
        with pytest.raises(ValueError):
            ecmath.derive_private_key(curve_id, d)
    with pytest.raises(ValueError):
        ecmath.load_public_key(curve_id, c.gx, (c.gy + 1) % c.p)
    assert ecmath.load_public_key(curve_id, c.gx, c.gy).public_numbers().x == c.gx


def test_a_bn_key_signs_through_the_engine() -> None:
    """CreatePrimary on BN P-256, Sign (ECDSA), VerifySignature: a correct and a wrong digest."""
    tpm = Tpm()
    tpm.execute(0, wire.STARTUP_CLEAR)
    client = TpmClient(tpm)
    attributes = (TPMA_OBJECT.FIXED_TPM | TPMA_OBJECT.FIXED_PARENT | TPMA_OBJECT.SENSITIVE_DATA_ORIGIN
                  | TPMA_OBJECT.USER_WITH_AUTH | TPMA_OBJECT.SIGN_ENCRYPT)
    template = TPMT_PUBLIC.build({
        "type": ALG.ECC, "nameAlg": ALG.SHA256, "objectAttributes": int(attributes), "authPolicy": b"",
        "parameters": {"symmetric": {"algorithm": ALG.NULL, "keyBits": None, "mode": None},
                       "scheme": {"scheme": ALG.ECDSA, "details": {"hashAlg": ALG.SHA256}},
                       "curveID": ECC_CURVE.BN_P256, "kdf": {"scheme": ALG.NULL, "details": None}},
        "unique": {"x": b"", "y": b""}})
    key, public = client.create_primary(RH.OWNER, template)
    unique = TPMT_PUBLIC.parse(public).unique
    assert ecmath.curve(ECC_CURVE.BN_P256).on_curve((int.from_bytes(unique.x, "big"), int.from_bytes(unique.y, "big")))
    ticket = U16.build(0x8024) + U32.build(RH.NULL) + U16.build(0)
    signature = client.call(wire.build_command(CC.Sign, [key], wire.tpm2b(DIGEST) + U16.build(ALG.NULL) + ticket,
                                               wire.PASSWORD_SESSION)).parameters()
    good = client.transact(wire.build_command(CC.VerifySignature, [key], wire.tpm2b(DIGEST) + signature))
    bad = client.transact(wire.build_command(CC.VerifySignature, [key],
                                             wire.tpm2b(hashlib.sha256(b"x").digest()) + signature))
    assert wire.response_code(good) == RC.SUCCESS
    assert wire.response_code(bad) == RC.SIGNATURE | 0x40 | (2 << 8)
