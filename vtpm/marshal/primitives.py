"""Building blocks for TPM wire types on top of `construct`.

TPM structures are big-endian. Sized buffers (TPM2B) carry a maximum size:
a larger size field is TPM_RC_SIZE, not a parse failure, so the engine can
answer with the right code and parameter number.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import construct as cs

from vtpm.constants import RC
from vtpm.errors import TpmError

U8 = cs.Int8ub
U16 = cs.Int16ub
U32 = cs.Int32ub
U64 = cs.Int64ub
I32 = cs.Int32sb


class Tpm2b(cs.Construct):
    """TPM2B_*: a UINT16 size then that many bytes, at most ``max_size``."""

    def __init__(self, max_size: int, min_size: int = 0) -> None:
        super().__init__()
        self.max_size = max_size
        self.min_size = min_size

    def _parse(self, stream: Any, context: Any, path: str) -> bytes:
        size = cs.stream_read(stream, 2, path)
        n = int.from_bytes(size, "big")
        if n > self.max_size or n < self.min_size:
            raise TpmError(RC.SIZE)
        return cs.stream_read(stream, n, path)

    def _build(self, obj: bytes, stream: Any, context: Any, path: str) -> bytes:
        data = bytes(obj)
        if len(data) > self.max_size:
            raise cs.SizeofError(f"{len(data)} bytes exceed TPM2B maximum {self.max_size}", path=path)
        cs.stream_write(stream, len(data).to_bytes(2, "big") + data, 2 + len(data), path)
        return data

    def _sizeof(self, context: Any, path: str) -> int:
        raise cs.SizeofError(path=path)


class Tpm2bStruct(cs.Subconstruct):
    """A structure wrapped in a TPM2B size (e.g. TPM2B_NV_PUBLIC); the size must match exactly.

    With ``optional`` a size of 0 parses as None (e.g. LoadExternal's absent sensitive area).
    """

    def __init__(self, subcon: cs.Construct, optional: bool = False) -> None:
        super().__init__(subcon)
        self.optional = optional

    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        n = int.from_bytes(cs.stream_read(stream, 2, path), "big")
        if n == 0:
            if self.optional:
                return None
            raise TpmError(RC.SIZE)
        data = cs.stream_read(stream, n, path)
        inner = io.BytesIO(data)
        try:
            value = self.subcon.parse_stream(inner)
        except cs.StreamError:
            raise TpmError(RC.SIZE) from None
        if inner.tell() != n:
            raise TpmError(RC.SIZE)
        return value

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        data = b"" if obj is None and self.optional else self.subcon.build(obj)
        cs.stream_write(stream, len(data).to_bytes(2, "big") + data, 2 + len(data), path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise cs.SizeofError(path=path)


class OneOf(cs.Adapter):
    """A value restricted to a set; anything else is ``rc`` (e.g. TPM_RC_HASH for an unknown hash)."""

    def __init__(self, subcon: cs.Construct, allowed: Iterable[int], rc: int = RC.VALUE) -> None:
        super().__init__(subcon)
        self.allowed = frozenset(int(a) for a in allowed)
        self.rc = rc

    def _decode(self, obj: int, context: Any, path: str) -> int:
        if obj not in self.allowed:
            raise TpmError(self.rc)
        return obj

    def _encode(self, obj: int, context: Any, path: str) -> int:
        return int(obj)


def parse_exact(construct: cs.Construct, data: bytes) -> Any:
    """Parse ``data`` completely; trailing bytes are an error (TPM_RC_SIZE)."""
    stream = io.BytesIO(data)
    value = construct.parse_stream(stream)
    if stream.tell() != len(data):
        raise TpmError(RC.SIZE)
    return value
