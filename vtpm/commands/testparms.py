"""TestParms (Part 3, 10.4): may the caller use these key parameters with this TPM?"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from vtpm.commands.capability import AES_KEY_BITS, ECC_CURVES, RSA_KEY_BITS
from vtpm.constants import ALG, CC, RC
from vtpm.core import Command, Response, command
from vtpm.crypto import HASHES
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U16
from vtpm.marshal.structures import TPM2B_MAX_BUFFER  # noqa: F401  (shared buffer limits)

if TYPE_CHECKING:
    from vtpm.engine import Tpm

SYM_MODES = {ALG.CFB}  # storage keys' symmetric definitions use CFB
RSA_SCHEMES = {ALG.RSASSA, ALG.RSAPSS, ALG.RSAES, ALG.OAEP, ALG.NULL}
ECC_SCHEMES = {ALG.ECDSA, ALG.ECDH, ALG.NULL}
KDF_SCHEMES = {ALG.NULL, ALG.KDF1_SP800_56A, ALG.KDF1_SP800_108}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)

    def u16(self) -> int:
        raw = self.stream.read(2)
        if len(raw) != 2:
            raise TpmError(RC.INSUFFICIENT, param=1)
        return int.from_bytes(raw, "big")

    def u32(self) -> int:
        return self.u16() << 16 | self.u16()

    def done(self) -> bool:
        return self.stream.tell() == len(self.stream.getbuffer())


def _hash(alg: int, allow_null: bool = False) -> None:
    if alg not in HASHES and not (allow_null and alg == ALG.NULL):
        raise TpmError(RC.HASH, param=1)


def _symmetric(reader: _Reader, allow_null: bool) -> None:
    alg = reader.u16()
    if alg == ALG.NULL:
        if not allow_null:
            raise TpmError(RC.SYMMETRIC, param=1)
        return
    if alg != ALG.AES:
        raise TpmError(RC.SYMMETRIC, param=1)
    if reader.u16() not in AES_KEY_BITS:
        raise TpmError(RC.KEY_SIZE, param=1)
    if reader.u16() not in SYM_MODES | {ALG.CTR, ALG.OFB, ALG.CBC, ALG.ECB, ALG.NULL}:
        raise TpmError(RC.MODE, param=1)


def _scheme(reader: _Reader, allowed: set[int]) -> None:
    scheme = reader.u16()
    if scheme not in allowed:
        raise TpmError(RC.SCHEME, param=1)
    if scheme != ALG.NULL:
        _hash(reader.u16())


@command(CC.TestParms, params=[("raw", __import__("construct").GreedyBytes)])
def test_parms(tpm: Tpm, cmd: Command) -> Response:
    reader = _Reader(cmd.params.raw)
    kind = reader.u16()
    if kind == ALG.RSA:
        _symmetric(reader, allow_null=True)
        _scheme(reader, RSA_SCHEMES)
        if reader.u16() not in RSA_KEY_BITS:
            raise TpmError(RC.VALUE, param=1)
        exponent = reader.u32()
        if exponent not in (0, 65537) and (exponent < 3 or exponent % 2 == 0):
            raise TpmError(RC.VALUE, param=1)
    elif kind == ALG.ECC:
        _symmetric(reader, allow_null=True)
        _scheme(reader, ECC_SCHEMES)
        if reader.u16() not in ECC_CURVES:
            raise TpmError(RC.CURVE, param=1)
        _scheme(reader, KDF_SCHEMES)
    elif kind == ALG.KEYEDHASH:
        scheme = reader.u16()
        if scheme == ALG.HMAC:
            _hash(reader.u16())
        elif scheme == ALG.XOR:
            _hash(reader.u16())
            if reader.u16() not in KDF_SCHEMES:
                raise TpmError(RC.KDF, param=1)
        elif scheme != ALG.NULL:
            raise TpmError(RC.SCHEME, param=1)
    elif kind == ALG.SYMCIPHER:
        _symmetric(reader, allow_null=False)
    else:
        raise TpmError(RC.TYPE, param=1)
    if not reader.done():
        raise TpmError(RC.SIZE)
    return Response()


_ = U16
