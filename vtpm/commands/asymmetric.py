"""Asymmetric Primitives (Part 3, section 14): RSA_Encrypt, RSA_Decrypt, ECDH_KeyGen, ECDH_ZGen,
ECC_Parameters and ZGen_2Phase."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import padding

from vtpm import ecmath
from vtpm.constants import ALG, CC, HT, RC, TPMA_OBJECT
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.entities.commit import end_commit, generate_r
from vtpm.entities.keys import KEY
from vtpm.entities.object_table import get_object
from vtpm.errors import TpmError
from vtpm.keyops import hash_class
from vtpm.marshal.objects import TPM2B_ECC_PARAMETER, TPM2B_ECC_POINT, TPM2B_PUBLIC_KEY_RSA, TPMT_ASYM_SCHEME
from vtpm.marshal.primitives import U16, OneOf
from vtpm.marshal.structures import TPM2B_DATA
from vtpm.objects import LoadedObject

if TYPE_CHECKING:
    from vtpm.engine import Tpm

A = TPMA_OBJECT
PUBLIC_KEY = handle_spec("keyHandle", types=[HT.TRANSIENT, HT.PERSISTENT])


def _decryption_key(tpm: Tpm, handle: int, kind: int) -> LoadedObject:
    """An unrestricted decryption key of type ``kind`` (RSA for RSA_*, ECC for ECDH_*)."""
    key = get_object(tpm, handle)
    if key.public.type != kind:
        raise TpmError(RC.KEY, handle=1)
    if key.public.has(A.RESTRICTED) or not key.public.has(A.DECRYPT):
        raise TpmError(RC.ATTRIBUTES, handle=1)
    return key


def _rsa_scheme(key: LoadedObject, requested: Any) -> tuple[int, int]:
    params = key.public.area.parameters.scheme
    if params.scheme != ALG.NULL:
        if requested.scheme not in (ALG.NULL, params.scheme):
            raise TpmError(RC.SCHEME, param=2)
        return params.scheme, params.details.hashAlg if params.details is not None else ALG.NULL
    if requested.scheme not in (ALG.NULL, ALG.RSAES, ALG.OAEP):
        raise TpmError(RC.SCHEME, param=2)
    return requested.scheme, requested.details.hashAlg if requested.details is not None else ALG.NULL


def _label(label: bytes) -> bytes:
    return label if not label or label.endswith(b"\x00") else label + b"\x00"


@command(CC.RSA_Encrypt, handles=[PUBLIC_KEY],
         params=[("message", TPM2B_PUBLIC_KEY_RSA), ("inScheme", TPMT_ASYM_SCHEME), ("label", TPM2B_DATA)],
         response_tpm2b=True)
def rsa_encrypt(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_RSA_Encrypt (Part 3 14.2): encrypt with the public part of a loaded RSA decryption key under the key's or
    the caller's scheme (OAEP, RSAES or none)."""
    key = _decryption_key(tpm, cmd.handles[0], ALG.RSA)
    scheme, alg = _rsa_scheme(key, cmd.params.inScheme)
    public = key.public_key()
    message = cmd.params.message
    size = public.key_size // 8
    try:
        if scheme == ALG.OAEP:
            out = public.encrypt(message, padding.OAEP(padding.MGF1(hash_class(alg)), hash_class(alg), _label(cmd.params.label) or None))
        elif scheme == ALG.RSAES:
            out = public.encrypt(message, padding.PKCS1v15())
        else:  # raw RSA: the message is a number smaller than the modulus
            value = int.from_bytes(message, "big")
            if value >= public.public_numbers().n:
                raise TpmError(RC.VALUE, param=1)
            out = pow(value, public.public_numbers().e, public.public_numbers().n).to_bytes(size, "big")
    except ValueError:
        raise TpmError(RC.VALUE, param=1) from None
    return Response(params=TPM2B_PUBLIC_KEY_RSA.build(out))


@command(CC.RSA_Decrypt, handles=[KEY],
         params=[("cipherText", TPM2B_PUBLIC_KEY_RSA), ("inScheme", TPMT_ASYM_SCHEME), ("label", TPM2B_DATA)],
         response_tpm2b=True)
