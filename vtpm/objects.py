"""TPM objects: templates, key generation (deterministic for primaries), protection of
private areas under a parent, and the keys as `cryptography` objects.

Primary keys come from the hierarchy seed and the template: the same seed and
template always give the same key (an EK re-created from the same state is the
same EK). RSA primes are searched for in a KDFa stream (vtpm.rsakeygen, on GMP);
the result is cached by the engine, since a prime search still takes tens of milliseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

import construct as cs
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from vtpm import ecmath
from vtpm.constants import ALG, OBJECT_RESERVED_MASK, RC, TPMA_OBJECT
from vtpm.core import Entity
from vtpm.crypto import HASHES, digest, hmac_digest, kdfa
from vtpm.errors import TpmError
from vtpm.marshal.objects import TPM2B_SENSITIVE, TPMT_PUBLIC
from vtpm.marshal.primitives import parse_exact
from vtpm.rsakeygen import rsa_primes
from vtpm.sessions import CFB

A = TPMA_OBJECT
RSA_KEY_BITS = (1024, 2048, 3072, 4096)
AES_KEY_BITS = (128, 192, 256)
DEFAULT_EXPONENT = 65537


@dataclass
class Public:
    """A parsed public area with its canonical bytes and Name."""

    area: Any  # construct Container of TPMT_PUBLIC
    raw: bytes

    @classmethod
    def from_container(cls, area: Any) -> "Public":
        """A Public from a parsed TPMT_PUBLIC container, marshalled again to keep the exact bytes its Name is computed
        over."""
        return cls(area, TPMT_PUBLIC.build(area))

    @classmethod
    def parse(cls, raw: bytes) -> "Public":
        """A Public from marshalled TPMT_PUBLIC bytes; construct's errors for bytes that are not one."""
        return cls.from_container(TPMT_PUBLIC.parse(raw))

    @property
    def type(self) -> int:
        """The object's TPMI_ALG_PUBLIC (RSA, ECC, KEYEDHASH, SYMCIPHER)."""
        return self.area.type

    @property
    def name_alg(self) -> int:
        """The nameAlg that computes the object's Name."""
        return self.area.nameAlg

    @property
    def attributes(self) -> int:
        """The TPMA_OBJECT bits."""
        return self.area.objectAttributes

    def has(self, flag: int) -> bool:
        """Whether the TPMA_OBJECT bit ``flag`` is set (any of them, for several bits)."""
        return bool(self.attributes & flag)

    @property
    def name(self) -> bytes:
        """The object's Name: nameAlg followed by the nameAlg digest of the marshalled TPMT_PUBLIC."""
        return self.name_alg.to_bytes(2, "big") + digest(self.name_alg, self.raw)

    @property
    def is_storage_parent(self) -> bool:
        """Whether this is a storage key (restricted, decrypt, not sign): one that may be a parent."""
        return self.has(A.RESTRICTED) and self.has(A.DECRYPT) and not self.has(A.SIGN_ENCRYPT)

    def symmetric(self) -> Any:
        """The TPMT_SYM_DEF_OBJECT of the object (a SYMCIPHER's own, a parent's protection scheme), or None for a type
        that has none."""
        params = self.area.parameters
        return params.sym if self.type == ALG.SYMCIPHER else getattr(params, "symmetric", None)


@dataclass
class Sensitive:
    """The secret part of an object: authValue, seedValue and the key or data."""

    sensitive_type: int
    auth_value: bytes = field(repr=False)
    seed_value: bytes = field(repr=False)
    secret: bytes = field(repr=False)  # RSA prime p, ECC private scalar, symmetric key or keyed-hash data

    def build(self) -> bytes:
        """The TPM2B_SENSITIVE holding this TPMT_SENSITIVE."""
        return TPM2B_SENSITIVE.build({
            "sensitiveType": self.sensitive_type,
            "authValue": self.auth_value,
            "seedValue": self.seed_value,
            "sensitive": self.secret,
        })

    @classmethod
    def parse_tpm2b(cls, raw: bytes) -> "Sensitive":
        """A Sensitive from TPM2B_SENSITIVE bytes; construct's errors for bytes that are not one."""
        parsed = TPM2B_SENSITIVE.parse(raw)
        return cls(parsed.sensitiveType, parsed.authValue, parsed.seedValue, parsed.sensitive)


# ----------------------------------------------------------------------------- template checks


def _hash_or(alg: int, rc: int, allow_null: bool = False) -> None:
    if alg not in HASHES and not (allow_null and alg == ALG.NULL):
        raise TpmError(rc)


