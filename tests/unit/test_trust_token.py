"""Attestation tokens: issued, verified, and each kind of bad token refused with its own reason."""

from __future__ import annotations

import base64
import datetime
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from vmcrypt.trust.token import TokenError, TokenIssuer, TokenRefusal, TokenVerifier

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make(key: ec.EllipticCurvePrivateKey, clock: Clock, issuer: str = "ta-1") -> tuple[TokenIssuer, TokenVerifier]:
    return TokenIssuer(key, issuer, clock=clock), TokenVerifier(key.public_key(), "ta-1", clock=clock)


def issue(issuer: TokenIssuer) -> str:
    return issuer.issue(host="esx1", ek_fingerprint="ab" * 32, version="8.0.1", cluster="workload")


def test_valid_token_round_trips(key: ec.EllipticCurvePrivateKey) -> None:
    clock = Clock()
    issuer, verifier = make(key, clock)
    claims = verifier.verify(issue(issuer))
    assert (claims.host, claims.ek_fingerprint, claims.version, claims.cluster, claims.verdict) == (
        "esx1", "ab" * 32, "8.0.1", "workload", "passed")
    assert claims.expires - claims.issued_at == datetime.timedelta(minutes=5)
    assert claims.token_id != verifier.verify(issue(issuer)).token_id


def test_expired_token_is_refused(key: ec.EllipticCurvePrivateKey) -> None:
    clock = Clock()
    issuer, verifier = make(key, clock)
    token = issue(issuer)
    clock.now = T0 + datetime.timedelta(minutes=5)
    with pytest.raises(TokenError) as refused:
        verifier.verify(token)
    assert refused.value.refusal is TokenRefusal.EXPIRED


def test_forged_token_is_refused(key: ec.EllipticCurvePrivateKey) -> None:
    clock = Clock()
    issuer, verifier = make(key, clock)
    header, payload, signature = issue(issuer).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "esx-tampered"
    altered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError) as refused:
        verifier.verify(f"{header}.{altered}.{signature}")
    assert refused.value.refusal is TokenRefusal.FORGED


def test_token_of_another_key_or_issuer_is_refused(key: ec.EllipticCurvePrivateKey) -> None:
    clock = Clock()
    other_key = ec.generate_private_key(ec.SECP256R1())
    _, verifier = make(key, clock)
    for issuer in (TokenIssuer(other_key, "ta-1", clock=clock), TokenIssuer(key, "ta-2", clock=clock)):
        with pytest.raises(TokenError) as refused:
            verifier.verify(issue(issuer))
        assert refused.value.refusal is TokenRefusal.OTHER_ISSUER


def test_algorithm_none_and_hmac_are_refused(key: ec.EllipticCurvePrivateKey) -> None:
    clock = Clock()
    _, verifier = make(key, clock)
    claims = {"iss": "ta-1", "sub": "esx1"}
    for token in (jwt.encode(claims, None, algorithm="none"), jwt.encode(claims, "k" * 32, algorithm="HS256")):
        with pytest.raises(TokenError) as refused:
            verifier.verify(token)
        assert refused.value.refusal is TokenRefusal.ALGORITHM
    with pytest.raises(TokenError) as refused:
        verifier.verify("not-a-token")
    assert refused.value.refusal is TokenRefusal.MALFORMED


def test_failed_verdict_is_not_a_pass(key: ec.EllipticCurvePrivateKey) -> None:
    clock = Clock()
    issuer, verifier = make(key, clock)
    token = issuer.issue(host="esx1", ek_fingerprint="ab", version="8.0.1", cluster="c", verdict="failed")
    with pytest.raises(TokenError) as refused:
        verifier.verify(token)
    assert refused.value.refusal is TokenRefusal.NOT_PASSED


def test_far_future_expiry_is_refused_even_when_signed(key: ec.EllipticCurvePrivateKey) -> None:
    """The lifetime is bounded on verification: a validly signed ten-year token is not honoured."""
    clock = Clock()
    long_lived = TokenIssuer(key, "ta-1", clock=clock, lifetime=datetime.timedelta(days=3650))
    verifier = TokenVerifier(key.public_key(), "ta-1", clock=clock, max_lifetime=datetime.timedelta(minutes=5))
    with pytest.raises(TokenError) as refused:
        verifier.verify(issue(long_lived))
    assert refused.value.refusal is TokenRefusal.LIFETIME
    with pytest.raises(TokenError) as default:  # the default ceiling (an hour) holds without configuration
        TokenVerifier(key.public_key(), "ta-1", clock=clock).verify(issue(long_lived))
    assert default.value.refusal is TokenRefusal.LIFETIME
    assert verifier.verify(issue(TokenIssuer(key, "ta-1", clock=clock))).host == "esx1"  # 5 minutes passes
