"""The commands libtpms has that the vTPM gained: Commit, EC_Ephemeral, ZGen_2Phase, ECC_Parameters,
GetSessionAuditDigest, GetCommandAuditDigest, SetCommandCodeAuditStatus (with session and command
audit), PolicyAuthorizeNV, PolicyTemplate, PolicyPhysicalPresence, PP_Commands, Rewrap and
SetAlgorithmSet, and the ECDAA, EC-Schnorr and SM2 signatures.

Deterministic answers are compared byte for byte with swtpm; the randomized ones (commitments,
ephemeral keys, signatures) are checked with an independent computation: the other party of a
key exchange, a verifier of the signature, a key whose private part the test chose.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from support.tpm_helpers import started_client
from support.peers import Pair
from cryptography.hazmat.primitives.asymmetric import ec

from vtpm import ecmath, wire
from vtpm.client import TpmClient
from vtpm.constants import ALG, CAP, CC, ECC_CURVE, PT, RC, RH, ST, TPMA_NV, TPMA_OBJECT, TPMA_SESSION
from vtpm.engine import Tpm
from vtpm.marshal.objects import TPM2B_ECC_POINT, TPMS_ATTEST, TPMT_PUBLIC, TPMT_SENSITIVE, TPMT_SIGNATURE
from vtpm.marshal.primitives import U16, U32

A = TPMA_OBJECT
P256 = ecmath.curve(ECC_CURVE.NIST_P256)
RC_P = 0x40


def rc_param(rc: int, n: int) -> int:
    return rc | RC_P | (n << 8)


def rc_handle(rc: int, n: int) -> int:
    return rc | (n << 8)


def rc_session(rc: int, n: int) -> int:
    return rc | 0x800 | (n << 8)


# ----------------------------------------------------------------------------- building commands


def ecc_public(scheme: int, attributes: int, *, scheme_hash: int = ALG.SHA256, count: int = 0,
               point: tuple[int, int] | None = None, symmetric: bool = False, policy: bytes = b"") -> bytes:
    details: Any = None
    if scheme == ALG.ECDAA:
        details = {"hashAlg": scheme_hash, "count": count}
    elif scheme != ALG.NULL:
        details = {"hashAlg": scheme_hash}
    sym = ({"algorithm": ALG.AES, "keyBits": 128, "mode": ALG.CFB} if symmetric
           else {"algorithm": ALG.NULL, "keyBits": None, "mode": None})
    x, y = (P256.to_bytes(point[0]), P256.to_bytes(point[1])) if point else (b"", b"")
    return TPMT_PUBLIC.build({
        "type": ALG.ECC, "nameAlg": ALG.SHA256, "objectAttributes": int(attributes), "authPolicy": policy,
        "parameters": {"symmetric": sym, "scheme": {"scheme": scheme, "details": details},
                       "curveID": ECC_CURVE.NIST_P256, "kdf": {"scheme": ALG.NULL, "details": None}},
        "unique": {"x": x, "y": y},
    })


def ecc_sensitive(d: int) -> bytes:
    return TPMT_SENSITIVE.build({"sensitiveType": ALG.ECC, "authValue": b"", "seedValue": b"",
                                 "sensitive": P256.to_bytes(d)})


STORAGE = A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH | A.RESTRICTED | A.DECRYPT


def point_param(point: tuple[int, int] | None) -> bytes:
    if point is None:
        return TPM2B_ECC_POINT.build({"x": b"", "y": b""})
    return TPM2B_ECC_POINT.build(P256.point_bytes(point))


def read_point(data: bytes, offset: int = 0) -> tuple[tuple[int, int] | None, int]:
    size = int.from_bytes(data[offset : offset + 2], "big")
    body = data[offset + 2 : offset + 2 + size]
    xs = int.from_bytes(body[:2], "big")
    x = body[2 : 2 + xs]
    ys = int.from_bytes(body[2 + xs : 4 + xs], "big")
    y = body[4 + xs : 4 + xs + ys]
    point = (int.from_bytes(x, "big"), int.from_bytes(y, "big")) if x else None
    return point, offset + 2 + size


def load_external(client: TpmClient, public: bytes, private: bytes | None = None) -> int:
    params = wire.tpm2b(private or b"") + wire.tpm2b(public) + U32.build(RH.NULL)
    (handle,), _, _ = client.call(wire.build_command(CC.LoadExternal, params=params)).split(1)
    return handle


def create_primary(client: TpmClient, public: bytes, hierarchy: int = RH.OWNER) -> int:
    return client.create_primary(hierarchy, public)[0]


def create_loaded_child(client: TpmClient, parent: int, public: bytes) -> tuple[int, bytes, bytes]:
    """Create + Load; (handle, TPM2B_PRIVATE, TPMT_PUBLIC)."""
    params = (wire.tpm2b(wire.tpm2b(b"") + wire.tpm2b(b"")) + wire.tpm2b(public) + wire.tpm2b(b"")
              + U32.build(0))
    out = client.call(wire.build_command(CC.Create, [parent], params, wire.PASSWORD_SESSION)).parameters()
    private_size = int.from_bytes(out[:2], "big")
    private = out[: 2 + private_size]
    public_size = int.from_bytes(out[2 + private_size : 4 + private_size], "big")
    out_public = out[4 + private_size : 4 + private_size + public_size]
    response = client.call(wire.build_command(CC.Load, [parent], private + wire.tpm2b(out_public),
                                              wire.PASSWORD_SESSION))
    (handle,), _, _ = response.split(1)
    return handle, private, out_public


def ec_ephemeral(client: TpmClient) -> tuple[tuple[int, int], int]:
    out = client.call(wire.build_command(CC.EC_Ephemeral, params=U16.build(ECC_CURVE.NIST_P256))).parameters()
    point, end = read_point(out)
    assert point is not None
    return point, int.from_bytes(out[end : end + 2], "big")


def commit_params(p1: tuple[int, int] | None = None, s2: bytes = b"", y2: int | None = None) -> bytes:
    return point_param(p1) + wire.tpm2b(s2) + wire.tpm2b(P256.to_bytes(y2) if y2 is not None else b"")


def commit(client: TpmClient, key: int, **kwargs: Any) -> tuple[Any, Any, Any, int]:
    out = client.call(wire.build_command(CC.Commit, [key], commit_params(**kwargs),
                                         wire.PASSWORD_SESSION)).parameters()
    k, end = read_point(out)
    l_point, end = read_point(out, end)
    e, end = read_point(out, end)
    return k, l_point, e, int.from_bytes(out[end : end + 2], "big")


def sign_params(digest: bytes, scheme: int, scheme_hash: int = ALG.SHA256, count: int | None = None) -> bytes:
    scheme_bytes = U16.build(scheme)
    if scheme != ALG.NULL:
        scheme_bytes += U16.build(scheme_hash) + (U16.build(count) if count is not None else b"")
    return wire.tpm2b(digest) + scheme_bytes + U16.build(ST.HASHCHECK) + U32.build(RH.NULL) + wire.tpm2b(b"")


def sign(client: TpmClient, key: int, digest: bytes, scheme: int, count: int | None = None) -> Any:
    out = client.call(wire.build_command(CC.Sign, [key], sign_params(digest, scheme, count=count),
                                         wire.PASSWORD_SESSION)).parameters()
    return TPMT_SIGNATURE.parse(out)


def zgen(client: TpmClient, key: int, qs_b: Any, qe_b: Any, scheme: int, counter: int) -> bytes:
    params = point_param(qs_b) + point_param(qe_b) + U16.build(scheme) + U16.build(counter)
    return wire.build_command(CC.ZGen_2Phase, [key], params, wire.PASSWORD_SESSION)


@pytest.fixture
def client() -> TpmClient:
    return started_client()


rc = wire.response_code


# ----------------------------------------------------------------------------- EC_Ephemeral and Commit


def test_ec_ephemeral_returns_points_on_the_curve_and_counts(client: TpmClient) -> None:
    counters = []
    for _ in range(3):
        point, counter = ec_ephemeral(client)
        assert P256.on_curve(point)
        counters.append(counter)
    assert counters == [0, 1, 2]
    bad = client.transact(wire.build_command(CC.EC_Ephemeral, params=U16.build(0x0099)))
    assert rc(bad) == rc_param(RC.CURVE, 1)


def test_commit_then_ecdaa_sign_verifies_with_the_commitment(client: TpmClient) -> None:
    """[s]G = E + [T]Q with T = H(nonceK || digest): the ECDAA equation, checked outside the TPM; and
    with P1 and (s2, y2): K = [d]P2, L = [r]P2, E = [r]P1 for the r the signature reveals (d is ours)."""
    d = secrets.randbelow(P256.n - 1) + 1
    q = P256.multiply(d)
    key = load_external(client, ecc_public(ALG.ECDAA, A.USER_WITH_AUTH | A.SIGN_ENCRYPT, point=q), ecc_sensitive(d))

    k, l_point, e, counter = commit(client, key)
    assert k is None and l_point is None and P256.on_curve(e)
    digest = hashlib.sha256(b"anonymous").digest()
    sig = sign(client, key, digest, ALG.ECDAA, count=counter)
    assert sig.sigAlg == ALG.ECDAA and sig.signature.hash == ALG.SHA256
    nonce_k, s = sig.signature.signatureR, int.from_bytes(sig.signature.signatureS, "big")
    t = int.from_bytes(hashlib.sha256(nonce_k + digest).digest(), "big") % P256.n
    assert P256.multiply(s) == P256.add(e, P256.multiply(t, q))
    r = (s - t * d) % P256.n
    assert P256.multiply(r) == e

    # with P1 = [m]G and P2 = (H(s2) mod p, y2)
    m = secrets.randbelow(P256.n - 1) + 1
    p1 = P256.multiply(m)
    s2, p2 = _point_from_s2(P256)
    k, l_point, e, counter = commit(client, key, p1=p1, s2=s2, y2=p2[1])
    assert k == P256.multiply(d, p2)
    sig = sign(client, key, digest, ALG.ECDAA, count=counter)
    nonce_k, s = sig.signature.signatureR, int.from_bytes(sig.signature.signatureS, "big")
    t = int.from_bytes(hashlib.sha256(nonce_k + digest).digest(), "big") % P256.n
    r = (s - t * d) % P256.n
    assert l_point == P256.multiply(r, p2) and e == P256.multiply(r, p1)


def _point_from_s2(curve: ecmath.Curve) -> tuple[bytes, tuple[int, int]]:
    """An s2 whose H(s2) mod p is the x of a curve point (p = 3 mod 4: square roots are a power)."""
    while True:
        s2 = secrets.token_bytes(16)
        x = int.from_bytes(hashlib.sha256(s2).digest(), "big") % curve.p
        rhs = (x ** 3 + curve.a * x + curve.b) % curve.p
        y = pow(rhs, (curve.p + 1) // 4, curve.p)
        if y * y % curve.p == rhs:
            return s2, (x, y)


def test_a_commitment_signs_once(client: TpmClient) -> None:
    key = create_primary(client, ecc_public(ALG.ECDAA, A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN
                                            | A.USER_WITH_AUTH | A.SIGN_ENCRYPT))
    _, _, _, counter = commit(client, key)
    digest = bytes(32)
    sign(client, key, digest, ALG.ECDAA, count=counter)
    again = client.transact(wire.build_command(CC.Sign, [key], sign_params(digest, ALG.ECDAA, count=counter),
                                               wire.PASSWORD_SESSION))
    assert rc(again) == RC.VALUE
    never = client.transact(wire.build_command(CC.Sign, [key], sign_params(digest, ALG.ECDAA, count=77),
                                               wire.PASSWORD_SESSION))
    assert rc(never) == RC.VALUE
    no_count = client.transact(wire.build_command(CC.Sign, [key], sign_params(digest, ALG.NULL),
                                                  wire.PASSWORD_SESSION))
    assert rc(no_count) == rc_param(RC.SCHEME, 2)  # an ECDAA key needs the caller's commit count


def test_commitments_end_at_tpm_reset() -> None:
    tpm = Tpm()
    tpm.execute(0, wire.STARTUP_CLEAR)
    client = TpmClient(tpm)
    key_public = ecc_public(ALG.ECDH, A.USER_WITH_AUTH | A.DECRYPT | A.SENSITIVE_DATA_ORIGIN)
    _, counter = ec_ephemeral(client)
    tpm.execute(0, wire.SHUTDOWN_CLEAR)
    tpm.power_cycle()
    tpm.execute(0, wire.STARTUP_CLEAR)
    key = create_primary(client, key_public)
    q = P256.multiply(5)
    assert rc(client.transact(zgen(client, key, q, q, ALG.ECDH, counter))) == rc_param(RC.VALUE, 4)
    assert ec_ephemeral(client)[1] == 0


# ----------------------------------------------------------------------------- ZGen_2Phase


@pytest.mark.parametrize("scheme", [ALG.ECDH, ALG.ECMQV, ALG.SM2])
def test_zgen_2phase_agrees_with_the_other_party(client: TpmClient, scheme: int) -> None:
    """Party A is the TPM (static key dsA, ephemeral r from EC_Ephemeral); party B is this test."""
    ds_a = secrets.randbelow(P256.n - 1) + 1
    qs_a = P256.multiply(ds_a)
    key = load_external(client, ecc_public(ALG.NULL, A.USER_WITH_AUTH | A.DECRYPT, point=qs_a), ecc_sensitive(ds_a))
    qe_a, counter = ec_ephemeral(client)
    ds_b, de_b = (secrets.randbelow(P256.n - 1) + 1 for _ in range(2))
    qs_b, qe_b = P256.multiply(ds_b), P256.multiply(de_b)

    out = client.call(zgen(client, key, qs_b, qe_b, scheme, counter)).parameters()
    z1, end = read_point(out)
    z2, _ = read_point(out, end)
    n = P256.n
    if scheme == ALG.ECDH:
        assert z1 == P256.multiply(ds_b, qs_a) and z2 == P256.multiply(de_b, qe_a)
        # and with `cryptography`'s ECDH for the static pair
        b_key = ec.derive_private_key(ds_b, ec.SECP256R1())
        a_pub = ec.EllipticCurvePublicNumbers(*qs_a, ec.SECP256R1()).public_key()
        assert b_key.exchange(ec.ECDH(), a_pub) == P256.to_bytes(z1[0])
    elif scheme == ALG.ECMQV:  # SP 800-56A 5.7.2.3 from B's side
        implicit_b = (de_b + ecmath.avf(qe_b[0], n) * ds_b) % n
        expected = P256.multiply(implicit_b, P256.add(qe_a, P256.multiply(ecmath.avf(qe_a[0], n), qs_a)))
        assert z1 == expected and z2 is None
    else:  # SM2 key exchange: U computed by B equals V computed by A
        t_b = (ds_b + ecmath.avf_sm2(qe_b[0], n) * de_b) % n
        expected = P256.multiply(t_b, P256.add(qs_a, P256.multiply(ecmath.avf_sm2(qe_a[0], n), qe_a)))
        assert z1 == expected and z2 is None
    # the commitment is used up
    assert rc(client.transact(zgen(client, key, qs_b, qe_b, scheme, counter))) == rc_param(RC.VALUE, 4)


def test_zgen_2phase_refusals(client: TpmClient) -> None:
    key = load_external(client, ecc_public(ALG.ECDH, A.USER_WITH_AUTH | A.DECRYPT, point=P256.multiply(3)),
                        ecc_sensitive(3))
    _, counter = ec_ephemeral(client)
    good = P256.multiply(7)
    off_curve = (good[0], (good[1] + 1) % P256.p)
    assert rc(client.transact(zgen(client, key, off_curve, good, ALG.ECDH, counter))) == rc_param(RC.ECC_POINT, 1)
    assert rc(client.transact(zgen(client, key, good, off_curve, ALG.ECDH, counter))) == rc_param(RC.ECC_POINT, 2)
    assert rc(client.transact(zgen(client, key, good, good, ALG.ECMQV, counter))) == rc_param(RC.SCHEME, 3)
    assert rc(client.transact(zgen(client, key, good, good, ALG.ECDSA, counter))) == rc_param(RC.SCHEME, 3)
    signer = load_external(client, ecc_public(ALG.ECDSA, A.USER_WITH_AUTH | A.SIGN_ENCRYPT, point=good),
                           ecc_sensitive(7))
    assert rc(client.transact(zgen(client, signer, good, good, ALG.ECDH, counter))) == rc_handle(RC.ATTRIBUTES, 1)


# ----------------------------------------------------------------------------- EC-Schnorr and SM2 signatures


@pytest.mark.parametrize("scheme", [ALG.ECSCHNORR, ALG.SM2])
def test_schnorr_and_sm2_signatures_verify(client: TpmClient, scheme: int) -> None:
    d = secrets.randbelow(P256.n - 1) + 1
    q = P256.multiply(d)
    key = load_external(client, ecc_public(scheme, A.USER_WITH_AUTH | A.SIGN_ENCRYPT, point=q), ecc_sensitive(d))
    digest = hashlib.sha256(b"message").digest()
    sig = sign(client, key, digest, ALG.NULL)
    assert sig.sigAlg == scheme
    r, s = int.from_bytes(sig.signature.signatureR, "big"), int.from_bytes(sig.signature.signatureS, "big")
    n = P256.n
    if scheme == ALG.ECSCHNORR:  # R = [s]G - [r]Q, r = H(xR || digest)
        point = P256.add(P256.multiply(s), P256.multiply(n - r, q))
        assert int.from_bytes(hashlib.sha256(P256.to_bytes(point[0]) + digest).digest(), "big") == r
    else:  # GB/T 32918.2 7.1: t = r + s, (x1, y1) = [s]G + [t]Q, r = e + x1
        point = P256.add(P256.multiply(s), P256.multiply((r + s) % n, q))
        assert (int.from_bytes(digest, "big") + point[0]) % n == r
    verify = wire.build_command(CC.VerifySignature, [key], wire.tpm2b(digest) + TPMT_SIGNATURE.build(sig))
    assert client.call(verify).ok
    sig.signature.signatureS = P256.to_bytes((s + 1) % n)
    bad = wire.build_command(CC.VerifySignature, [key], wire.tpm2b(digest) + TPMT_SIGNATURE.build(sig))
    assert rc(client.transact(bad)) == rc_param(RC.SIGNATURE, 2)


# ----------------------------------------------------------------------------- Rewrap


def test_rewrap_moves_a_duplicate_to_a_new_parent(client: TpmClient) -> None:
    storage = ecc_public(ALG.NULL, STORAGE, symmetric=True)
    old_parent = create_primary(client, storage)
    # a second parent: the same template in the endorsement hierarchy is another key
    new_parent = create_primary(client, storage, RH.ENDORSEMENT)
    policy = hashlib.sha256(bytes(32) + CC.PolicyCommandCode.to_bytes(4, "big")
                            + CC.Duplicate.to_bytes(4, "big")).digest()
    child_public = ecc_public(ALG.ECDSA, A.USER_WITH_AUTH | A.SIGN_ENCRYPT | A.SENSITIVE_DATA_ORIGIN,
                              policy=policy)
    child, _, child_pub = create_loaded_child(client, old_parent, child_public)
    name = ALG.SHA256.to_bytes(2, "big") + hashlib.sha256(child_pub).digest()

    session = _policy_session(client)
    client.call(wire.build_command(CC.PolicyCommandCode, [session], U32.build(CC.Duplicate)))
    dup = client.call(wire.build_command(CC.Duplicate, [child, old_parent], wire.tpm2b(b"") + U16.build(ALG.NULL),
                                         wire.auth_entry(session))).parameters()
    blob, seed = _two_tpm2b(dup[2:])  # encryptionKeyOut is empty

    out = client.call(wire.build_command(CC.Rewrap, [old_parent, new_parent],
                                         wire.tpm2b(blob) + wire.tpm2b(name) + wire.tpm2b(seed),
                                         wire.PASSWORD_SESSION)).parameters()
    new_blob, new_seed = _two_tpm2b(out)
    assert new_blob != blob and new_seed
    client.flush(child)  # three object slots
    imported = client.call(wire.build_command(
        CC.Import, [new_parent], wire.tpm2b(b"") + wire.tpm2b(child_pub) + wire.tpm2b(new_blob)
        + wire.tpm2b(new_seed) + U16.build(ALG.NULL), wire.PASSWORD_SESSION)).parameters()
    loaded = client.call(wire.build_command(CC.Load, [new_parent], imported + wire.tpm2b(child_pub),
                                            wire.PASSWORD_SESSION))
    assert loaded.split(1)[1][2:] == name  # the same object, now under the new parent
    # the old parent cannot open the new wrapper; a seed without an old parent is refused
    wrong = wire.build_command(CC.Rewrap, [old_parent, new_parent],
                               wire.tpm2b(new_blob) + wire.tpm2b(name) + wire.tpm2b(new_seed), wire.PASSWORD_SESSION)
    assert rc(client.transact(wrong)) in (rc_param(RC.VALUE, 3), rc_param(RC.INTEGRITY, 1))
    null_old = wire.build_command(CC.Rewrap, [RH.NULL, new_parent],
                                  wire.tpm2b(blob) + wire.tpm2b(name) + wire.tpm2b(seed), wire.PASSWORD_SESSION)
    assert rc(client.transact(null_old)) == rc_handle(RC.HANDLE, 1)


def _two_tpm2b(data: bytes) -> tuple[bytes, bytes]:
    a = int.from_bytes(data[:2], "big")
    first = data[2 : 2 + a]
    b = int.from_bytes(data[2 + a : 4 + a], "big")
    return first, data[4 + a : 4 + a + b]


def _policy_session(client: TpmClient, kind: int = 1) -> int:
    params = wire.tpm2b(secrets.token_bytes(32)) + wire.tpm2b(b"") + bytes([kind]) + U16.build(ALG.NULL) \
        + U16.build(ALG.SHA256)
    (handle,), _, _ = client.call(wire.build_command(CC.StartAuthSession, [RH.NULL, RH.NULL], params)).split(1)
    return handle


def _hmac_session(client: TpmClient) -> int:
    return _policy_session(client, 0)


# ----------------------------------------------------------------------------- policies


def test_policy_template_limits_what_create_makes(client: TpmClient) -> None:
    template = ecc_public(ALG.ECDSA, A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH
                          | A.SIGN_ENCRYPT)
    template_hash = hashlib.sha256(template).digest()
    policy = hashlib.sha256(bytes(32) + CC.PolicyTemplate.to_bytes(4, "big") + template_hash).digest()
    client.call(wire.build_command(CC.SetPrimaryPolicy, [RH.OWNER], wire.tpm2b(policy) + U16.build(ALG.SHA256),
                                   wire.PASSWORD_SESSION))

    def create_primary_with(public: bytes) -> bytes:
        session = _policy_session(client)
        client.call(wire.build_command(CC.PolicyTemplate, [session], wire.tpm2b(template_hash)))
        params = wire.tpm2b(wire.tpm2b(b"") + wire.tpm2b(b"")) + wire.tpm2b(public) + wire.tpm2b(b"") + U32.build(0)
        return client.transact(wire.build_command(CC.CreatePrimary, [RH.OWNER], params,
                                                  wire.auth_entry(session, attributes=0)))

    assert rc(create_primary_with(template)) == RC.SUCCESS
    other = ecc_public(ALG.ECDSA, A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH
                       | A.SIGN_ENCRYPT, scheme_hash=ALG.SHA384)
    assert rc(create_primary_with(other)) == rc_session(RC.POLICY_FAIL, 1)


def test_policy_physical_presence_needs_presence_a_vtpm_never_has(client: TpmClient) -> None:
    policy = hashlib.sha256(bytes(32) + CC.PolicyPhysicalPresence.to_bytes(4, "big")).digest()
    client.call(wire.build_command(CC.SetPrimaryPolicy, [RH.OWNER], wire.tpm2b(policy) + U16.build(ALG.SHA256),
                                   wire.PASSWORD_SESSION))
    session = _policy_session(client)
    client.call(wire.build_command(CC.PolicyPhysicalPresence, [session]))
    digest = client.call(wire.build_command(CC.PolicyGetDigest, [session])).parameters()
    assert digest[2:] == policy
    answer = client.transact(wire.build_command(CC.ClockRateAdjust, [RH.OWNER], b"\x00",
                                                wire.auth_entry(session, attributes=0)))
    assert rc(answer) == rc_session(RC.PP, 1)


def test_pp_commands_and_set_algorithm_set(client: TpmClient) -> None:
    more, listed = client.get_capability(CAP.PP_COMMANDS, 0, 10)
    assert listed == U32.build(1) + U32.build(CC.PP_Commands)
    pp = wire.build_command(CC.PP_Commands, [RH.PLATFORM], U32.build(1) + U32.build(CC.Clear) + U32.build(0),
                            wire.PASSWORD_SESSION)
    assert rc(client.transact(pp)) == rc_session(RC.PP, 1)
    client.call(wire.build_command(CC.SetAlgorithmSet, [RH.PLATFORM], U32.build(5), wire.PASSWORD_SESSION))
    assert client.tpm_properties(PT.ALGORITHM_SET) == {PT.ALGORITHM_SET: 5}


def test_policy_authorize_nv_checks_the_policy_in_the_index(client: TpmClient) -> None:
    index = 0x01C07F01
    attributes = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA
    client.nv_define(index, attributes, 34, auth_handle=RH.OWNER)
    approved = hashlib.sha256(bytes(32) + CC.PolicyAuthValue.to_bytes(4, "big")).digest()
    client.nv_write(index, ALG.SHA256.to_bytes(2, "big") + approved, RH.OWNER)
    name = client.nv_public(index).name  # (written: TPMA_NV_WRITTEN is part of the Name)

    session = _policy_session(client)
    client.call(wire.build_command(CC.PolicyAuthValue, [session]))
    client.call(wire.build_command(CC.PolicyAuthorizeNV, [RH.OWNER, index, session], sessions=wire.PASSWORD_SESSION))
    digest = client.call(wire.build_command(CC.PolicyGetDigest, [session])).parameters()[2:]
    assert digest == hashlib.sha256(bytes(32) + CC.PolicyAuthorizeNV.to_bytes(4, "big") + name).digest()
    other = _policy_session(client)
    refused = client.transact(wire.build_command(CC.PolicyAuthorizeNV, [RH.OWNER, index, other],
                                                 sessions=wire.PASSWORD_SESSION))
    assert rc(refused) == RC.VALUE  # the session's policy is not the approved one


# ----------------------------------------------------------------------------- audit


@dataclass
class Audited:
    cp: bytes
    rp: bytes


def _audit_steps(client: TpmClient, session: int, index: int) -> list[Audited]:
    """Two audited NV_ReadPublic; the cpHash and rpHash of each, computed here."""
    steps = []
    name = client.nv_public(index).name
    for _ in range(2):
        response = client.call(wire.build_command(
            CC.NV_ReadPublic, [index],
            sessions=wire.auth_entry(session, bytes(16), TPMA_SESSION.AUDIT | TPMA_SESSION.CONTINUE_SESSION)))
        assert response.split()[2][-3] & TPMA_SESSION.AUDIT_EXCLUSIVE  # no other command came between
        params = response.parameters()
        steps.append(Audited(hashlib.sha256(CC.NV_ReadPublic.to_bytes(4, "big") + name).digest(),
                             hashlib.sha256(bytes(4) + CC.NV_ReadPublic.to_bytes(4, "big") + params).digest()))
    return steps


def test_session_audit_digest_is_the_chain_of_cp_and_rp_hashes(client: TpmClient) -> None:
    index = 0x01000123
    client.nv_define(index, TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, 8, auth_handle=RH.OWNER)
    session = _hmac_session(client)
    steps = _audit_steps(client, session, index)
    expected = bytes(32)
    for step in steps:
        expected = hashlib.sha256(expected + step.cp + step.rp).digest()
    report = client.call(wire.build_command(CC.GetSessionAuditDigest, [RH.ENDORSEMENT, RH.NULL, session],
                                            wire.tpm2b(b"x") + U16.build(ALG.NULL),
                                            [wire.PASSWORD_SESSION, wire.PASSWORD_SESSION])).parameters()
    attest = TPMS_ATTEST.parse(report[2 : 2 + int.from_bytes(report[:2], "big")])
    assert attest.type == ST.ATTEST_SESSION_AUDIT and attest.extraData == b"x"
    assert attest.attested.sessionDigest == expected and attest.attested.exclusiveSession == 1
    assert attest.qualifiedSigner == RH.NULL.to_bytes(4, "big")
    # a command without the session ends exclusivity; a saved and loaded session keeps its digest
    client.get_random(4)
    saved = client.call(wire.build_command(CC.ContextSave, [session])).parameters()
    (session,), _, _ = client.call(wire.build_command(CC.ContextLoad, params=saved)).split(1)
    report = client.call(wire.build_command(CC.GetSessionAuditDigest, [RH.ENDORSEMENT, RH.NULL, session],
                                            wire.tpm2b(b"") + U16.build(ALG.NULL),
                                            [wire.PASSWORD_SESSION, wire.PASSWORD_SESSION])).parameters()
    attest = TPMS_ATTEST.parse(report[2 : 2 + int.from_bytes(report[:2], "big")])
    assert attest.attested.sessionDigest == expected and attest.attested.exclusiveSession == 0
    exclusive = client.transact(wire.build_command(
        CC.NV_ReadPublic, [index], sessions=wire.auth_entry(
            session, bytes(16), TPMA_SESSION.AUDIT | TPMA_SESSION.AUDIT_EXCLUSIVE | TPMA_SESSION.CONTINUE_SESSION)))
    assert rc(exclusive) == RC.EXCLUSIVE


def test_audit_attribute_rules(client: TpmClient) -> None:
    index = 0x01000124
    client.nv_define(index, TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, 8, auth_handle=RH.OWNER)
    audit = TPMA_SESSION.AUDIT | TPMA_SESSION.CONTINUE_SESSION
    a, b, policy = _hmac_session(client), _hmac_session(client), _policy_session(client)
    two = wire.build_command(CC.NV_ReadPublic, [index], sessions=[wire.auth_entry(a, bytes(16), audit),
                                                                   wire.auth_entry(b, bytes(16), audit)])
    assert rc(client.transact(two)) == rc_session(RC.ATTRIBUTES, 2)
    on_policy = wire.build_command(CC.NV_ReadPublic, [index], sessions=wire.auth_entry(policy, bytes(16), audit))
    assert rc(client.transact(on_policy)) == rc_session(RC.ATTRIBUTES, 1)
    password = wire.build_command(CC.NV_ReadPublic, [index], sessions=wire.password_session(attributes=audit))
    assert rc(client.transact(password)) == rc_session(RC.HANDLE, 1)  # a password session authorizes nothing here
    bare = wire.build_command(CC.NV_ReadPublic, [index], sessions=wire.auth_entry(a, bytes(16), 1))
    assert rc(client.transact(bare)) == rc_session(RC.ATTRIBUTES, 1)  # a session for no purpose
    not_audit = client.transact(wire.build_command(CC.GetSessionAuditDigest, [RH.ENDORSEMENT, RH.NULL, b],
                                                   wire.tpm2b(b"") + U16.build(ALG.NULL),
                                                   [wire.PASSWORD_SESSION, wire.PASSWORD_SESSION]))
    assert rc(not_audit) == rc_handle(RC.TYPE, 3)


def _set_audit(client: TpmClient, alg: int, set_list: list[int] = (), clear_list: list[int] = ()) -> bytes:
    params = U16.build(alg) + U32.build(len(set_list)) + b"".join(U32.build(c) for c in set_list) \
        + U32.build(len(clear_list)) + b"".join(U32.build(c) for c in clear_list)
    return client.transact(wire.build_command(CC.SetCommandCodeAuditStatus, [RH.OWNER], params,
                                              wire.PASSWORD_SESSION))


def test_command_audit_digest_counter_and_list(client: TpmClient) -> None:
    _, listed = client.get_capability(CAP.AUDIT_COMMANDS, 0, 10)
    assert listed == U32.build(1) + U32.build(CC.SetCommandCodeAuditStatus)
    assert rc(_set_audit(client, ALG.SHA256)) == RC.SUCCESS  # a new hash: this command is not audited
    set_cmd = _set_audit_bytes(ALG.NULL, [CC.GetRandom, CC.Shutdown])
    assert rc(client.transact(set_cmd)) == RC.SUCCESS  # audited: a new digest, counter 1
    _, listed = client.get_capability(CAP.AUDIT_COMMANDS, 0, 10)
    assert listed == U32.build(2) + U32.build(CC.SetCommandCodeAuditStatus) + U32.build(CC.GetRandom)
    random_response = client.call(wire.get_random(8)).parameters()

    expected = bytes(32)
    set_params = set_cmd[10 + 4 + 4 + 9:]  # after the header, the handle and a 9-byte password session
    set_cp = hashlib.sha256(CC.SetCommandCodeAuditStatus.to_bytes(4, "big") + RH.OWNER.to_bytes(4, "big")
                            + set_params).digest()
    set_rp = hashlib.sha256(bytes(4) + CC.SetCommandCodeAuditStatus.to_bytes(4, "big")).digest()
    rnd_cp = hashlib.sha256(CC.GetRandom.to_bytes(4, "big") + U16.build(8)).digest()
    rnd_rp = hashlib.sha256(bytes(4) + CC.GetRandom.to_bytes(4, "big") + random_response).digest()
    for cp, rp in ((set_cp, set_rp), (rnd_cp, rnd_rp)):
        expected = hashlib.sha256(expected + cp + rp).digest()
    report = client.call(wire.build_command(CC.GetCommandAuditDigest, [RH.ENDORSEMENT, RH.NULL],
                                            wire.tpm2b(b"") + U16.build(ALG.NULL),
                                            [wire.PASSWORD_SESSION, wire.PASSWORD_SESSION])).parameters()
    info = TPMS_ATTEST.parse(report[2 : 2 + int.from_bytes(report[:2], "big")]).attested
    assert info.auditCounter == 1 and info.digestAlg == ALG.SHA256 and info.auditDigest == expected
    assert info.commandDigest == hashlib.sha256(U32.build(CC.SetCommandCodeAuditStatus)
                                                + U32.build(CC.GetRandom)).digest()
    assert client.tpm_properties(PT.AUDIT_COUNTER_0, 2) == {PT.AUDIT_COUNTER_0: 0, PT.AUDIT_COUNTER_1: 1}
    assert rc(_set_audit(client, ALG.SHA384, [CC.GetRandom])) == rc_param(RC.VALUE, 1)
    assert rc(_set_audit(client, ALG.NULL, [], [CC.GetRandom, CC.SetCommandCodeAuditStatus])) == RC.SUCCESS
    _, listed = client.get_capability(CAP.AUDIT_COMMANDS, 0, 10)
    assert listed == U32.build(1) + U32.build(CC.SetCommandCodeAuditStatus)


def _set_audit_bytes(alg: int, set_list: list[int]) -> bytes:
    params = U16.build(alg) + U32.build(len(set_list)) + b"".join(U32.build(c) for c in set_list) + U32.build(0)
    return wire.build_command(CC.SetCommandCodeAuditStatus, [RH.OWNER], params, wire.PASSWORD_SESSION)


# ----------------------------------------------------------------------------- against swtpm


def _commands(peer: Any) -> dict[int, int]:
    out: dict[int, int] = {}
    start = 0
    while True:
        more, data = peer.client.get_capability(CAP.COMMANDS, start, 254)
        for i in range(int.from_bytes(data[:4], "big")):
            value = int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big")
            out[value & 0xFFFF] = value
        if not more:
            return out
        start = max(out) + 1


def test_every_command_swtpm_has_with_its_attributes(pair: Pair) -> None:
    ours, ref = _commands(pair.ours), _commands(pair.ref)
    missing = sorted(hex(code) for code in ref if code not in ours)
    assert not missing, f"commands swtpm has and the vTPM lacks: {missing}"
    different = {hex(code): (hex(ours[code]), hex(ref[code])) for code in ref if ours[code] != ref[code]}
    assert not different, f"TPMA_CC (ours, swtpm): {different}"
    assert pair.ours.client.tpm_properties(PT.TOTAL_COMMANDS)[PT.TOTAL_COMMANDS] == len(ours)


def test_ecc_parameters_are_swtpms(pair: Pair) -> None:
    for curve in (ECC_CURVE.NIST_P256, ECC_CURVE.NIST_P384, ECC_CURVE.NIST_P521, 0x0099, 0x0000):
        ours, ref = pair.both(wire.build_command(CC.ECC_Parameters, params=U16.build(curve)))
        assert ours == ref, hex(curve)


def _trial(p: Pair, steps: list[Any]) -> tuple[list[bytes], list[bytes]]:
    """Run the same steps in a trial session on both TPMs: each step builds a command from the handle."""
    answers: tuple[list[bytes], list[bytes]] = ([], [])
    for side, peer in enumerate((p.ours, p.ref)):
        session = _policy_session(peer.client, 3)
        for step in steps:
            answers[side].append(peer.transact(step(session)))
        answers[side].append(peer.transact(wire.build_command(CC.PolicyGetDigest, [session])))
        peer.transact(wire.flush_context(session))
    return answers


def test_policy_digests_and_refusals_are_swtpms(pair: Pair) -> None:
    index = 0x01000155
    for peer in (pair.ours, pair.ref):
        peer.client.nv_define(index, TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, 34, auth_handle=RH.OWNER)
    template = wire.tpm2b(bytes(range(32)))
    steps = [
        lambda s: wire.build_command(CC.PolicyPhysicalPresence, [s]),
        lambda s: wire.build_command(CC.PolicyTemplate, [s], template),
        lambda s: wire.build_command(CC.PolicyTemplate, [s], template),
        lambda s: wire.build_command(CC.PolicyTemplate, [s], wire.tpm2b(bytes(32))),
        lambda s: wire.build_command(CC.PolicyCpHash, [s], template),
        lambda s: wire.build_command(CC.PolicyNameHash, [s], template),
        lambda s: wire.build_command(CC.PolicyAuthorizeNV, [RH.OWNER, index, s], sessions=wire.PASSWORD_SESSION),
        lambda s: wire.build_command(CC.PolicyTemplate, [s], wire.tpm2b(bytes(20))),
    ]
    ours, ref = _trial(pair, steps)
    assert ours == ref
    assert [rc(r) for r in ours] == [0, 0, 0, rc_param(RC.VALUE, 1), RC.CPHASH, RC.CPHASH, 0,
                                     rc_param(RC.VALUE, 1), 0]
    # a real policy session reads the index: unwritten, then the wrong algorithm, then a match
    for peer in (pair.ours, pair.ref):
        peer.transact(wire.nv_write(index, ALG.SHA1.to_bytes(2, "big") + bytes(32), auth_handle=RH.OWNER))
    answers = []
    for peer in (pair.ours, pair.ref):
        session = _policy_session(peer.client)
        answers.append(peer.transact(wire.build_command(CC.PolicyAuthorizeNV, [RH.OWNER, index, session],
                                                        sessions=wire.PASSWORD_SESSION)))
    assert answers[0] == answers[1] and rc(answers[0]) == RC.HASH


def _audit_report(peer: Any, command: int, handles: list[int]) -> Any:
    response = peer.client.call(wire.build_command(command, handles, wire.tpm2b(b"") + U16.build(ALG.NULL),
                                                   [wire.PASSWORD_SESSION, wire.PASSWORD_SESSION]))
    params = response.parameters()
    return TPMS_ATTEST.parse(params[2 : 2 + int.from_bytes(params[:2], "big")]).attested


def test_audit_digests_are_swtpms(pair: Pair) -> None:
    index = 0x01000156
    reports = []
    for peer in (pair.ours, pair.ref):
        client = peer.client
        client.nv_define(index, TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, 8, auth_handle=RH.OWNER)
        session = _hmac_session(client)
        _audit_steps(client, session, index)
        session_info = _audit_report(peer, CC.GetSessionAuditDigest, [RH.ENDORSEMENT, RH.NULL, session])
        assert rc(_set_audit(client, ALG.SHA256)) == RC.SUCCESS
        assert rc(_set_audit(client, ALG.NULL, [CC.NV_ReadPublic, CC.Shutdown])) == RC.SUCCESS
        client.nv_public(index)
        client.nv_public(index)
        command_info = _audit_report(peer, CC.GetCommandAuditDigest, [RH.ENDORSEMENT, RH.NULL])
        _, audited = client.get_capability(CAP.AUDIT_COMMANDS, 0, 10)
        reports.append((session_info, command_info, audited))
    (s1, c1, a1), (s2, c2, a2) = reports
    assert s1.sessionDigest == s2.sessionDigest and s1.exclusiveSession == s2.exclusiveSession == 1
    assert (c1.auditCounter, c1.digestAlg, c1.auditDigest, c1.commandDigest) == \
        (c2.auditCounter, c2.digestAlg, c2.auditDigest, c2.commandDigest)
    assert a1 == a2


def test_refusals_are_swtpms(pair: Pair) -> None:
    """The same malformed or misdirected commands get the same answer from both TPMs."""
    answers: list[list[int]] = [[], []]
    for side, peer in enumerate((pair.ours, pair.ref)):
        client = peer.client
        ecdaa = create_primary(client, ecc_public(ALG.ECDAA, A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN
                                                  | A.USER_WITH_AUTH | A.SIGN_ENCRYPT))
        signer = create_primary(client, ecc_public(ALG.ECDSA, A.FIXED_TPM | A.FIXED_PARENT
                                                   | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH | A.SIGN_ENCRYPT),
                                RH.ENDORSEMENT)
        g = P256.g
        commands = [
            wire.build_command(CC.EC_Ephemeral, params=U16.build(0x0099)),
            wire.build_command(CC.Commit, [signer], commit_params(), wire.PASSWORD_SESSION),
            wire.build_command(CC.Commit, [ecdaa], point_param(None) + wire.tpm2b(b"s2") + wire.tpm2b(b""),
                               wire.PASSWORD_SESSION),
            wire.build_command(CC.Commit, [ecdaa], commit_params(p1=(g[0], g[1] ^ 1)), wire.PASSWORD_SESSION),
            wire.build_command(CC.ZGen_2Phase, [signer], point_param(g) + point_param(g) + U16.build(ALG.ECDH)
                               + U16.build(0), wire.PASSWORD_SESSION),
            wire.build_command(CC.PP_Commands, [RH.PLATFORM], U32.build(0) + U32.build(0), wire.PASSWORD_SESSION),
            wire.build_command(CC.Rewrap, [RH.NULL, RH.NULL], wire.tpm2b(b"blob") + wire.tpm2b(b"")
                               + wire.tpm2b(b"seed"), wire.PASSWORD_SESSION),
            wire.build_command(CC.Rewrap, [signer, RH.NULL], wire.tpm2b(b"blob") + wire.tpm2b(b"")
                               + wire.tpm2b(b"seed"), wire.PASSWORD_SESSION),
            _set_audit_bytes(ALG.SHA384, [CC.GetRandom]),
            wire.build_command(CC.GetCommandAuditDigest, [RH.ENDORSEMENT, ecdaa], wire.tpm2b(b"")
                               + U16.build(ALG.NULL), [wire.PASSWORD_SESSION, wire.PASSWORD_SESSION]),
        ]
        answers[side] = [rc(peer.transact(command)) for command in commands]
        answers[side].append(rc(peer.transact(wire.build_command(
            CC.PolicyTicket, [_policy_session(client, 3)], wire.tpm2b(bytes(8)) + wire.tpm2b(b"") + wire.tpm2b(b"")
            + wire.tpm2b(b"") + U16.build(ST.AUTH_SECRET) + U32.build(RH.OWNER) + wire.tpm2b(b"")))))
    assert answers[0] == answers[1]


# ----------------------------------------------------------------------------- CertifyX509


def _der(tag: int, value: bytes) -> bytes:
    n = len(value)
    size = bytes([n]) if n < 0x80 else (bytes([0x81, n]) if n < 0x100 else bytes([0x82]) + n.to_bytes(2, "big"))
    return bytes([tag]) + size + value


def _name(cn: str) -> bytes:
    attribute = _der(0x30, bytes.fromhex("0603550403") + _der(0x0C, cn.encode()))  # commonName, UTF8String
    return _der(0x30, _der(0x31, attribute))


def _partial(key_usage: bytes = b"\x03\x02\x07\x80", tpma: int | None = None, signature_alg: bytes = b"") -> bytes:
    """issuer, validity, subject and extensions (keyUsage digitalSignature; optionally TPMA_OBJECT)."""
    validity = _der(0x30, _der(0x17, b"250101000000Z") + _der(0x17, b"350101000000Z"))
    extensions = _der(0x30, bytes.fromhex("0603551d0f") + b"\x01\x01\xff" + _der(0x04, key_usage))
    if tpma is not None:
        extensions += _der(0x30, bytes.fromhex("06076781050a010101") + _der(0x04, _der(0x03, b"\x00"
                                                                                     + U32.build(tpma))))
    body = signature_alg + _name("issuer") + validity + _name("subject") + _der(0xA3, _der(0x30, extensions))
    return _der(0x30, body)


def _certify_x509(peer_or_client: Any, obj: int, signer: int, partial: bytes, scheme: int = ALG.NULL,
                  reserved: bytes = b"") -> bytes:
    scheme_bytes = U16.build(scheme) + (U16.build(ALG.SHA256) if scheme != ALG.NULL else b"")
    return peer_or_client.transact(wire.build_command(
        CC.CertifyX509, [obj, signer], wire.tpm2b(reserved) + scheme_bytes + wire.tpm2b(partial),
        [wire.PASSWORD_SESSION, wire.PASSWORD_SESSION]))


def _certificate(partial: bytes, answer: bytes) -> tuple[bytes, bytes, Any]:
    """The full certificate from the partial one and CertifyX509's answer; (certificate, TBS, signature)."""
    params = wire.parse_response(answer).parameters()
    added, rest = params[2 : 2 + int.from_bytes(params[:2], "big")], params[2 + int.from_bytes(params[:2], "big"):]
    tbs_digest = rest[2 : 2 + int.from_bytes(rest[:2], "big")]
    signature = TPMT_SIGNATURE.parse(rest[2 + len(tbs_digest):])

    def items(der: bytes) -> list[bytes]:  # the elements inside an outer SEQUENCE
        out, i = [], 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
        while i < len(der):
            n = der[i + 1]
            head = 2
            if n & 0x80:
                head += n & 0x7F
                n = int.from_bytes(der[i + 2 : i + head], "big")
            out.append(der[i : i + head + n])
            i += head + n
        return out

    version, serial, *alg, spki = items(added)
    given = items(partial)
    sig_alg = alg[0] if alg else given[0]
    issuer, validity, subject, extensions = given[-4:]
    tbs = _der(0x30, version + serial + sig_alg + issuer + validity + subject + spki + extensions)
    assert hashlib.sha256(tbs).digest() == tbs_digest
    if signature.sigAlg == ALG.RSASSA:
        value = signature.signature.sig
    else:
        value = _der(0x30, b"".join(_der(0x02, (b"\x00" + v).lstrip(b"\x00") if v[0] < 0x80 else b"\x00" + v)
                                    for v in (signature.signature.signatureR, signature.signature.signatureS)))
    certificate = _der(0x30, tbs + sig_alg + _der(0x03, b"\x00" + value))
    return certificate, tbs, signature


