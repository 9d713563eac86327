"""Elliptic-curve arithmetic over the TPM's curves, for what `cryptography` does not offer:
the TPM's own point operations (ECDH_ZGen, Commit's K, L and E, EC_Ephemeral), keys on the curves
OpenSSL lacks (BN P-256/P-638, SM2 P-256: ECDSA and ECDH in Python), the two-phase
key exchanges of ZGen_2Phase (Full Unified ECDH, ECMQV, SM2) and the anonymous and Chinese
signature schemes (ECDAA, EC-Schnorr, SM2), plus the curve parameters ECC_Parameters reports.

Points are affine ``(x, y)`` integer pairs and ``None`` is the point at infinity; the
arithmetic runs in Jacobian coordinates. This is plain Python, not constant time: the scalars
it handles are commit and ephemeral values and the private keys on the curves OpenSSL lacks, all
secrets of a software TPM that already live in the same process.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, utils

from vtpm.constants import ALG, ECC_CURVE

Point = tuple[int, int] | None


@dataclass(frozen=True)
class Curve:
    """y^2 = x^3 + ax + b over GF(p), base point G of order n, cofactor h (Part 2 TPMS_ALGORITHM_DETAIL_ECC)."""

    curve_id: int
    key_bits: int
    p: int
    a: int
    b: int
    gx: int
    gy: int
    n: int
    h: int
    kdf: tuple[int, int]  # (scheme, hash) the TPM reports for the curve, (TPM_ALG_NULL, -) for none
    sign: tuple[int, int]  # (scheme, hash) a key on the curve must use, (TPM_ALG_NULL, -) for any

    @property
    def size(self) -> int:
        """Bytes of a coordinate or a private key."""
        return (self.key_bits + 7) // 8

    @property
    def order_bytes(self) -> int:
        """Bytes of the group order n: the size of a signature's r and s and of a private scalar."""
        return (self.n.bit_length() + 7) // 8

    @property
    def g(self) -> tuple[int, int]:
        """The base point G as an affine point."""
        return (self.gx, self.gy)

    def on_curve(self, point: Point) -> bool:
        """Whether ``point`` is a finite point with coordinates below p that satisfies the curve equation; the check
        every point from outside must pass before it is used."""
        if point is None:
            return False
        x, y = point
        if not (0 <= x < self.p and 0 <= y < self.p):
            return False
        return (y * y - (x * x * x + self.a * x + self.b)) % self.p == 0

    # ------------------------------------------------------------------ Jacobian arithmetic

    def _double(self, P: tuple[int, int, int]) -> tuple[int, int, int]:
        X, Y, Z = P
        if Y == 0 or Z == 0:
            return (1, 1, 0)
        p = self.p
        YY = Y * Y % p
        S = 4 * X * YY % p
        ZZ = Z * Z % p
        M = (3 * X * X + self.a * ZZ * ZZ) % p
        X3 = (M * M - 2 * S) % p
        Y3 = (M * (S - X3) - 8 * YY * YY) % p
        Z3 = 2 * Y * Z % p
        return (X3, Y3, Z3)

    def _add(self, P: tuple[int, int, int], Q: tuple[int, int, int]) -> tuple[int, int, int]:
        if P[2] == 0:
            return Q
        if Q[2] == 0:
            return P
        p = self.p
        X1, Y1, Z1 = P
        X2, Y2, Z2 = Q
        Z1Z1 = Z1 * Z1 % p
        Z2Z2 = Z2 * Z2 % p
        U1 = X1 * Z2Z2 % p
        U2 = X2 * Z1Z1 % p
        S1 = Y1 * Z2 * Z2Z2 % p
        S2 = Y2 * Z1 * Z1Z1 % p
        if U1 == U2:
            return self._double(P) if S1 == S2 else (1, 1, 0)
        H = (U2 - U1) % p
        R = (S2 - S1) % p
        HH = H * H % p
        HHH = H * HH % p
        V = U1 * HH % p
        X3 = (R * R - HHH - 2 * V) % p
        Y3 = (R * (V - X3) - S1 * HHH) % p
        Z3 = H * Z1 * Z2 % p
        return (X3, Y3, Z3)

    def _affine(self, P: tuple[int, int, int]) -> Point:
        X, Y, Z = P
        if Z == 0:
            return None
        zi = pow(Z, -1, self.p)
        zi2 = zi * zi % self.p
        return (X * zi2 % self.p, Y * zi2 * zi % self.p)

    @staticmethod
    def _jacobian(point: Point) -> tuple[int, int, int]:
        return (1, 1, 0) if point is None else (point[0], point[1], 1)

    def add(self, P: Point, Q: Point) -> Point:
        """P + Q in affine form (either may be the point at infinity, ``None``)."""
        return self._affine(self._add(self._jacobian(P), self._jacobian(Q)))

    def multiply(self, k: int, point: Point = None) -> Point:
        """[k]point, or [k]G when no point is given."""
        if point is None:
            point = self.g
        k %= self.n
        result = (1, 1, 0)
        addend = self._jacobian(point)
        while k:
            if k & 1:
                result = self._add(result, addend)
            addend = self._double(addend)
            k >>= 1
        return self._affine(result)

    def multiply_add(self, k1: int, P1: Point, k2: int, P2: Point) -> Point:
        """[k1]P1 + [k2]P2."""
        return self.add(self.multiply(k1, P1), self.multiply(k2, P2))

    # ------------------------------------------------------------------ encodings

    def to_bytes(self, value: int) -> bytes:
        """A field element or scalar as a big-endian integer of the curve's size (a TPM2B_ECC_PARAMETER buffer)."""
        return value.to_bytes(self.size, "big")

    def point_bytes(self, point: tuple[int, int]) -> dict[str, bytes]:
        """A point as TPMS_ECC_POINT fields, each coordinate the size of the curve."""
        return {"x": self.to_bytes(point[0]), "y": self.to_bytes(point[1])}


