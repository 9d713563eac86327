"""Direct readers for the command parameters `construct` declares: the same values and errors, less work.

`construct` builds a context and a stream for every field it parses, which is
most of a small command's time. ``compile_reader`` turns a declared construct
into a function ``read(data, offset) -> (value, offset)`` when it is made only
of the pieces below (integers, TPM2B buffers, restricted values, TPML counts,
structures of those, PCR selection bitmaps, TPMT_HA); anything else returns
None and is parsed by `construct` as before. A reader gives what the construct
parses (``cs.Container`` for structures, ``cs.ListContainer`` for lists) and
fails the same way: ``cs.StreamError`` when the data runs out, ``TpmError``
with the code the construct would raise. ``tests/unit/test_fast_marshal.py``
holds the two to each other on every command's parameters.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import construct as cs

from vtpm.constants import ALG, RC
from vtpm.crypto import HASHES
from vtpm.errors import TpmError
from vtpm.marshal.primitives import OneOf, Tpm2b, Tpm2bStruct
from vtpm.marshal.structures import PCR_SELECT_MAX, PCR_SELECT_MIN, PcrSelectBytes, TpmtHa

Reader = Callable[[bytes, int], tuple[Any, int]]
DIGEST_SIZES = {alg: info.size for alg, info in HASHES.items()}
_ALG_NULL = int(ALG.NULL)  # a plain int: an enum member costs a class attribute lookup per read


def _short() -> cs.StreamError:
    return cs.StreamError("stream read less than specified amount")


def _integer(field: cs.FormatField) -> Reader:
    layout = struct.Struct(field.fmtstr)
    size, unpack = layout.size, layout.unpack_from

    def read(data: bytes, pos: int) -> tuple[int, int]:
        end = pos + size
        if end > len(data):
            raise _short()
        return unpack(data, pos)[0], end

    return read


def _tpm2b(buffer: Tpm2b) -> Reader:
    low, high = buffer.min_size, buffer.max_size

    def read(data: bytes, pos: int) -> tuple[bytes, int]:
        start = pos + 2
        if start > len(data):
            raise _short()
        n = (data[pos] << 8) | data[pos + 1]
        if n > high or n < low:
            raise TpmError(RC.SIZE)
        end = start + n
        if end > len(data):
            raise _short()
        return data[start:end], end

    return read


def _restricted_integer(field: cs.FormatField, adapter: OneOf) -> Reader:
    """An integer restricted to a set, in one call (TPMI_ALG_HASH, a TPML count)."""
    layout = struct.Struct(field.fmtstr)
    size, unpack = layout.size, layout.unpack_from
    allowed, rc = adapter.allowed, adapter.rc

    def read(data: bytes, pos: int) -> tuple[int, int]:
        end = pos + size
        if end > len(data):
            raise _short()
        value = unpack(data, pos)[0]
        if value not in allowed:
            raise TpmError(rc)
        return value, end

    return read


def _counted_structs(count: Reader, fields: list[tuple[str, Reader]]) -> Reader:
    """A TPML of structures (TPML_PCR_SELECTION): the structure's fields read in the list's loop."""
    def read(data: bytes, pos: int) -> tuple[cs.ListContainer, int]:
        n, pos = count(data, pos)
        items = cs.ListContainer()
        for _ in range(n):
            obj = cs.Container()
            for name, field in fields:
                obj[name], pos = field(data, pos)
            items.append(obj)
        return items, pos

    return read


def _one_of(adapter: OneOf, inner: Reader) -> Reader:
    allowed, rc = adapter.allowed, adapter.rc

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        value, pos = inner(data, pos)
        if value not in allowed:
            raise TpmError(rc)
        return value, pos

    return read


def _counted(count: Reader, element: Reader) -> Reader:
    def read(data: bytes, pos: int) -> tuple[cs.ListContainer, int]:
        n, pos = count(data, pos)
        items = cs.ListContainer()
        for _ in range(n):
            item, pos = element(data, pos)
            items.append(item)
        return items, pos

    return read


def _counted_ha(count: Reader, allow_null: bool) -> Reader:
    """A TPML of TPMT_HA (TPML_DIGEST_VALUES: every PCR_Extend): ``_tpmt_ha`` read in the list's loop."""
    def read(data: bytes, pos: int) -> tuple[cs.ListContainer, int]:
        n, pos = count(data, pos)
        items = cs.ListContainer()
        length = len(data)
        for _ in range(n):
            start = pos + 2
            if start > length:
                raise _short()
            alg = (data[pos] << 8) | data[pos + 1]
            if alg == _ALG_NULL and allow_null:
                items.append(cs.Container(hashAlg=alg, digest=b""))
                pos = start
                continue
            size = DIGEST_SIZES.get(alg)
            if size is None:
                raise TpmError(RC.HASH)
            pos = start + size
            if pos > length:
                raise _short()
            items.append(cs.Container(hashAlg=alg, digest=data[start:pos]))
        return items, pos

    return read


def _struct(fields: list[tuple[str, Reader]]) -> Reader:
    def read(data: bytes, pos: int) -> tuple[cs.Container, int]:
        obj = cs.Container()
        for name, field in fields:
            obj[name], pos = field(data, pos)
        return obj, pos

    return read


