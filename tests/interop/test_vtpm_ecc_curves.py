"""Every ECC curve libtpms 0.9 implements, on the vTPM and on swtpm: NIST P-192 and P-224 (through
OpenSSL, as P-256..P-521), BN P-256, BN P-638 and SM2 P-256 (vtpm.ecmath).

Deterministic answers (GetCapability(ECC_CURVES), TPM_PT_LOADED_CURVES, TestParms, ECC_Parameters) are
compared byte for byte; the random ones are checked across the two TPMs: a signature one makes, the
other verifies (VerifySignature of the public key loaded with LoadExternal), and an ECDH_KeyGen one
makes, the other's ECDH_ZGen must answer with the same shared point.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from support.peers import Pair, Peer

from vtpm import ecmath, wire
from vtpm.constants import ALG, CAP, CC, ECC_CURVE, PT, RC, RH, TPMA_OBJECT
from vtpm.marshal.objects import TPM2B_ECC_POINT, TPMT_PUBLIC
from vtpm.marshal.primitives import U16, U32

A = TPMA_OBJECT
NEW_CURVES = [ECC_CURVE.NIST_P192, ECC_CURVE.NIST_P224, ECC_CURVE.BN_P256, ECC_CURVE.BN_P638, ECC_CURVE.SM2_P256]
# BN P-638 in Python takes about a second per scalar multiplication on a busy machine
CURVE_PARAMS = [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c == ECC_CURVE.BN_P638 else [])
                for c in NEW_CURVES]
SIGN = A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH | A.SIGN_ENCRYPT
DECRYPT = A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH | A.DECRYPT
STORAGE = A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH | A.RESTRICTED | A.DECRYPT
NULL_SYM = {"algorithm": ALG.NULL, "keyBits": None, "mode": None}


def ecc_template(curve: int, attributes: int, scheme: int = ALG.NULL, *, x: bytes = b"", y: bytes = b"",
                 symmetric: dict[str, Any] = NULL_SYM) -> bytes:
    details = {"hashAlg": ALG.SHA256} if scheme != ALG.NULL else None
    return TPMT_PUBLIC.build({
        "type": ALG.ECC, "nameAlg": ALG.SHA256, "objectAttributes": int(attributes), "authPolicy": b"",
        "parameters": {"symmetric": symmetric, "scheme": {"scheme": scheme, "details": details},
                       "curveID": curve, "kdf": {"scheme": ALG.NULL, "details": None}},
        "unique": {"x": x, "y": y},
    })


def public_of(template: bytes) -> Any:
    return TPMT_PUBLIC.parse(template)


def load_public(peer: Peer, public: bytes) -> int:
    """LoadExternal of a public area alone (NULL hierarchy)."""
    params = wire.tpm2b(b"") + wire.tpm2b(public) + U32.build(RH.NULL)
    (handle,), _, _ = peer.client.call(wire.build_command(CC.LoadExternal, params=params)).split(1)
    return handle


def sign(peer: Peer, key: int, digest: bytes, scheme: int = ALG.NULL) -> bytes:
    """Sign's TPMT_SIGNATURE (the key's scheme when ``scheme`` is NULL), with a NULL validation ticket."""
    in_scheme = U16.build(scheme) + (U16.build(ALG.SHA256) if scheme != ALG.NULL else b"")
    ticket = U16.build(0x8024) + U32.build(RH.NULL) + U16.build(0)
    params = wire.tpm2b(digest) + in_scheme + ticket
    return peer.client.call(wire.build_command(CC.Sign, [key], params, wire.PASSWORD_SESSION)).parameters()


def verify(peer: Peer, key: int, digest: bytes, signature: bytes) -> int:
    return wire.response_code(peer.transact(wire.build_command(CC.VerifySignature, [key],
                                                               wire.tpm2b(digest) + signature)))


def read_point(data: bytes) -> tuple[bytes, bytes]:
    """The TPM2B_ECC_POINT at the start of ``data``: its bytes, and what follows."""
    size = int.from_bytes(data[:2], "big")
    return data[: 2 + size], data[2 + size :]


def test_curves_and_loaded_curves_are_swtpms(pair: Pair) -> None:
    for prop, count in ((0, 64), (ECC_CURVE.NIST_P256, 2), (ECC_CURVE.BN_P256, 64)):
        command = wire.build_command(CC.GetCapability, params=U32.build(CAP.ECC_CURVES) + U32.build(prop)
                                     + U32.build(count))
        ours, ref = pair.both(command)
        assert ours == ref, (hex(prop), count)
    loaded = [peer.client.tpm_properties(PT.LOADED_CURVES)[PT.LOADED_CURVES] for peer in (pair.ours, pair.ref)]
    assert loaded[0] == loaded[1] == len(ecmath.CURVES) == 8


def test_ecc_parameters_of_every_curve_are_swtpms(pair: Pair) -> None:
    for curve in [*ecmath.CURVES, 0x0006, 0x0012, 0x0021]:
        ours, ref = pair.both(wire.build_command(CC.ECC_Parameters, params=U16.build(curve)))
        assert ours == ref, hex(curve)


def test_testparms_of_every_curve_are_swtpms(pair: Pair) -> None:
    for curve in [*ecmath.CURVES, 0x0006]:
        for scheme in (ALG.NULL, ALG.ECDSA, ALG.ECDH, ALG.SM2, ALG.ECSCHNORR, ALG.ECDAA):
            details = U16.build(ALG.SHA256) if scheme != ALG.NULL else b""
            if scheme == ALG.ECDAA:
                details += U16.build(7)  # TPMS_SCHEME_ECDAA's count (`tpm2 testparms ecc:ecdaa`)
            params = (U16.build(ALG.ECC) + U16.build(ALG.NULL) + U16.build(scheme) + details + U16.build(curve)
                      + U16.build(ALG.NULL))
            ours, ref = pair.both(wire.build_command(CC.TestParms, params=params))
            assert ours == ref, (hex(curve), hex(scheme))


@pytest.mark.parametrize("curve", CURVE_PARAMS)
def test_signatures_verify_on_the_other_tpm(pair: Pair, curve: int) -> None:
    """CreatePrimary (ECDSA, and SM2 on the SM2 curve), Sign on one TPM, VerifySignature on both."""
    digest = hashlib.sha256(b"signed on one TPM, verified on the other").digest()
    schemes = [ALG.ECDSA, ALG.SM2] if curve == ECC_CURVE.SM2_P256 else [ALG.ECDSA]
    for scheme in schemes:
        for signer, verifier in ((pair.ours, pair.ref), (pair.ref, pair.ours)):
            key, public = signer.client.create_primary(RH.OWNER, ecc_template(curve, SIGN, scheme))
            signature = sign(signer, key, digest)
            assert verify(signer, key, digest, signature) == RC.SUCCESS
            other = load_public(verifier, public)
            assert verify(verifier, other, digest, signature) == RC.SUCCESS, (signer.name, hex(curve))
            wrong = hashlib.sha256(b"another message").digest()
            assert verify(verifier, other, wrong, signature) != RC.SUCCESS
            for peer, handle in ((signer, key), (verifier, other)):
                peer.client.flush(handle)


@pytest.mark.parametrize("curve", CURVE_PARAMS)
def test_ecdh_keygen_on_one_tpm_matches_zgen_on_the_other(pair: Pair, curve: int) -> None:
    for holder, sender in ((pair.ours, pair.ref), (pair.ref, pair.ours)):
        key, public = holder.client.create_primary(RH.OWNER, ecc_template(curve, DECRYPT))
        outside = load_public(sender, public)
        z_point, rest = read_point(sender.client.call(wire.build_command(CC.ECDH_KeyGen, [outside])).parameters())
        ephemeral, _ = read_point(rest)
        zgen = holder.client.call(wire.build_command(CC.ECDH_ZGen, [key], ephemeral, wire.PASSWORD_SESSION))
        assert zgen.parameters() == z_point, (holder.name, hex(curve))
        c = ecmath.curve(curve)
        point = TPM2B_ECC_POINT.parse(z_point)
        assert len(point.x) == len(point.y) == c.size
        assert c.on_curve((int.from_bytes(point.x, "big"), int.from_bytes(point.y, "big")))
        holder.client.flush(key)
        sender.client.flush(outside)


@pytest.mark.parametrize("curve", CURVE_PARAMS)
def test_create_and_load_a_key_on_the_curve(pair: Pair, curve: int) -> None:
    """Create under an ECC P-256 storage primary, Load, sign on ours; the public area loads into swtpm
    and verifies the signature there; a template the TPMs refuse is refused alike."""
    aes = {"algorithm": ALG.AES, "keyBits": 128, "mode": ALG.CFB}
    parent, _ = pair.ours.client.create_primary(RH.OWNER, ecc_template(ECC_CURVE.NIST_P256, STORAGE, symmetric=aes))
    sensitive = wire.tpm2b(wire.tpm2b(b"") + wire.tpm2b(b""))
    params = sensitive + wire.tpm2b(ecc_template(curve, SIGN, ALG.ECDSA)) + wire.tpm2b(b"") + U32.build(0)
    out = pair.ours.client.call(wire.build_command(CC.Create, [parent], params, wire.PASSWORD_SESSION)).parameters()
    private, rest = out[: 2 + int.from_bytes(out[:2], "big")], out[2 + int.from_bytes(out[:2], "big") :]
    public = rest[2 : 2 + int.from_bytes(rest[:2], "big")]
    assert public_of(public).parameters.curveID == curve
    loaded = pair.ours.client.call(wire.build_command(CC.Load, [parent], private + wire.tpm2b(public),
                                                      wire.PASSWORD_SESSION))
    (key,), _, _ = loaded.split(1)
    digest = hashlib.sha256(b"a child key").digest()
    signature = sign(pair.ours, key, digest)
    other = load_public(pair.ref, public)
    assert verify(pair.ref, other, digest, signature) == RC.SUCCESS
    # a restricted signing key on the curve with an ECDSA scheme, and one with a symmetric algorithm
    for template in (ecc_template(curve, SIGN | A.RESTRICTED, ALG.ECDSA),
                     ecc_template(curve, SIGN, ALG.ECDSA, symmetric=aes)):
        command = wire.build_command(CC.CreatePrimary, [RH.OWNER],
                                     sensitive + wire.tpm2b(template) + wire.tpm2b(b"") + U32.build(0),
                                     wire.PASSWORD_SESSION)
        ours, ref = pair.both(command)
        assert wire.response_code(ours) == wire.response_code(ref), hex(curve)
        for peer, answer in ((pair.ours, ours), (pair.ref, ref)):
            if wire.response_code(answer) == RC.SUCCESS:
                peer.client.flush(int.from_bytes(answer[10:14], "big"))


@pytest.mark.parametrize("curve", [ECC_CURVE.NIST_P192, ECC_CURVE.BN_P256, ECC_CURVE.SM2_P256], ids=lambda c: c.name)
def test_load_external_refuses_a_point_off_the_curve_like_swtpm(pair: Pair, curve: int) -> None:
    c = ecmath.curve(curve)
    x, y = c.to_bytes(c.gx), c.to_bytes((c.gy + 1) % c.p)
    params = wire.tpm2b(b"") + wire.tpm2b(ecc_template(curve, SIGN, ALG.ECDSA, x=x, y=y)) + U32.build(RH.NULL)
    ours, ref = pair.both(wire.build_command(CC.LoadExternal, params=params))
    assert ours == ref