def _h(text: str) -> int:
    return int(text.replace(" ", ""), 16)


CURVES: dict[int, Curve] = {
    ECC_CURVE.NIST_P192: Curve(
        ECC_CURVE.NIST_P192, 192,
        p=_h("ffffffff ffffffff ffffffff fffffffe ffffffff ffffffff"),
        a=_h("ffffffff ffffffff ffffffff fffffffe ffffffff fffffffc"),
        b=_h("64210519 e59c80e7 0fa7e9ab 72243049 feb8deec c146b9b1"),
        gx=_h("188da80e b03090f6 7cbf20eb 43a18800 f4ff0afd 82ff1012"),
        gy=_h("07192b95 ffc8da78 631011ed 6b24cdd5 73f977a1 1e794811"),
        n=_h("ffffffff ffffffff ffffffff 99def836 146bc9b1 b4d22831"),
        h=1, kdf=(ALG.KDF1_SP800_56A, ALG.SHA256), sign=(ALG.NULL, ALG.NULL)),
    ECC_CURVE.NIST_P224: Curve(
        ECC_CURVE.NIST_P224, 224,
        p=_h("ffffffff ffffffff ffffffff ffffffff 00000000 00000000 00000001"),
        a=_h("ffffffff ffffffff ffffffff fffffffe ffffffff ffffffff fffffffe"),
        b=_h("b4050a85 0c04b3ab f5413256 5044b0b7 d7bfd8ba 270b3943 2355ffb4"),
        gx=_h("b70e0cbd 6bb4bf7f 321390b9 4a03c1d3 56c21122 343280d6 115c1d21"),
        gy=_h("bd376388 b5f723fb 4c22dfe6 cd4375a0 5a074764 44d58199 85007e34"),
        n=_h("ffffffff ffffffff ffffffff ffff16a2 e0b8f03e 13dd2945 5c5c2a3d"),
        h=1, kdf=(ALG.KDF1_SP800_56A, ALG.SHA256), sign=(ALG.NULL, ALG.NULL)),
    ECC_CURVE.NIST_P256: Curve(
        ECC_CURVE.NIST_P256, 256,
        p=_h("ffffffff 00000001 00000000 00000000 00000000 ffffffff ffffffff ffffffff"),
        a=_h("ffffffff 00000001 00000000 00000000 00000000 ffffffff ffffffff fffffffc"),
        b=_h("5ac635d8 aa3a93e7 b3ebbd55 769886bc 651d06b0 cc53b0f6 3bce3c3e 27d2604b"),
        gx=_h("6b17d1f2 e12c4247 f8bce6e5 63a440f2 77037d81 2deb33a0 f4a13945 d898c296"),
        gy=_h("4fe342e2 fe1a7f9b 8ee7eb4a 7c0f9e16 2bce3357 6b315ece cbb64068 37bf51f5"),
        n=_h("ffffffff 00000000 ffffffff ffffffff bce6faad a7179e84 f3b9cac2 fc632551"),
        h=1, kdf=(ALG.KDF1_SP800_56A, ALG.SHA256), sign=(ALG.NULL, ALG.NULL)),
    ECC_CURVE.NIST_P384: Curve(
        ECC_CURVE.NIST_P384, 384,
        p=_h("ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff fffffffe"
             "ffffffff 00000000 00000000 ffffffff"),
        a=_h("ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff fffffffe"
             "ffffffff 00000000 00000000 fffffffc"),
        b=_h("b3312fa7 e23ee7e4 988e056b e3f82d19 181d9c6e fe814112 0314088f 5013875a"
             "c656398d 8a2ed19d 2a85c8ed d3ec2aef"),
        gx=_h("aa87ca22 be8b0537 8eb1c71e f320ad74 6e1d3b62 8ba79b98 59f741e0 82542a38"
              "5502f25d bf55296c 3a545e38 72760ab7"),
        gy=_h("3617de4a 96262c6f 5d9e98bf 9292dc29 f8f41dbd 289a147c e9da3113 b5f0b8c0"
              "0a60b1ce 1d7e819d 7a431d7c 90ea0e5f"),
        n=_h("ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff c7634d81 f4372ddf"
             "581a0db2 48b0a77a ecec196a ccc52973"),
        h=1, kdf=(ALG.KDF1_SP800_56A, ALG.SHA384), sign=(ALG.NULL, ALG.NULL)),
    ECC_CURVE.NIST_P521: Curve(
        ECC_CURVE.NIST_P521, 521,
        p=(1 << 521) - 1,
        a=(1 << 521) - 4,
        b=_h("0051 953eb961 8e1c9a1f 929a21a0 b68540ee a2da725b 99b315f3 b8b48991 8ef109e1"
             "56193951 ec7e937b 1652c0bd 3bb1bf07 3573df88 3d2c34f1 ef451fd4 6b503f00"),
        gx=_h("00c6 858e06b7 0404e9cd 9e3ecb66 2395b442 9c648139 053fb521 f828af60 6b4d3dba"
              "a14b5e77 efe75928 fe1dc127 a2ffa8de 3348b3c1 856a429b f97e7e31 c2e5bd66"),
        gy=_h("0118 39296a78 9a3bc004 5c8a5fb4 2c7d1bd9 98f54449 579b4468 17afbd17 273e662c"
              "97ee7299 5ef42640 c550b901 3fad0761 353c7086 a272c240 88be9476 9fd16650"),
        n=_h("01ff ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff fffffffa"
             "51868783 bf2f966b 7fcc0148 f709a5d0 3bb5c9b8 899c47ae bb6fb71e 91386409"),
        h=1, kdf=(ALG.KDF1_SP800_56A, ALG.SHA512), sign=(ALG.NULL, ALG.NULL)),
    # Barreto-Naehrig curves y^2 = x^3 + b (ISO/IEC 15946-5, the TCG's ECDAA curves): no KDF
    ECC_CURVE.BN_P256: Curve(
        ECC_CURVE.BN_P256, 256,
        p=_h("fffffffff ffcf0cd 46e5f25e ee71a49f 0cdc65fb 12980a82 d3292ddb aed33013"),
        a=0, b=3, gx=1, gy=2,
        n=_h("fffffffff ffcf0cd 46e5f25e ee71a49e 0cdc65fb 1299921a f62d536c d10b500d"),
        h=1, kdf=(ALG.NULL, ALG.NULL), sign=(ALG.NULL, ALG.NULL)),
    ECC_CURVE.BN_P638: Curve(
        ECC_CURVE.BN_P638, 638,
        p=_h("23fffffd c000000d 7fffffb8 000001d3 fffff942 d000165e 3fff9487 0000d52f"
             "fffdd0e0 0008de55 c0008652 0021e55b fffff51f fff4eb80 0000004c 80015acd"
             "ffffffff ffffece0 00000000 00000067"),
        a=0, b=0x101,
        gx=_h("23fffffd c000000d 7fffffb8 000001d3 fffff942 d000165e 3fff9487 0000d52f"
              "fffdd0e0 0008de55 c0008652 0021e55b fffff51f fff4eb80 0000004c 80015acd"
              "ffffffff ffffece0 00000000 00000066"),
        gy=0x10,
        n=_h("23fffffd c000000d 7fffffb8 000001d3 fffff942 d000165e 3fff9487 0000d52f"
             "fffdd0e0 0008de55 60008655 0021e555 fffff54f fff4eac0 00000049 800154d9"
             "ffffffff ffffeda0 00000000 00000061"),
        h=1, kdf=(ALG.NULL, ALG.NULL), sign=(ALG.NULL, ALG.NULL)),
    # SM2 (GB/T 32918.5): its KDF hashes with SM3
    ECC_CURVE.SM2_P256: Curve(
        ECC_CURVE.SM2_P256, 256,
        p=_h("fffffffe ffffffff ffffffff ffffffff ffffffff 00000000 ffffffff ffffffff"),
        a=_h("fffffffe ffffffff ffffffff ffffffff ffffffff 00000000 ffffffff fffffffc"),
        b=_h("28e9fa9e 9d9f5e34 4d5a9e4b cf6509a7 f39789f5 15ab8f92 ddbcbd41 4d940e93"),
        gx=_h("32c4ae2c 1f198119 5f990446 6a39c994 8fe30bbf f2660be1 715a4589 334c74c7"),
        gy=_h("bc3736a2 f4f6779c 59bdcee3 6b692153 d0a9877c c62a4740 02df32e5 2139f0a0"),
        n=_h("fffffffe ffffffff ffffffff ffffffff 7203df6b 21c6052b 53bbf409 39d54123"),
        h=1, kdf=(ALG.KDF1_SP800_56A, ALG.SM3_256), sign=(ALG.NULL, ALG.NULL)),
}


