"""Attestation tokens: short-lived JWTs (ES256, PyJWT) that say a host proved what it booted.

The attestation service issues one to a host that passed; the key provider service and the
management plane accept it in place of a fresh attestation until it expires. A token names the
host (its name and the SHA-256 fingerprint of its EK certificate), the version the host proved,
the verdict, the trusted cluster it belongs to, and carries ``iat``/``exp``/``jti``.

Verification pins everything an attacker could choose: the algorithm (ES256 only, so neither
``none`` nor an HMAC keyed with the public key gets through), the issuer's key (the ``kid`` is
that key's fingerprint), the issuer name and the audience. Each refusal has its own reason
(``TokenRefusal``), so an expired token, a forged one and one from another Trust Authority are
told apart in the audit log.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vmcrypt.errors import VmcryptError

ALGORITHM = "ES256"
DEFAULT_LIFETIME = datetime.timedelta(minutes=5)
# The longest lifetime a verifier accepts (exp - iat), whatever the token says: a token minted with a
# far-future expiry (a leaked signing key, a misconfigured issuer) is refused rather than honoured for years.
MAX_LIFETIME = datetime.timedelta(hours=1)
AUDIENCE = "vmcrypt-trusted-key-provider"
PASSED = "passed"
Clock = Callable[[], datetime.datetime]


def utc_now() -> datetime.datetime:
    """The current time in UTC (time-zone aware): the default clock of issuers and verifiers."""
    return datetime.datetime.now(datetime.timezone.utc)


class TokenRefusal(str, enum.Enum):
    """Why a token is not accepted; each is a distinct line in the audit log."""

    MALFORMED = "the token is not a well-formed JWT"
    ALGORITHM = "the token's algorithm is not ES256"
    OTHER_ISSUER = "the token was issued by another Trust Authority"
    FORGED = "the token's signature does not verify with the Trust Authority's key (forged or altered)"
    EXPIRED = "the token has expired"
    NOT_YET_VALID = "the token is not valid yet"
    LIFETIME = "the token's lifetime is longer than the Trust Authority issues"
    AUDIENCE = "the token is meant for another audience"
    CLAIMS = "the token lacks a required claim"
    NOT_PASSED = "the token does not carry a passed verdict"


class TokenError(VmcryptError):
    """A token that is refused; ``refusal`` says which check failed."""

    def __init__(self, refusal: TokenRefusal, detail: str = "") -> None:
        self.refusal = refusal
        super().__init__(refusal.value + (f" ({detail})" if detail else ""))


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate or public key, hex: how hosts and issuer keys are named."""
    return hashlib.sha256(der).hexdigest()


def public_key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``fingerprint`` of a public key's DER SubjectPublicKeyInfo: a token's ``kid``."""
    return fingerprint(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says."""

    host: str
    ek_fingerprint: str
    version: str
    verdict: str
    cluster: str
    issued_at: datetime.datetime
    expires: datetime.datetime
    token_id: str


class TokenIssuer:
    """Signs tokens with the Trust Authority's P-256 key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, issuer: str, *, lifetime: datetime.timedelta = DEFAULT_LIFETIME,
                 clock: Clock = utc_now) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("an ES256 token key must be an ECC P-256 private key")
        self._key = key
        self.issuer = issuer
        self.lifetime = lifetime
        self.clock = clock
        self.key_id = public_key_fingerprint(key.public_key())

    def issue(self, *, host: str, ek_fingerprint: str, version: str, cluster: str, verdict: str = PASSED) -> str:
        """A signed ES256 token for ``host``: issuer, audience, EK fingerprint, version, verdict and cluster, issued
        now, expiring after ``lifetime``, with a random id."""
        now = self.clock()
        claims = {"iss": self.issuer, "aud": AUDIENCE, "sub": host, "ek": ek_fingerprint, "ver": version,
                  "verdict": verdict, "cluster": cluster, "iat": int(now.timestamp()),
                  "exp": int((now + self.lifetime).timestamp()), "jti": secrets.token_hex(16)}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.key_id})


class TokenVerifier:
    """Accepts only tokens of one issuer (name and key), for our audience, unexpired, with a passed verdict."""

    REQUIRED = ("iss", "aud", "sub", "ek", "ver", "verdict", "cluster", "iat", "exp", "jti")

    def __init__(self, public_key: ec.EllipticCurvePublicKey, issuer: str, *, clock: Clock = utc_now,
                 leeway: datetime.timedelta = datetime.timedelta(seconds=0),
                 max_lifetime: datetime.timedelta = MAX_LIFETIME) -> None:
        self._key = public_key
        self.issuer = issuer
        self.key_id = public_key_fingerprint(public_key)
        self.clock = clock
        self.leeway = leeway
        self.max_lifetime = max_lifetime

    def verify(self, token: str) -> TokenClaims:
        """The claims of a valid token; ``TokenError`` naming the first check that fails."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenError(TokenRefusal.MALFORMED) from None
        if header.get("alg") != ALGORITHM:
            raise TokenError(TokenRefusal.ALGORITHM, f"got {str(header.get('alg'))[:20]!r}")
        if unverified.get("iss") != self.issuer or header.get("kid") != self.key_id:
            raise TokenError(TokenRefusal.OTHER_ISSUER)
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=self.issuer,
                leeway=self.leeway, options={"require": list(self.REQUIRED), "verify_exp": False, "verify_iat": False,
                                             "verify_nbf": False})
        except jwt.InvalidSignatureError:
            raise TokenError(TokenRefusal.FORGED) from None
        except jwt.InvalidAudienceError:
            raise TokenError(TokenRefusal.AUDIENCE) from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(TokenRefusal.CLAIMS, exc.claim) from None
        except jwt.PyJWTError:
            raise TokenError(TokenRefusal.MALFORMED) from None
        # time against our clock (PyJWT's own check reads the wall clock; tests and replays need ours)
        now = self.clock().timestamp()
        if not isinstance(claims["exp"], int) or not isinstance(claims["iat"], int):
            raise TokenError(TokenRefusal.CLAIMS, "iat/exp")
        if now >= claims["exp"] + self.leeway.total_seconds():
            raise TokenError(TokenRefusal.EXPIRED)
        if now + self.leeway.total_seconds() < claims["iat"]:
            raise TokenError(TokenRefusal.NOT_YET_VALID)
        if claims["exp"] - claims["iat"] > self.max_lifetime.total_seconds():
            raise TokenError(TokenRefusal.LIFETIME, f"{claims['exp'] - claims['iat']} s")
        if claims["verdict"] != PASSED:
            raise TokenError(TokenRefusal.NOT_PASSED)
        for name in ("sub", "ek", "ver", "cluster", "jti"):
            if not isinstance(claims[name], str):
                raise TokenError(TokenRefusal.CLAIMS, name)
        utc = datetime.timezone.utc
        return TokenClaims(host=claims["sub"], ek_fingerprint=claims["ek"], version=claims["ver"],
                           verdict=claims["verdict"], cluster=claims["cluster"],
                           issued_at=datetime.datetime.fromtimestamp(claims["iat"], utc),
                           expires=datetime.datetime.fromtimestamp(claims["exp"], utc), token_id=claims["jti"])