def check_template(public: Public, *, param: int, primary: bool) -> None:
    """The consistency rules of Part 1 27 and Part 3 12.1 for a new object's template."""
    attrs = public.attributes
    try:
        if attrs & OBJECT_RESERVED_MASK:
            raise TpmError(RC.RESERVED_BITS)
        _hash_or(public.name_alg, RC.HASH)
        if public.area.authPolicy and len(public.area.authPolicy) != HASHES[public.name_alg].size:
            raise TpmError(RC.SIZE)
        if attrs & A.FIXED_TPM and not attrs & A.FIXED_PARENT:
            raise TpmError(RC.ATTRIBUTES)
        if primary and bool(attrs & A.FIXED_TPM) != bool(attrs & A.FIXED_PARENT):
            raise TpmError(RC.ATTRIBUTES)
        restricted, decrypt, sign = attrs & A.RESTRICTED, attrs & A.DECRYPT, attrs & A.SIGN_ENCRYPT
        kind = public.type
        params = public.area.parameters
        if bool(sign) == bool(decrypt):
            if restricted:  # a restricted key either signs or decrypts
                raise TpmError(RC.ATTRIBUTES)
            if kind != ALG.KEYEDHASH and not sign:  # only data objects do neither
                raise TpmError(RC.ATTRIBUTES)
        if kind == ALG.KEYEDHASH:
            _check_keyed_hash_scheme(params.scheme, bool(sign), bool(decrypt), bool(restricted))
        elif kind == ALG.SYMCIPHER:
            _check_sym(params.sym, allow_null=False)
            if restricted and sign:  # a restricted symmetric key is a storage parent: decrypt only
                raise TpmError(RC.ATTRIBUTES)
        elif kind in (ALG.RSA, ALG.ECC):
            scheme = params.scheme.scheme
            if scheme not in (RSA_KEY_SCHEMES if kind == ALG.RSA else ECC_KEY_SCHEMES):
                raise TpmError(RC.VALUE if kind == ALG.RSA else RC.SCHEME)  # as the unmarshaling answers
            if kind == ALG.RSA:
                if params.keyBits not in RSA_KEY_BITS:
                    raise TpmError(RC.VALUE)  # TPMI_RSA_KEY_BITS does not take it (as libtpms)
            elif params.curveID not in ecmath.CURVES:
                raise TpmError(RC.CURVE)
            _check_asym_scheme(kind, params.scheme, bool(sign), bool(decrypt), bool(restricted))
            if restricted and decrypt:
                _check_sym(params.symmetric, allow_null=False)
            elif params.symmetric.algorithm != ALG.NULL:
                raise TpmError(RC.SYMMETRIC)
            if kind == ALG.RSA:
                if params.exponent not in (0, DEFAULT_EXPONENT) and (params.exponent < 3 or params.exponent % 2 == 0):
                    raise TpmError(RC.VALUE)
            elif params.kdf.scheme != ALG.NULL:
                raise TpmError(RC.KDF)
        else:
            raise TpmError(RC.TYPE)
    except TpmError as exc:
        raise exc.at_param(param) from None


RSA_KEY_SCHEMES = {ALG.NULL, ALG.RSASSA, ALG.RSAPSS, ALG.RSAES, ALG.OAEP}
ECC_KEY_SCHEMES = {ALG.NULL, ALG.ECDSA, ALG.ECDAA, ALG.ECSCHNORR, ALG.SM2, ALG.ECDH, ALG.ECMQV}
SIGN_SCHEMES = {ALG.RSA: {ALG.RSASSA, ALG.RSAPSS}, ALG.ECC: {ALG.ECDSA, ALG.ECDAA, ALG.ECSCHNORR, ALG.SM2}}
DECRYPT_SCHEMES = {ALG.RSA: {ALG.RSAES, ALG.OAEP}, ALG.ECC: {ALG.ECDH, ALG.ECMQV, ALG.SM2}}