def curve(curve_id: int) -> Curve:
    """The curve with TPM_ECC_CURVE ``curve_id``; KeyError for one this TPM does not implement."""
    return CURVES[curve_id]


def scalar(data: bytes) -> int:
    """A TPM2B_ECC_PARAMETER buffer (big-endian) as an integer."""
    return int.from_bytes(data, "big")


# ----------------------------------------------------------------------------- keys

# The curves OpenSSL has: their keys are `cryptography` objects (constant time, fast); the others
# (BN and SM2 curves) get SoftPrivateKey / SoftPublicKey with the part of the same interface the
# engine uses.
_OPENSSL_CURVES: dict[int, type[ec.EllipticCurve]] = {
    ECC_CURVE.NIST_P192: ec.SECP192R1,
    ECC_CURVE.NIST_P224: ec.SECP224R1,
    ECC_CURVE.NIST_P256: ec.SECP256R1,
    ECC_CURVE.NIST_P384: ec.SECP384R1,
    ECC_CURVE.NIST_P521: ec.SECP521R1,
}


@functools.cache
def openssl_curve(curve_id: int) -> ec.EllipticCurve | None:
    """`cryptography`'s curve for ``curve_id``, or None when this OpenSSL lacks it."""
    kind = _OPENSSL_CURVES.get(curve_id)
    if kind is None:
        return None
    try:
        ec.derive_private_key(1, kind())
    except (UnsupportedAlgorithm, ValueError):
        return None
    return kind()