def _pcr_select(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise _short()
    n = data[pos]
    if not PCR_SELECT_MIN <= n <= PCR_SELECT_MAX:
        raise TpmError(RC.VALUE)
    end = pos + 1 + n
    if end > len(data):
        raise _short()
    return data[pos + 1 : end], end


def _tpmt_ha(allow_null: bool) -> Reader:
    def read(data: bytes, pos: int) -> tuple[cs.Container, int]:
        start = pos + 2
        if start > len(data):
            raise _short()
        alg = (data[pos] << 8) | data[pos + 1]
        if alg == _ALG_NULL and allow_null:
            return cs.Container(hashAlg=alg, digest=b""), start
        size = DIGEST_SIZES.get(alg)
        if size is None:
            raise TpmError(RC.HASH)
        end = start + size
        if end > len(data):
            raise _short()
        return cs.Container(hashAlg=alg, digest=data[start:end]), end

    return read


def _sized_struct(sized: Tpm2bStruct, inner: Reader) -> Reader:
    optional = sized.optional

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        start = pos + 2
        if start > len(data):
            raise _short()
        n = (data[pos] << 8) | data[pos + 1]
        if n == 0:
            if optional:
                return None, start
            raise TpmError(RC.SIZE)
        end = start + n
        if end > len(data):
            raise _short()
        body = data[start:end]
        try:
            value, used = inner(body, 0)
        except cs.StreamError:
            raise TpmError(RC.SIZE) from None
        if used != n:
            raise TpmError(RC.SIZE)
        return value, end

    return read


def _counted_parts(construct: cs.Construct) -> tuple[cs.Construct, cs.Construct] | None:
    """(count field, element) of ``cs.PrefixedArray(count, element)``, else None."""
    if not isinstance(construct, cs.FocusedSeq) or construct.parsebuildfrom != "items":
        return None
    subcons = construct.subcons
    if len(subcons) != 2 or subcons[0].name != "count" or subcons[1].name != "items":
        return None
    rebuild, array = subcons[0].subcon, subcons[1].subcon
    if not isinstance(rebuild, cs.Rebuild) or not isinstance(array, cs.Array):
        return None
    if repr(array.count) != "this['count']":  # the element count is the count field just read
        return None
    return rebuild.subcon, array.subcon


def compile_reader(construct: cs.Construct) -> Reader | None:
    """A direct reader equivalent to ``construct``, or None when it has a piece this module does not know."""
    if isinstance(construct, cs.FormatField):
        return _integer(construct)
    if isinstance(construct, Tpm2b):
        return _tpm2b(construct)
    if isinstance(construct, PcrSelectBytes):
        return _pcr_select
    if isinstance(construct, TpmtHa):
        return _tpmt_ha(construct.allow_null)
    if isinstance(construct, OneOf):
        if isinstance(construct.subcon, cs.FormatField):
            return _restricted_integer(construct.subcon, construct)
        inner = compile_reader(construct.subcon)
        return _one_of(construct, inner) if inner is not None else None
    if isinstance(construct, Tpm2bStruct):
        inner = compile_reader(construct.subcon)
        return _sized_struct(construct, inner) if inner is not None else None
    if isinstance(construct, cs.Struct):
        fields = _struct_fields(construct)
        return _struct(fields) if fields is not None else None
    parts = _counted_parts(construct)
    if parts is not None:
        count = compile_reader(parts[0])
        if count is not None and isinstance(parts[1], TpmtHa):
            return _counted_ha(count, parts[1].allow_null)
        if count is not None and isinstance(parts[1], cs.Struct):
            fields = _struct_fields(parts[1])
            return _counted_structs(count, fields) if fields is not None else None
        element = compile_reader(parts[1])
        return _counted(count, element) if count is not None and element is not None else None
    return None


def _struct_fields(construct: cs.Struct) -> list[tuple[str, Reader]] | None:
    fields = []
    for sub in construct.subcons:
        if not isinstance(sub, cs.Renamed) or not sub.name:
            return None
        reader = compile_reader(sub.subcon)
        if reader is None:
            return None
        fields.append((sub.name, reader))
    return fields


def compile_params(params: tuple[tuple[str, cs.Construct], ...]) -> tuple[tuple[str, Reader], ...] | None:
    """Readers for a command's parameter list, or None if any parameter needs `construct`."""
    readers = []
    for name, construct in params:
        reader = compile_reader(construct)
        if reader is None:
            return None
        readers.append((name, reader))
    return tuple(readers)


Fixed = tuple[struct.Struct, tuple[str, ...]]


def compile_fixed(params: tuple[tuple[str, cs.Construct], ...]) -> Fixed | None:
    """One struct layout for a parameter list made only of unrestricted big-endian integers
    (GetRandom, NV_Read): parameters of exactly its size are unpacked in one call; any other
    size goes through the readers, which find the error and its parameter number."""
    formats = []
    for _, construct in params:
        if type(construct) is not cs.FormatField or not construct.fmtstr.startswith(">"):
            return None
        formats.append(construct.fmtstr[1:])
    return struct.Struct(">" + "".join(formats)), tuple(name for name, _ in params)
