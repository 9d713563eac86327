"""What loaded keys do: sign and verify digests, seal secrets to a key and recover them
(salts, credential and duplication seeds), and the KDFe of ECC secret sharing. Scheme
selection follows Part 1 (the key's own scheme wins; a caller may only choose when the
key leaves it open)."""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from vtpm import ecmath
from vtpm.constants import ALG, RC
from vtpm.crypto import HASHES, digest, hmac_digest
from vtpm.errors import TpmError
from vtpm.marshal.objects import TPMS_ECC_POINT
from vtpm.marshal.primitives import parse_exact
from vtpm.objects import LoadedObject

_HASH_CLASSES = {ALG.SHA1: hashes.SHA1, ALG.SHA256: hashes.SHA256, ALG.SHA384: hashes.SHA384, ALG.SHA512: hashes.SHA512}
SIGNING_SCHEMES = {ALG.RSASSA, ALG.RSAPSS, ALG.ECDSA, ALG.ECDAA, ALG.ECSCHNORR, ALG.SM2, ALG.HMAC}
ECC_SIGNING_SCHEMES = {ALG.ECDSA, ALG.ECDAA, ALG.ECSCHNORR, ALG.SM2}
SPLIT_SCHEMES = {ALG.ECDAA}  # a signature that needs a commitment (Commit) made before


def hash_class(alg: int) -> hashes.HashAlgorithm:
    """cryptography's hash class for TPM hash ``alg``; TPM_RC_HASH for one it does not implement."""
    try:
        return _HASH_CLASSES[alg]()
    except KeyError:
        raise TpmError(RC.HASH) from None


def key_scheme(key: LoadedObject) -> tuple[int, int]:
    """(scheme, hash) fixed by the key's public area; (NULL, NULL) if the key leaves it open."""
    if key.public.type not in (ALG.RSA, ALG.ECC, ALG.KEYEDHASH):
        return ALG.NULL, ALG.NULL  # a symmetric key has no signing scheme: nothing selects one for it
    scheme = key.public.area.parameters.scheme
    if scheme.scheme == ALG.NULL or scheme.details is None:
        return scheme.scheme, ALG.NULL
    return scheme.scheme, scheme.details.hashAlg


def select_sign_scheme(key: LoadedObject, requested: Any, param: int) -> tuple[int, int]:
    """The signing scheme for this operation (Part 3 20.2 and the reference's CryptSelectSignScheme)."""
    fixed_scheme, fixed_hash = key_scheme(key)
    asked_scheme = requested.scheme
    asked_hash = requested.details.hashAlg if requested.details is not None and asked_scheme != ALG.NULL else ALG.NULL
    if fixed_scheme == ALG.NULL:
        if asked_scheme == ALG.NULL:
            raise TpmError(RC.SCHEME, param=param)
        scheme, alg = asked_scheme, asked_hash
    else:
        if asked_scheme == ALG.NULL and fixed_scheme in SPLIT_SCHEMES:
            raise TpmError(RC.SCHEME, param=param)  # the caller must name the commitment (its count)
        if asked_scheme != ALG.NULL and (asked_scheme != fixed_scheme or asked_hash != fixed_hash):
            raise TpmError(RC.SCHEME, param=param)
        scheme, alg = fixed_scheme, fixed_hash
    allowed = {ALG.RSA: {ALG.RSASSA, ALG.RSAPSS}, ALG.ECC: ECC_SIGNING_SCHEMES, ALG.KEYEDHASH: {ALG.HMAC}}
    if scheme not in allowed.get(key.public.type, set()):
        raise TpmError(RC.SCHEME, param=param)
    if alg not in HASHES:
        raise TpmError(RC.HASH, param=param)
    return scheme, alg


def commit_count(requested: Any) -> int:
    """The commit counter a split (ECDAA) signing scheme names."""
    return int(getattr(requested.details, "count", 0) or 0) if requested.details is not None else 0


