"""Ephemeral EC Keys (Part 3, section 19): Commit and EC_Ephemeral.

Both make a commitment (vtpm.entities.commit): a secret r the TPM can derive again from its
commit nonce and the returned counter value. Commit is the first phase of an anonymous (ECDAA)
signature with a key: K = [ds]P2, L = [r]P2 and E = [r]P1 (E = [r]G without P1 and P2), where
P2 = (H_nameAlg(s2) mod p, y2); the Sign that names the counter completes it. EC_Ephemeral is the
first phase of a two-phase key exchange: Q = [r]G, which ZGen_2Phase later uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtpm import ecmath
from vtpm.constants import ALG, CC, HT, RC
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import digest
from vtpm.entities.commit import commit, generate_r
from vtpm.entities.object_table import get_object
from vtpm.errors import TpmError
from vtpm.marshal.objects import TPM2B_ECC_PARAMETER, TPM2B_ECC_POINT
from vtpm.marshal.primitives import U16, OneOf
from vtpm.marshal.structures import TPM2B_SENSITIVE_DATA

if TYPE_CHECKING:
    from vtpm.engine import Tpm

ANONYMOUS_SCHEMES = {ALG.ECDAA}  # the schemes whose signatures need a commitment
TPMI_ECC_CURVE = OneOf(U16, ecmath.CURVES, RC.CURVE)
EMPTY_POINT = TPM2B_ECC_POINT.build({"x": b"", "y": b""})  # two empty coordinates


def point_of(curve: ecmath.Curve, point: Any) -> tuple[int, int] | None:
    """An input point on ``curve``, or None when it is not on it."""
    value = (int.from_bytes(point.x, "big"), int.from_bytes(point.y, "big"))
    return value if curve.on_curve(value) else None


def point_out(curve: ecmath.Curve, point: tuple[int, int] | None) -> bytes:
    """A point as a TPM2B_ECC_POINT; TPM_RC_NO_RESULT for the point at infinity."""
    if point is None:
        raise TpmError(RC.NO_RESULT)
    return TPM2B_ECC_POINT.build(curve.point_bytes(point))


@command(CC.Commit, handles=[handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
         params=[("P1", TPM2B_ECC_POINT), ("s2", TPM2B_SENSITIVE_DATA), ("y2", TPM2B_ECC_PARAMETER)],
         response_tpm2b=True)
def commit_command(tpm: Tpm, cmd: Command) -> Response:
    """The first phase of an ECDAA signature (Part 3 19.2), in the reference implementation's order."""
    key = get_object(tpm, cmd.handles[0])
    p = cmd.params
    if key.public.type != ALG.ECC:
        raise TpmError(RC.KEY, handle=1)
    if key.public.area.parameters.scheme.scheme not in ANONYMOUS_SCHEMES:
        raise TpmError(RC.SCHEME, handle=1)
    if bool(p.s2) != bool(p.y2):
        raise TpmError(RC.SIZE, param=3)
    curve = ecmath.curve(key.public.area.parameters.curveID)
    r = generate_r(tpm, curve, None, key.name)
    if r is None:
        raise TpmError(RC.NO_RESULT)
    p2 = None
    if p.s2:
        x2 = int.from_bytes(digest(key.public.name_alg, p.s2), "big") % curve.p
        p2 = (x2, int.from_bytes(p.y2, "big"))
        if not curve.on_curve(p2):
            raise TpmError(RC.ECC_POINT, param=2)
        if key.sensitive is None:
            raise TpmError(RC.KEY, handle=1)
    p1 = None
    if p.P1.x or p.P1.y:
        p1 = point_of(curve, p.P1)
        if p1 is None:
            raise TpmError(RC.ECC_POINT, param=1)
    k_out = l_out = e_out = EMPTY_POINT
    if p2 is not None:
        d = int.from_bytes(key.sensitive.secret, "big")
        k_out = point_out(curve, curve.multiply(d, p2))
        l_out = point_out(curve, curve.multiply(r, p2))
    if p1 is not None or p2 is None:
        e_out = point_out(curve, curve.multiply(r, p1 if p1 is not None else curve.g))
    counter = commit(tpm)
    return Response(params=k_out + l_out + e_out + U16.build(counter))


@command(CC.EC_Ephemeral, params=[("curveID", TPMI_ECC_CURVE)], response_tpm2b=True)
def ec_ephemeral(tpm: Tpm, cmd: Command) -> Response:
    """The first phase of a two-phase key exchange (Part 3 19.3): Q = [r]G for a committed r."""
    curve = ecmath.curve(cmd.params.curveID)
    while True:
        r = generate_r(tpm, curve, None, b"")
        if r is None:
            raise TpmError(RC.NO_RESULT)
        point = curve.multiply(r)
        counter = commit(tpm)  # also when r gave no point, so that the value is skipped
        if point is not None:
            return Response(params=point_out(curve, point) + U16.build(counter))