def test_certify_x509_is_swtpms_and_makes_a_certificate(pair: Pair) -> None:
    """The same external keys in both TPMs: RSASSA signatures are deterministic, so the answers are
    byte for byte the same; the certificate they complete verifies with the signer's public key."""
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    rsa_key = rsa.generate_private_key(65537, 2048)
    numbers = rsa_key.private_numbers()
    signer_public = TPMT_PUBLIC.build({
        "type": ALG.RSA, "nameAlg": ALG.SHA256, "objectAttributes": int(A.USER_WITH_AUTH | A.SIGN_ENCRYPT),
        "authPolicy": b"", "parameters": {"symmetric": {"algorithm": ALG.NULL, "keyBits": None, "mode": None},
                                          "scheme": {"scheme": ALG.RSASSA, "details": {"hashAlg": ALG.SHA256}},
                                          "keyBits": 2048, "exponent": 0},
        "unique": numbers.public_numbers.n.to_bytes(256, "big")})
    signer_private = TPMT_SENSITIVE.build({"sensitiveType": ALG.RSA, "authValue": b"", "seedValue": b"",
                                           "sensitive": numbers.p.to_bytes(128, "big")})
    d = secrets.randbelow(P256.n - 1) + 1
    object_attributes = A.USER_WITH_AUTH | A.SIGN_ENCRYPT
    object_public = ecc_public(ALG.NULL, object_attributes, point=P256.multiply(d))
    answers = []
    for peer in (pair.ours, pair.ref):
        signer = load_external(peer.client, signer_public, signer_private)
        obj = load_external(peer.client, object_public, ecc_sensitive(d))
        public_only = load_external(peer.client, object_public)
        answers.append([
            _certify_x509(peer, obj, signer, _partial()),
            _certify_x509(peer, obj, signer, _partial(tpma=int(object_attributes))),
            _certify_x509(peer, obj, signer, _partial(tpma=int(object_attributes | A.FIXED_TPM))),
            _certify_x509(peer, obj, signer, _partial(key_usage=b"\x03\x02\x05\x20")),  # keyEncipherment
            _certify_x509(peer, obj, signer, _partial(), reserved=b"x"),
            _certify_x509(peer, obj, signer, _partial()[:-1]),
            _certify_x509(peer, obj, signer, _der(0x30, _name("a") + _name("b"))),
            _certify_x509(peer, public_only, signer, _partial()),
            _certify_x509(peer, obj, obj, _partial(), ALG.RSASSA),
        ])
    assert answers[0] == answers[1]
    assert [rc(a) for a in answers[0]] == [0, 0, rc_handle(RC.ATTRIBUTES, 2), rc_param(RC.VALUE, 3),
                                          rc_param(RC.SIZE, 1), rc_param(RC.SIZE, 3), rc_param(RC.VALUE, 3),
                                          RC.AUTH_UNAVAILABLE, rc_param(RC.SCHEME, 2)]
    certificate, tbs, signature = _certificate(_partial(), answers[0][0])
    parsed = cx509.load_der_x509_certificate(certificate)
    rsa_key.public_key().verify(parsed.signature, parsed.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256())
    assert parsed.version == cx509.Version.v3 and parsed.subject.rfc4514_string() == "CN=subject"
    assert parsed.public_key().public_numbers().x == P256.multiply(d)[0]