def _digest_scalar(curve: Curve, data_digest: bytes) -> int:
    """The digest as ECDSA uses it: its leftmost bits, as many as the order has (SEC 1 4.1.3)."""
    value = int.from_bytes(data_digest, "big")
    excess = len(data_digest) * 8 - curve.n.bit_length()
    return value >> excess if excess > 0 else value


def ecdsa_sign(curve: Curve, d: int, data_digest: bytes) -> tuple[int, int]:
    """(r, s) of an ECDSA signature with a fresh random nonce."""
    e = _digest_scalar(curve, data_digest)
    while True:
        k = secrets.randbelow(curve.n - 1) + 1
        point = curve.multiply(k)
        assert point is not None
        r = point[0] % curve.n
        if r == 0:
            continue
        s = pow(k, -1, curve.n) * (e + r * d) % curve.n
        if s:
            return r, s


def ecdsa_verify(curve: Curve, q: tuple[int, int], data_digest: bytes, r: int, s: int) -> bool:
    """Whether (r, s) is an ECDSA signature by public point ``q`` over ``data_digest``; out-of-range r or s is False,
    never an exception."""
    if not (0 < r < curve.n and 0 < s < curve.n):
        return False
    w = pow(s, -1, curve.n)
    point = curve.multiply_add(_digest_scalar(curve, data_digest) * w % curve.n, curve.g, r * w % curve.n, q)
    return point is not None and point[0] % curve.n == r


@dataclass(frozen=True)
class SoftPublicNumbers:
    """The coordinates and curve of a SoftPublicKey, shaped like cryptography's EllipticCurvePublicNumbers."""
    x: int
    y: int
    curve: Curve