def sign_digest(key: LoadedObject, scheme: int, alg: int, data_digest: bytes, *,
                commit_r: int | None = None) -> dict[str, Any]:
    """A TPMT_SIGNATURE (as a dict for construct) over ``data_digest``; ECDAA needs the commit value r."""
    if scheme == ALG.HMAC:
        assert key.sensitive is not None
        return {"sigAlg": ALG.HMAC, "signature": {"hashAlg": alg, "digest": hmac_digest(alg, key.sensitive.secret, data_digest)}}
    private = key.private_key()
    prehashed = utils.Prehashed(hash_class(alg))
    if scheme == ALG.RSASSA:
        sig = private.sign(data_digest, padding.PKCS1v15(), prehashed)
        return {"sigAlg": scheme, "signature": {"hash": alg, "sig": sig}}
    if scheme == ALG.RSAPSS:
        pss = padding.PSS(mgf=padding.MGF1(hash_class(alg)), salt_length=padding.PSS.DIGEST_LENGTH)
        return {"sigAlg": scheme, "signature": {"hash": alg, "sig": private.sign(data_digest, pss, prehashed)}}
    if scheme == ALG.ECDSA:
        r, s = utils.decode_dss_signature(private.sign(data_digest, ec.ECDSA(prehashed)))
        size = ecmath.curve(key.public.area.parameters.curveID).size
        return {"sigAlg": scheme, "signature": {"hash": alg, "signatureR": r.to_bytes(size, "big"),
                                                  "signatureS": s.to_bytes(size, "big")}}
    if scheme in (ALG.ECDAA, ALG.ECSCHNORR, ALG.SM2):
        curve = ecmath.curve(key.public.area.parameters.curveID)
        d = private.private_numbers().private_value
        if scheme == ALG.ECDAA:
            if commit_r is None:
                raise TpmError(RC.VALUE)
            r_out, s_value = _sign_ecdaa(curve, d, alg, data_digest, commit_r)
        elif scheme == ALG.ECSCHNORR:
            r_out, s_value = _sign_schnorr(curve, d, alg, data_digest)
        else:
            r_value, s_value = _sign_sm2(curve, d, data_digest)
            r_out = r_value.to_bytes(curve.order_bytes, "big")
        return {"sigAlg": scheme, "signature": {"hash": alg, "signatureR": r_out,
                                                  "signatureS": s_value.to_bytes(curve.order_bytes, "big")}}
    raise TpmError(RC.SCHEME)


def _random_scalar(curve: ecmath.Curve) -> int:
    return secrets.randbelow(curve.n - 1) + 1