def test_certify_x509_with_an_ecdsa_signer(client: TpmClient) -> None:
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes

    d = secrets.randbelow(P256.n - 1) + 1
    signer = load_external(client, ecc_public(ALG.ECDSA, A.USER_WITH_AUTH | A.SIGN_ENCRYPT, point=P256.multiply(d)),
                           ecc_sensitive(d))
    obj = create_primary(client, ecc_public(ALG.ECDSA, A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN
                                            | A.USER_WITH_AUTH | A.SIGN_ENCRYPT))
    certificate, _, signature = _certificate(_partial(), _certify_x509(client, obj, signer, _partial()))
    parsed = cx509.load_der_x509_certificate(certificate)
    public = ec.EllipticCurvePublicNumbers(*P256.multiply(d), ec.SECP256R1()).public_key()
    public.verify(parsed.signature, parsed.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))


# ----------------------------------------------------------------------------- PCR_Allocate in part


def test_partial_pcr_allocation_is_swtpms(pair: Pair) -> None:
    """PCR_Allocate of some PCRs of a bank (tpm2-pytss' test_pcr_allocate asks for sha1:3 + sha256:all):
    the allocation after the next TPM Reset, and what PCR_Read, PCR_Extend and GetCapability(PCRS)
    do with it, byte for byte as swtpm."""
    from vtpm.transport import SwtpmControl

    steps_before = [
        wire.pcr_allocate([(ALG.SHA1, [3]), (ALG.SHA256, range(24))]),
        wire.pcr_allocate([(ALG.SHA1, [0, 3]), (ALG.SHA256, [17]), (ALG.SHA384, []), (ALG.SHA512, [])]),
        wire.SHUTDOWN_CLEAR,
    ]
    steps_after = [
        wire.STARTUP_CLEAR,
        wire.get_capability(CAP.PCRS, 0, 1),
        wire.pcr_read([(ALG.SHA1, range(24)), (ALG.SHA256, range(24))]),
        wire.pcr_extend(3, [(ALG.SHA1, bytes(20)), (ALG.SHA256, bytes(32))]),
        wire.build_command(CC.PCR_Event, [0], wire.tpm2b(b"abc"), wire.PASSWORD_SESSION),
        wire.pcr_read([(ALG.SHA1, [0, 3]), (ALG.SHA256, [0, 3, 17])]),
        wire.pcr_allocate([(ALG.SHA1, [5]), (ALG.SHA256, []), (ALG.SHA384, []), (ALG.SHA512, [])]),  # no PCR 0
        wire.pcr_allocate([(ALG.SHA1, range(24)), (ALG.SHA256, range(24)), (ALG.SHA384, range(24)),
                           (ALG.SHA512, range(24))]),
    ]
    answers = []
    for peer in (pair.ours, pair.ref):
        seen = [peer.transact(step) for step in steps_before]
        peer.close_client()
        SwtpmControl(port=peer.port + 1).init()  # _TPM_Init
        seen += [peer.transact(step) for step in steps_after]
        answers.append(seen)
    assert answers[0] == answers[1]
    assert rc(answers[0][-2]) == RC.PCR and rc(answers[0][-1]) == RC.SUCCESS


def test_an_x509sign_key_signs_only_certificates(pair: Pair) -> None:
    template = ecc_public(ALG.ECDSA, A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH
                          | A.SIGN_ENCRYPT | A.X509_SIGN)
    answers = []
    for peer in (pair.ours, pair.ref):
        key = create_primary(peer.client, template)
        answers.append(rc(peer.transact(wire.build_command(CC.Sign, [key], sign_params(bytes(32), ALG.NULL),
                                                           wire.PASSWORD_SESSION))))
        obj = create_primary(peer.client, ecc_public(ALG.ECDSA, A.FIXED_TPM | A.FIXED_PARENT | A.SIGN_ENCRYPT
                                                     | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH), RH.ENDORSEMENT)
        answers.append(rc(_certify_x509(peer, obj, key, _partial())))
    assert answers == [rc_handle(RC.ATTRIBUTES, 1), RC.SUCCESS] * 2