def _check_keyed_hash_scheme(scheme: Any, sign: bool, decrypt: bool, restricted: bool) -> None:
    """Part 1 27.2.1 / the reference implementation's SchemeChecks for a keyed-hash object: a data
    object (or one that both signs and decrypts) has no scheme, an HMAC key has HMAC, a decryption
    (derivation) key has XOR with, when restricted, the SP 800-108 KDF."""
    kind = scheme.scheme
    if sign == decrypt:
        if kind != ALG.NULL:
            raise TpmError(RC.SCHEME)
    elif sign:
        if kind != ALG.HMAC:
            raise TpmError(RC.SCHEME)
        _hash_or(scheme.details.hashAlg, RC.HASH)
    else:
        if kind != ALG.XOR:
            raise TpmError(RC.SCHEME)
        _hash_or(scheme.details.hashAlg, RC.HASH)
        if restricted and scheme.details.kdf != ALG.KDF1_SP800_108:
            raise TpmError(RC.SCHEME)


def _check_asym_scheme(kind: int, scheme: Any, sign: bool, decrypt: bool, restricted: bool) -> None:
    """The scheme of an RSA or ECC key against its attributes (the reference's SchemeChecks)."""
    selector = scheme.scheme
    if sign == decrypt:  # a key that does both can name no scheme for either
        if selector != ALG.NULL:
            raise TpmError(RC.SCHEME)
    elif sign:
        if selector in SIGN_SCHEMES[kind]:
            _hash_or(scheme.details.hashAlg, RC.HASH)  # a signing scheme needs its hash
        elif restricted or selector != ALG.NULL:
            raise TpmError(RC.SCHEME)
    elif restricted:  # a parent: no scheme
        if selector != ALG.NULL:
            raise TpmError(RC.SCHEME)
    elif selector != ALG.NULL and selector not in DECRYPT_SCHEMES[kind]:
        raise TpmError(RC.SCHEME)
    elif selector not in (ALG.NULL, ALG.RSAES):
        _hash_or(scheme.details.hashAlg, RC.HASH)


def _check_sym(sym: Any, *, allow_null: bool) -> None:
    if sym.algorithm == ALG.NULL:
        if not allow_null:
            raise TpmError(RC.SYMMETRIC)
        return
    if sym.algorithm != ALG.AES:
        raise TpmError(RC.SYMMETRIC)
    if sym.keyBits not in AES_KEY_BITS:
        raise TpmError(RC.KEY_SIZE)
    if sym.mode not in (ALG.CFB, ALG.CTR, ALG.OFB, ALG.CBC, ALG.ECB, ALG.NULL):
        raise TpmError(RC.MODE)


# ----------------------------------------------------------------------------- key generation


class KdfStream:
    """A deterministic byte stream from KDFa: the randomness of primary-key generation."""

    def __init__(self, alg: int, seed: bytes, label: bytes, context: bytes) -> None:
        self.alg, self.seed, self.label, self.context = alg, seed, label, context
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.counter += 1
            out += kdfa(self.alg, self.seed, self.label, self.context, self.counter.to_bytes(4, "big"),
                        HASHES[self.alg].size * 8)
        return out[:n]


def _rsa_exponent(public: Public) -> int:
    return public.area.parameters.exponent or DEFAULT_EXPONENT