@dataclass(frozen=True)
class SoftPublicKey:
    """A public key on a curve OpenSSL lacks (cryptography's EllipticCurvePublicKey, as far as used here)."""

    curve: Curve
    point: tuple[int, int]

    @property
    def key_size(self) -> int:
        """The curve's key size in bits."""
        return self.curve.key_bits

    def public_numbers(self) -> SoftPublicNumbers:
        """The point and curve, as cryptography's ``public_numbers()`` gives them."""
        return SoftPublicNumbers(self.point[0], self.point[1], self.curve)

    def verify(self, signature: bytes, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> None:
        """ECDSA over a prehashed ``data``; InvalidSignature if it does not verify."""
        r, s = utils.decode_dss_signature(signature)
        if not ecdsa_verify(self.curve, self.point, data, r, s):
            raise InvalidSignature()


@dataclass(frozen=True)
class SoftPrivateNumbers:
    """The private scalar and public numbers of a SoftPrivateKey, shaped like cryptography's
    EllipticCurvePrivateNumbers."""
    private_value: int
    public_numbers: SoftPublicNumbers


@dataclass(frozen=True)
class SoftPrivateKey:
    """A private key on a curve OpenSSL lacks (cryptography's EllipticCurvePrivateKey, as far as used here)."""

    curve: Curve
    d: int
    public: SoftPublicKey

    @property
    def key_size(self) -> int:
        """The curve's key size in bits."""
        return self.curve.key_bits

    def public_key(self) -> SoftPublicKey:
        """The matching public key."""
        return self.public

    def private_numbers(self) -> SoftPrivateNumbers:
        """The private scalar and public numbers, as cryptography's ``private_numbers()`` gives them."""
        return SoftPrivateNumbers(self.d, self.public.public_numbers())

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        """A DER ECDSA signature over a prehashed ``data``."""
        return utils.encode_dss_signature(*ecdsa_sign(self.curve, self.d, data))

    def exchange(self, algorithm: ec.ECDH, peer_public_key: SoftPublicKey) -> bytes:
        """ECDH: the x coordinate of [d]Q, the size of the curve."""
        if peer_public_key.curve != self.curve:
            raise ValueError("the peer key is on another curve")
        point = self.curve.multiply(self.d, peer_public_key.point)
        if point is None:
            raise ValueError("the shared point is the point at infinity")
        return self.curve.to_bytes(point[0])


def derive_private_key(curve_id: int, d: int) -> Any:
    """The private key ``d`` on the curve; ValueError unless 0 < d < n."""
    c = curve(curve_id)
    if not 0 < d < c.n:
        raise ValueError("the private scalar is not in [1, n - 1]")
    native = openssl_curve(curve_id)
    if native is not None:
        return ec.derive_private_key(d, native)
    point = c.multiply(d)
    assert point is not None
    return SoftPrivateKey(c, d, SoftPublicKey(c, point))


def generate_private_key(curve_id: int) -> Any:
    """A fresh random private key on the curve."""
    native = openssl_curve(curve_id)
    if native is not None:
        return ec.generate_private_key(native)
    return derive_private_key(curve_id, secrets.randbelow(curve(curve_id).n - 1) + 1)


def load_public_key(curve_id: int, x: int, y: int) -> Any:
    """The public key (x, y) on the curve; ValueError if that is not a point on it."""
    native = openssl_curve(curve_id)
    if native is not None:
        return ec.EllipticCurvePublicNumbers(x, y, native).public_key()
    c = curve(curve_id)
    if not c.on_curve((x, y)):
        raise ValueError("not a point on the curve")
    return SoftPublicKey(c, (x, y))


def public_point(curve_id: int, d: int) -> tuple[int, int]:
    """[d]G, through OpenSSL where it has the curve."""
    numbers = derive_private_key(curve_id, d).public_key().public_numbers()
    return numbers.x, numbers.y


# ----------------------------------------------------------------------------- key exchange helpers


def avf(x: int, n: int) -> int:
    """The associate value function of ECMQV (SP 800-56A 5.7.2.2): 2^f + (x mod 2^f), f = ceil(bits(n)/2)."""
    f = (n.bit_length() + 1) // 2
    return (x & ((1 << f) - 1)) | (1 << f)


def avf_sm2(x: int, n: int) -> int:
    """SM2's associate value (GB/T 32918.3 6.1): w = ceil(ceil(log2 n) / 2) - 1, then 2^w + (x mod 2^w).

    (The reference implementation computes w one smaller; the standard's value is used here.)
    """
    w = (n.bit_length() + 1) // 2 - 1
    return (x & ((1 << w) - 1)) | (1 << w)