def rsa_decrypt(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_RSA_Decrypt (Part 3 14.3): decrypt with a loaded RSA decryption key under the key's or the caller's scheme;
    the key's authorization is required."""
    key = _decryption_key(tpm, cmd.handles[0], ALG.RSA)
    scheme, alg = _rsa_scheme(key, cmd.params.inScheme)
    private = key.private_key()
    data = cmd.params.cipherText
    size = private.key_size // 8
    if len(data) != size:
        raise TpmError(RC.SIZE, param=1)
    try:
        if scheme == ALG.OAEP:
            out = private.decrypt(data, padding.OAEP(padding.MGF1(hash_class(alg)), hash_class(alg), _label(cmd.params.label) or None))
        elif scheme == ALG.RSAES:
            out = private.decrypt(data, padding.PKCS1v15())
        else:
            numbers = private.private_numbers()
            value = int.from_bytes(data, "big")
            if value >= numbers.public_numbers.n:
                raise TpmError(RC.VALUE, param=1)
            out = pow(value, numbers.d, numbers.public_numbers.n).to_bytes(size, "big")
    except ValueError:
        raise TpmError(RC.VALUE, param=1) from None
    return Response(params=TPM2B_PUBLIC_KEY_RSA.build(out))


def _point(key: LoadedObject, public: Any) -> dict[str, bytes]:
    size = ecmath.curve(key.public.area.parameters.curveID).size
    numbers = public.public_numbers()
    return {"x": numbers.x.to_bytes(size, "big"), "y": numbers.y.to_bytes(size, "big")}


def _multiply(key: LoadedObject, scalar: int, x: bytes, y: bytes, param: int) -> dict[str, bytes]:
    """The full point scalar*(x, y) on the key's curve; the TPM returns both coordinates."""
    curve = ecmath.curve(key.public.area.parameters.curveID)
    point = (int.from_bytes(x, "big"), int.from_bytes(y, "big"))
    if not curve.on_curve(point):
        raise TpmError(RC.ECC_POINT, param=param)
    result = curve.multiply(scalar, point)
    if result is None:
        raise TpmError(RC.NO_RESULT)
    return curve.point_bytes(result)


@command(CC.ECDH_KeyGen, handles=[PUBLIC_KEY], response_tpm2b=True)
def ecdh_keygen(tpm: Tpm, cmd: Command) -> Response:
    """An ephemeral key and Z = [ephemeral]Q for any ECC key: only its public point is used (Part 3 14.4)."""
    key = get_object(tpm, cmd.handles[0])
    if key.public.type != ALG.ECC:
        raise TpmError(RC.KEY, handle=1)
    ephemeral = ecmath.generate_private_key(key.public.area.parameters.curveID)
    unique = key.public.area.unique
    z_point = _multiply(key, ephemeral.private_numbers().private_value, unique.x, unique.y, 0)
    body = TPM2B_ECC_POINT.build(z_point) + TPM2B_ECC_POINT.build(_point(key, ephemeral.public_key()))
    return Response(params=body)


@command(CC.ECDH_ZGen, handles=[KEY], params=[("inPoint", TPM2B_ECC_POINT)], response_tpm2b=True)
def ecdh_zgen(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_ECDH_ZGen (Part 3 14.5): Z = [d]inPoint with a loaded ECC decryption key; TPM_RC_ECC_POINT for a point not
    on the key's curve."""
    key = _decryption_key(tpm, cmd.handles[0], ALG.ECC)
    p = cmd.params.inPoint
    scalar = key.private_key().private_numbers().private_value
    return Response(params=TPM2B_ECC_POINT.build(_multiply(key, scalar, p.x, p.y, 1)))


# ----------------------------------------------------------------------------- ECC_Parameters

TPMI_ECC_CURVE = OneOf(U16, ecmath.CURVES, RC.CURVE)


def _scheme_bytes(scheme: tuple[int, int]) -> bytes:
    selector, alg = scheme
    return U16.build(selector) + (U16.build(alg) if selector != ALG.NULL else b"")


@command(CC.ECC_Parameters, params=[("curveID", TPMI_ECC_CURVE)])
def ecc_parameters(tpm: Tpm, cmd: Command) -> Response:
    """TPMS_ALGORITHM_DETAIL_ECC of a curve the TPM implements (Part 3 14.6)."""
    c = ecmath.curve(cmd.params.curveID)
    body = U16.build(c.curve_id) + U16.build(c.key_bits) + _scheme_bytes(c.kdf) + _scheme_bytes(c.sign)
    for value in (c.p, c.a, c.b, c.gx, c.gy, c.n):
        # a zero coefficient (a of the BN curves) is one zero byte, as the reference's ECC_ZERO
        body += TPM2B_ECC_PARAMETER.build(c.to_bytes(value) if value else b"\x00")
    body += TPM2B_ECC_PARAMETER.build(c.h.to_bytes((c.h.bit_length() + 7) // 8, "big"))
    return Response(params=body)


# ----------------------------------------------------------------------------- ZGen_2Phase

TPMI_ECC_KEY_EXCHANGE = OneOf(U16, [ALG.ECDH, ALG.ECMQV, ALG.SM2], RC.SCHEME)
EMPTY_POINT = TPM2B_ECC_POINT.build({"x": b"", "y": b""})


def _on_curve(curve: ecmath.Curve, point: Any, param: int) -> tuple[int, int]:
    value = (int.from_bytes(point.x, "big"), int.from_bytes(point.y, "big"))
    if not curve.on_curve(value):
        raise TpmError(RC.ECC_POINT, param=param)
    return value


def _z(curve: ecmath.Curve, point: tuple[int, int] | None) -> bytes:
    if point is None:
        raise TpmError(RC.NO_RESULT)
    return TPM2B_ECC_POINT.build(curve.point_bytes(point))


def two_phase_z(curve: ecmath.Curve, scheme: int, ds_a: int, de_a: int, qs_b: tuple[int, int],
                qe_b: tuple[int, int]) -> tuple[bytes, bytes]:
    """(outZ1, outZ2) of a two-phase key exchange where this TPM is party A (Part 1 C.6).

    ECDH (SP 800-56A C(2e, 2s, ECC CDH), Full Unified Model): Z1 = [dsA]QsB, Z2 = [deA]QeB.
    ECMQV (SP 800-56A C(2e, 2s, ECC MQV)): Z1 = [h * implicitsigA](QeB + [avf(QeB)]QsB) with
    implicitsigA = deA + avf(QeA) * dsA mod n; no Z2.
    SM2 (GB/T 32918.3): Z1 = [h * tA](QsB + [avf(QeB)]QeB) with tA = dsA + avf(QeA) * deA mod n; no Z2.
    """
    n = curve.n
    if scheme == ALG.ECDH:
        return _z(curve, curve.multiply(ds_a, qs_b)), _z(curve, curve.multiply(de_a, qe_b))
    qe_a = curve.multiply(de_a)
    assert qe_a is not None
    if scheme == ALG.ECMQV:
        implicit = (de_a + ecmath.avf(qe_a[0], n) * ds_a) % n
        point = curve.multiply_add(1, qe_b, ecmath.avf(qe_b[0], n), qs_b)
    else:
        implicit = (ds_a + ecmath.avf_sm2(qe_a[0], n) * de_a) % n
        point = curve.multiply_add(1, qs_b, ecmath.avf_sm2(qe_b[0], n), qe_b)
    if point is None:
        raise TpmError(RC.NO_RESULT)
    return _z(curve, curve.multiply(curve.h * implicit % n, point)), EMPTY_POINT


@command(CC.ZGen_2Phase, handles=[handle_spec("keyA", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
         params=[("inQsB", TPM2B_ECC_POINT), ("inQeB", TPM2B_ECC_POINT), ("inScheme", TPMI_ECC_KEY_EXCHANGE),
                 ("counter", U16)],
         response_tpm2b=True)
def zgen_2phase(tpm: Tpm, cmd: Command) -> Response:
    """The second phase of a two-phase key exchange with the commitment EC_Ephemeral made (Part 3 14.7)."""
    key = get_object(tpm, cmd.handles[0])
    p = cmd.params
    if key.public.type != ALG.ECC:
        raise TpmError(RC.KEY, handle=1)
    if key.public.has(A.RESTRICTED) or not key.public.has(A.DECRYPT):
        raise TpmError(RC.ATTRIBUTES, handle=1)
    scheme = key.public.area.parameters.scheme.scheme
    if scheme != ALG.NULL and scheme != p.inScheme:
        raise TpmError(RC.SCHEME, param=3)
    curve = ecmath.curve(key.public.area.parameters.curveID)
    qs_b = _on_curve(curve, p.inQsB, 1)
    qe_b = _on_curve(curve, p.inQeB, 2)
    r = generate_r(tpm, curve, p.counter, b"")
    if r is None:
        raise TpmError(RC.VALUE, param=4)
    if key.sensitive is None:
        raise TpmError(RC.KEY, handle=1)
    z1, z2 = two_phase_z(curve, p.inScheme, int.from_bytes(key.sensitive.secret, "big"), r, qs_b, qe_b)
    end_commit(tpm, p.counter)
    return Response(params=z1 + z2)