def generate(public: Public, data: bytes, random: Any) -> tuple[Public, bytes, bytes]:
    """Generate the key of ``public`` with ``random`` (a callable n -> bytes).

    Returns the completed public area (unique filled in), the secret and a seedValue.
    """
    area = public.area
    kind = public.type
    size = HASHES[public.name_alg].size
    seed_value = random(size) if public.is_storage_parent or kind == ALG.KEYEDHASH else b""
    if kind == ALG.RSA:
        bits, exponent = area.parameters.keyBits, _rsa_exponent(public)
        if isinstance(random, KdfStream) or exponent not in (3, DEFAULT_EXPONENT):
            # a primary: the same seed and template must give the same key, so its primes come from the KDF stream
            p, q = rsa_primes(bits, exponent, random)
            n = p * q
        else:  # an ordinary key: OpenSSL's prime search, several times faster
            numbers = rsa.generate_private_key(exponent, bits).private_numbers()
            p, n = numbers.p, numbers.public_numbers.n
        secret = p.to_bytes(bits // 16, "big")
        area.unique = n.to_bytes(bits // 8, "big")
    elif kind == ALG.ECC:
        curve = ecmath.curve(area.parameters.curveID)
        scalar = int.from_bytes(random(curve.size + 8), "big") % (curve.n - 1) + 1
        x, y = ecmath.public_point(curve.curve_id, scalar)
        secret = curve.to_bytes(scalar)
        area.unique = cs.Container(x=curve.to_bytes(x), y=curve.to_bytes(y))
    elif kind == ALG.SYMCIPHER:
        size_bytes = area.parameters.sym.keyBits // 8
        if data and len(data) != size_bytes:
            raise TpmError(RC.KEY_SIZE, param=1)
        secret = data or random(size_bytes)
        seed_value = random(size)
        area.unique = digest(public.name_alg, seed_value, secret)
    else:  # KEYEDHASH: sealed data, or an HMAC key
        secret = data if data else random(size)
        area.unique = digest(public.name_alg, seed_value, secret)
    return Public.from_container(area), secret, seed_value


def primary_context(template: Public, data: bytes) -> bytes:
    """What a primary key is derived from, besides the seed: the template and sensitive data."""
    return hashlib.sha512(template.raw + b"\0" + data).digest()


# ----------------------------------------------------------------------------- loaded objects


@dataclass
class LoadedObject:
    """An object in a transient slot: public area, sensitive area and where it belongs."""

    public: Public
    sensitive: Sensitive | None  # None for a public-only object (LoadExternal of a public key)
    hierarchy: int
    qualified_name: bytes
    _private_key: Any = field(default=None, repr=False)

    @property
    def name(self) -> bytes:
        """The loaded object's Name (its public area's)."""
        return self.public.name

    def entity(self) -> Entity:
        """The object as an authorization entity: its authValue, authPolicy, DA protection and the
        userWithAuth/adminWithPolicy rules; an object loaded without its sensitive area offers neither authValue nor
        policy."""
        auth = self.sensitive.auth_value if self.sensitive else b""
        return Entity(
            auth,
            da_protected=not self.public.has(A.NO_DA),
            name=self.name,
            auth_policy=self.public.area.authPolicy,
            auth_policy_alg=self.public.name_alg,
            user_needs_policy=not self.public.has(A.USER_WITH_AUTH),
            admin_needs_policy=self.public.has(A.ADMIN_WITH_POLICY),
            # an object loaded without its sensitive area has neither authValue nor usable policy
            auth_available=None if self.sensitive is not None else _never,
        )

    def public_key(self) -> Any:
        """The public key of an RSA or ECC object; TPM_RC_ECC_POINT or TPM_RC_KEY if its unique field is not one."""
        area = self.public.area
        if self.public.type == ALG.RSA:
            n = int.from_bytes(area.unique, "big")
            if len(area.unique) != area.parameters.keyBits // 8:
                raise TpmError(RC.KEY)
            try:
                return rsa.RSAPublicNumbers(_rsa_exponent(self.public), n).public_key()
            except ValueError:  # e.g. an even modulus
                raise TpmError(RC.KEY) from None
        if self.public.type == ALG.ECC:
            size = ecmath.curve(area.parameters.curveID).size
            if len(area.unique.x) > size or len(area.unique.y) > size:
                raise TpmError(RC.ECC_POINT)
            try:
                return ecmath.load_public_key(area.parameters.curveID, int.from_bytes(area.unique.x, "big"),
                                              int.from_bytes(area.unique.y, "big"))
            except ValueError:  # not a point on the curve
                raise TpmError(RC.ECC_POINT) from None
        raise TpmError(RC.TYPE)

    def private_key(self) -> Any:
        """The RSA or ECC private key rebuilt (once) from the sensitive prime or scalar; TPM_RC_KEY without a sensitive
        area, TPM_RC_BINDING when it does not match the public area, TPM_RC_TYPE for other types."""
        if self._private_key is not None:
            return self._private_key
        if self.sensitive is None:
            raise TpmError(RC.KEY)
        area = self.public.area
        if self.public.type == ALG.RSA:
            n = int.from_bytes(area.unique, "big")
            p = int.from_bytes(self.sensitive.secret, "big")
            e = _rsa_exponent(self.public)
            if not p or n % p:
                raise TpmError(RC.BINDING)
            q = n // p
            try:
                d = pow(e, -1, (p - 1) * (q - 1))
                numbers = rsa.RSAPrivateNumbers(
                    p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
                    rsa.RSAPublicNumbers(e, n),
                )
                self._private_key = numbers.private_key()
            except ValueError:  # p and n/p are not the primes of an RSA key with this exponent
                raise TpmError(RC.BINDING) from None
        elif self.public.type == ALG.ECC:
            try:
                private = ecmath.derive_private_key(area.parameters.curveID, int.from_bytes(self.sensitive.secret, "big"))
            except ValueError:  # zero, or not below the curve order
                raise TpmError(RC.BINDING) from None
            if private.public_key().public_numbers() != self.public_key().public_numbers():
                raise TpmError(RC.BINDING)
            self._private_key = private
        else:
            raise TpmError(RC.TYPE)
        return self._private_key


def _never(code: int, policy: bool, admin: bool) -> bool:
    return False


def check_binding(obj: LoadedObject) -> None:
    """The sensitive area must belong to the public area (Part 1 27.4)."""
    if obj.sensitive is None:
        return
    if obj.sensitive.sensitive_type != obj.public.type:
        raise TpmError(RC.TYPE)
    if obj.public.type in (ALG.RSA, ALG.ECC):
        obj.private_key()
    else:
        expected = digest(obj.public.name_alg, obj.sensitive.seed_value, obj.sensitive.secret)
        if expected != obj.public.area.unique:
            raise TpmError(RC.BINDING)


# ----------------------------------------------------------------------------- protection under a parent


def _parent_keys(parent: LoadedObject, name: bytes) -> tuple[bytes, bytes]:
    """(symmetric key, HMAC key) protecting a child's private area (Part 1 22.3, 22.5)."""
    if parent.sensitive is None:
        raise TpmError(RC.KEY)
    sym = parent.public.symmetric()
    alg = parent.public.name_alg
    seed = parent.sensitive.seed_value
    sym_key = kdfa(alg, seed, b"STORAGE", name, b"", sym.keyBits)
    hmac_key = kdfa(alg, seed, b"INTEGRITY", b"", b"", HASHES[alg].size * 8)
    return sym_key, hmac_key


PRIVATE_IV_SIZE = 16  # one AES block


def wrap_private(parent: LoadedObject, sensitive: Sensitive, name: bytes) -> bytes:
    """TPM2B_PRIVATE content laid out as the reference implementation does (SensitiveToPrivate):
    integrity HMAC, a random IV (TPM2B, one block), then the CFB-encrypted TPM2B_SENSITIVE whose
    authValue is padded with zeros to the object's nameAlg digest size, so its length stays hidden.
    The HMAC covers IV and ciphertext, then the Name."""
    sym_key, hmac_key = _parent_keys(parent, name)
    name_alg = int.from_bytes(name[:2], "big")
    pad_to = HASHES[name_alg].size if name_alg in HASHES else 0
    padded = Sensitive(sensitive.sensitive_type, sensitive.auth_value.ljust(pad_to, b"\x00"), sensitive.seed_value,
                       sensitive.secret)
    iv = secrets.token_bytes(PRIVATE_IV_SIZE)
    enc = Cipher(algorithms.AES(sym_key), CFB(iv)).encryptor()
    body = PRIVATE_IV_SIZE.to_bytes(2, "big") + iv + enc.update(padded.build()) + enc.finalize()
    integrity = hmac_digest(parent.public.name_alg, hmac_key, body, name)
    return len(integrity).to_bytes(2, "big") + integrity + body


def unwrap_private(parent: LoadedObject, blob: bytes, name: bytes, *, param: int) -> Sensitive:
    """The sensitive area of a TPM2B_PRIVATE from wrap_private, or from before it carried an IV (the
    whole rest encrypted under a zero IV): both have the same HMAC, and only the layout that was
    written decrypts to a well-formed TPM2B_SENSITIVE. The padded authValue loses its trailing zeros."""
    sym_key, hmac_key = _parent_keys(parent, name)
    if len(blob) < 2:
        raise TpmError(RC.SIZE, param=param)
    size = int.from_bytes(blob[:2], "big")
    integrity, body = blob[2 : 2 + size], blob[2 + size :]
    expected = hmac_digest(parent.public.name_alg, hmac_key, body, name)
    if size != len(expected) or not _equal(integrity, expected):
        raise TpmError(RC.INTEGRITY, param=param)
    layouts = [(bytes(16), body)]
    if len(body) > 2 + PRIVATE_IV_SIZE and int.from_bytes(body[:2], "big") == PRIVATE_IV_SIZE:
        layouts.insert(0, (body[2 : 2 + PRIVATE_IV_SIZE], body[2 + PRIVATE_IV_SIZE :]))
    for iv, encrypted in layouts:
        dec = Cipher(algorithms.AES(sym_key), CFB(iv)).decryptor()
        plain = dec.update(encrypted) + dec.finalize()
        try:
            s = parse_exact(TPM2B_SENSITIVE, plain)
        except (cs.ConstructError, TpmError):
            continue
        return Sensitive(s.sensitiveType, s.authValue.rstrip(b"\x00"), s.seedValue, s.sensitive)
    raise TpmError(RC.SENSITIVE)


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