def _minimal(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _sign_ecdaa(curve: ecmath.Curve, d: int, alg: int, data_digest: bytes, r: int) -> tuple[bytes, int]:
    """ECDAA (Part 1 C.4, the reference implementation's BnSignEcdaa): a fresh nonce k, T = H(k || digest),
    s = r + T*d mod n with r the committed value; the signature is (k, s)."""
    while True:
        nonce_k = _minimal(_random_scalar(curve))
        t = int.from_bytes(digest(alg, nonce_k, data_digest), "big") % curve.n
        s = (r + t * d) % curve.n
        if t and s:
            return nonce_k, s


def _schnorr_hash(curve: ecmath.Curve, alg: int, x: int, data_digest: bytes) -> int:
    """H(x || digest), truncated to the size of the curve order (the reference's SchnorrReduce)."""
    out = digest(alg, x.to_bytes(curve.order_bytes, "big"), data_digest)[: curve.order_bytes]
    return int.from_bytes(out, "big")


def _sign_schnorr(curve: ecmath.Curve, d: int, alg: int, data_digest: bytes) -> tuple[bytes, int]:
    """EC-Schnorr (Part 1 C.5): k random, R = [k]G, r = H(xR || digest), s = k + r*d mod n."""
    while True:
        k = _random_scalar(curve)
        point = curve.multiply(k)
        assert point is not None
        r = _schnorr_hash(curve, alg, point[0], data_digest)
        if r % curve.n == 0:
            continue
        s = (k + (r % curve.n) * d) % curve.n
        if s:
            return r.to_bytes(curve.order_bytes, "big"), s


def _sign_sm2(curve: ecmath.Curve, d: int, data_digest: bytes) -> tuple[int, int]:
    """SM2 (GB/T 32918.2 6.1, steps A3-A6) over the digest given (e)."""
    e = int.from_bytes(data_digest, "big")
    n = curve.n
    while True:
        k = _random_scalar(curve)
        point = curve.multiply(k)
        assert point is not None
        r = (e + point[0]) % n
        if r == 0 or r + k == n:
            continue
        s = pow(1 + d, -1, n) * (k - r * d) % n
        if s:
            return r, s


def _verify_ecc(key: LoadedObject, sig_alg: int, body: Any, data_digest: bytes) -> bool:
    """EC-Schnorr and SM2 verification (the reference's BnValidateSignatureEcSchnorr / EcSm2)."""
    curve = ecmath.curve(key.public.area.parameters.curveID)
    unique = key.public.area.unique
    q = (int.from_bytes(unique.x, "big"), int.from_bytes(unique.y, "big"))
    r, s = int.from_bytes(body.signatureR, "big"), int.from_bytes(body.signatureS, "big")
    if not (0 < r < curve.n and 0 < s < curve.n):
        return False
    if sig_alg == ALG.ECSCHNORR:
        point = curve.multiply_add(s, curve.g, curve.n - r, q)
        return point is not None and _schnorr_hash(curve, body.hash, point[0], data_digest) == r
    t = (r + s) % curve.n
    if t == 0:
        return False
    point = curve.multiply_add(s, curve.g, t, q)
    return point is not None and (int.from_bytes(data_digest, "big") + point[0]) % curve.n == r


def verify_digest(key: LoadedObject, signature: Any, data_digest: bytes, param: int) -> None:
    """Raise TPM_RC_SIGNATURE (for ``param``) unless ``signature`` is good for ``data_digest``."""
    sig_alg = signature.sigAlg
    if sig_alg not in SIGNING_SCHEMES or signature.signature is None:  # TPM_ALG_NULL: no signature to check
        raise TpmError(RC.SCHEME, param=param)
    try:
        if sig_alg == ALG.HMAC:
            if key.public.type != ALG.KEYEDHASH or key.sensitive is None:
                raise TpmError(RC.SCHEME, param=param)
            body = signature.signature
            if body.hashAlg not in HASHES:
                raise TpmError(RC.HASH, param=param)
            expected = hmac_digest(body.hashAlg, key.sensitive.secret, data_digest)
            if not hmac.compare_digest(expected, body.digest):
                raise InvalidSignature()
            return
        public = key.public_key()
        body = signature.signature
        prehashed = utils.Prehashed(hash_class(body.hash))
        if len(data_digest) != HASHES[body.hash].size:
            raise TpmError(RC.SIZE, param=param - 1)
        if sig_alg == ALG.RSASSA and key.public.type == ALG.RSA:
            public.verify(body.sig, data_digest, padding.PKCS1v15(), prehashed)
        elif sig_alg == ALG.RSAPSS and key.public.type == ALG.RSA:
            pss = padding.PSS(mgf=padding.MGF1(hash_class(body.hash)), salt_length=padding.PSS.AUTO)
            public.verify(body.sig, data_digest, pss, prehashed)
        elif sig_alg == ALG.ECDSA and key.public.type == ALG.ECC:
            der = utils.encode_dss_signature(int.from_bytes(body.signatureR, "big"), int.from_bytes(body.signatureS, "big"))
            public.verify(der, data_digest, ec.ECDSA(prehashed))
        elif sig_alg in (ALG.ECSCHNORR, ALG.SM2) and key.public.type == ALG.ECC:
            if not _verify_ecc(key, sig_alg, body, data_digest):
                raise InvalidSignature()
        else:
            raise TpmError(RC.SCHEME, param=param)
    except (InvalidSignature, ValueError):
        raise TpmError(RC.SIGNATURE, param=param) from None


# ----------------------------------------------------------------------------- secret sharing


def kdfe(alg: int, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """KDFe (SP 800-56A concatenation KDF, Part 1 11.4.10.3), the label NUL-terminated."""
    if label and not label.endswith(b"\x00"):
        label += b"\x00"
    out, counter = b"", 1
    while len(out) * 8 < bits:
        out += digest(alg, counter.to_bytes(4, "big"), z, label, party_u, party_v)
        counter += 1
    return out[: (bits + 7) // 8]


def decrypt_secret(key: LoadedObject, encrypted: bytes, label: bytes, param: int) -> bytes:
    """Recover a seed sent to ``key`` (Part 1 24): RSA-OAEP with the label, or ECDH + KDFe."""
    if not (key.public.has(1 << 17)):  # decrypt attribute
        raise TpmError(RC.ATTRIBUTES, handle=1)
    alg = key.public.name_alg
    if key.public.type == ALG.RSA:
        oaep = padding.OAEP(mgf=padding.MGF1(hash_class(alg)), algorithm=hash_class(alg), label=label + b"\x00")
        try:
            return key.private_key().decrypt(encrypted, oaep)
        except ValueError:
            raise TpmError(RC.VALUE, param=param) from None
    if key.public.type == ALG.ECC:
        try:
            point = parse_exact(TPMS_ECC_POINT, encrypted)
        except Exception:
            raise TpmError(RC.VALUE, param=param) from None
        try:
            peer = ecmath.load_public_key(key.public.area.parameters.curveID, int.from_bytes(point.x, "big"),
                                          int.from_bytes(point.y, "big"))
        except ValueError:
            raise TpmError(RC.ECC_POINT, param=param) from None
        z = key.private_key().exchange(ec.ECDH(), peer)
        return kdfe(alg, z, label, point.x, key.public.area.unique.x, HASHES[alg].size * 8)
    raise TpmError(RC.KEY, handle=1)


def seal_to(key: LoadedObject, label: bytes) -> tuple[bytes, bytes]:
    """(seed, encrypted secret) for ``key``: RSA-OAEP or ephemeral ECDH + KDFe; decrypt_secret recovers the seed."""
    alg = key.public.name_alg
    if key.public.type == ALG.RSA:
        seed = secrets.token_bytes(HASHES[alg].size)
        oaep = padding.OAEP(mgf=padding.MGF1(hash_class(alg)), algorithm=hash_class(alg), label=label + b"\x00")
        return seed, key.public_key().encrypt(seed, oaep)
    size = ecmath.curve(key.public.area.parameters.curveID).size
    ephemeral = ecmath.generate_private_key(key.public.area.parameters.curveID)
    numbers = ephemeral.public_key().public_numbers()
    ex = numbers.x.to_bytes(size, "big")
    z = ephemeral.exchange(ec.ECDH(), key.public_key())
    seed = kdfe(alg, z, label, ex, key.public.area.unique.x, HASHES[alg].size * 8)
    return seed, TPMS_ECC_POINT.build({"x": ex, "y": numbers.y.to_bytes(size, "big")})
