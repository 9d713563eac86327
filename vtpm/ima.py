"""The Linux IMA runtime measurement list (``ima-ng`` template): write it, parse it strictly, replay PCR 10.

Binary form, as ``/sys/kernel/security/ima/binary_runtime_measurements`` (little-endian, the
x86 kernel's native order) lays out each entry::

    u32 pcr | 20-byte template hash | u32 name length | name ("ima-ng") | u32 data length | template data

The ``ima-ng`` template data is two fields, each a u32 length then its bytes:
``d-ng`` = the hash algorithm's name, ``:``, NUL, then the file digest (``sha256:\\0`` + 32
bytes); ``n-ng`` = the path, NUL-terminated.

Which hash goes into which bank: the list shows the *SHA-1* hash of the template data, but
since Linux 5.10 the kernel extends every allocated PCR bank with the template data hashed by
*that bank's* algorithm (before, the SHA-1 digest was zero-padded into the other banks). So a
replay of the SHA-256 bank hashes the template data with SHA-256 itself, and the SHA-1 hash in
the list is checked only when the SHA-1 bank is replayed. A violation (a file measured while
open for writing) has an all-zero template hash in the list and extends all ones.

The first entry is ``boot_aggregate``: for a TPM 2.0 bank other than SHA-1 the hash of
PCRs 0-9 of that bank (Linux 5.8 and later), so the runtime list is tied to the boot log.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from vtpm.constants import ALG
from vtpm.crypto import HASHES

try:  # the replay loop compiled over OpenSSL (vtpm/_measure.c); this module stays the reference
    from vtpm import _measure
except ImportError:  # extension not built (no compiler or OpenSSL headers)
    _measure = None  # type: ignore[assignment]

IMA_PCR = 10
TEMPLATE_NAME = b"ima-ng"
BOOT_AGGREGATE = "boot_aggregate"
BOOT_AGGREGATE_PCRS = range(10)  # PCRs 0-9 for TPM 2.0 banks other than SHA-1 (Linux 5.8)
SHA1_SIZE = 20
MAX_PATH = 4096
MAX_ENTRY_DATA = 8192
# The kernel's names of the file-digest algorithms (crypto API names) and ours.
DIGEST_NAMES = {b"sha1": ALG.SHA1, b"sha256": ALG.SHA256, b"sha384": ALG.SHA384, b"sha512": ALG.SHA512}
_NAMES_BY_ALG = {alg: name for name, alg in DIGEST_NAMES.items()}
_HASHLIB = {ALG.SHA1: "sha1", ALG.SHA256: "sha256", ALG.SHA384: "sha384", ALG.SHA512: "sha512"}

_HEAD = struct.Struct("<I20sI")  # pcr, template hash, template name length
# The usual ima-ng entry head in one read: pcr, template hash, name length, name, template data length.
_NG_HEAD = struct.Struct("<I20sI6sI")
_U32 = struct.Struct("<I")
_ZERO_HASH = bytes(SHA1_SIZE)


class _Where:
    """'IMA entry N (offset O)', formatted only when a message needs it."""

    __slots__ = ("number", "offset")

    def __init__(self, number: int, offset: int) -> None:
        self.number, self.offset = number, offset

    def __str__(self) -> str:
        return f"IMA entry {self.number} (offset {self.offset})"


class ImaLogError(ValueError):
    """The IMA list is malformed or does not replay; the message names the entry and offset."""


class ImaEntry(NamedTuple):
    """One measurement: ``number`` counts from 1, ``offset`` is the entry's byte offset.

    (A NamedTuple: the list is parsed per attestation, and a frozen dataclass costs more per entry.)"""

    number: int
    offset: int
    pcr: int
    template_hash: bytes  # SHA-1 of the template data (all zeros for a violation)
    template_data: bytes
    digest_alg: int  # the file digest's algorithm (TPM_ALG_ID)
    file_digest: bytes
    path: str

    @property
    def violation(self) -> bool:
        """Whether this is a violation (a file measured while open for writing): all-zero hash, all ones extended."""
        return self.template_hash == _ZERO_HASH


def template_data(path: str, file_digest: bytes, digest_alg: int = ALG.SHA256) -> bytes:
    """The ima-ng template data (d-ng then n-ng field, each with its u32 length)."""
    name = _NAMES_BY_ALG.get(digest_alg)
    if name is None or len(file_digest) != HASHES[digest_alg].size:
        raise ImaLogError(f"file digest must be a {name or 'known'} digest of the right size")
    encoded = path.encode("utf-8") + b"\0"
    if len(encoded) > MAX_PATH or "\0" in path:
        raise ImaLogError("path too long or contains NUL")
    d_ng = name + b":\0" + file_digest
    return _U32.pack(len(d_ng)) + d_ng + _U32.pack(len(encoded)) + encoded


def encode_entry(path: str, file_digest: bytes, digest_alg: int = ALG.SHA256, pcr: int = IMA_PCR) -> bytes:
    """One binary list entry for a file measured into ``pcr``."""
    data = template_data(path, file_digest, digest_alg)
    return (_HEAD.pack(pcr, hashlib.sha1(data).digest(), len(TEMPLATE_NAME)) + TEMPLATE_NAME
            + _U32.pack(len(data)) + data)


def template_digest(alg: int, data: bytes) -> bytes:
    """What the kernel extends into bank ``alg`` for this template data."""
    return hashlib.new(_HASHLIB[alg], data).digest()


def boot_aggregate(pcrs: Mapping[int, bytes], alg: int = ALG.SHA256) -> bytes:
    """boot_aggregate for a TPM 2.0 bank: the hash of PCRs 0-9 of that bank, in order."""
    if alg == ALG.SHA1:
        raise ImaLogError("the SHA-1 boot_aggregate covers PCRs 0-7 only; not used here")
    return getattr(hashlib, _HASHLIB[alg])(b"".join(map(pcrs.__getitem__, BOOT_AGGREGATE_PCRS))).digest()


_SHA256_D_NG = _U32.pack(40) + b"sha256:\0"  # the d-ng field's length and prefix for a SHA-256 file digest


def _parse_template(data: bytes, where: object) -> tuple[int, bytes, str]:
    size = len(data)
    if size < 4:
        raise ImaLogError(f"{where}: template data too short")
    (d_len,) = _U32.unpack_from(data, 0)
    end = 4 + d_len
    if end + 4 > size:
        raise ImaLogError(f"{where}: d-ng field of {d_len} bytes overruns the template data")
    d_ng = data[4:end]
    sep = d_ng.find(b":\0")
    alg = DIGEST_NAMES.get(d_ng[:sep]) if sep > 0 else None
    if alg is None:
        raise ImaLogError(f"{where}: d-ng field does not start with a known 'algorithm:\\0'")
    file_digest = d_ng[sep + 2:]
    if len(file_digest) != HASHES[alg].size:
        raise ImaLogError(f"{where}: {len(file_digest)}-byte {d_ng[:sep].decode()} file digest")
    (n_len,) = _U32.unpack_from(data, end)
    if end + 4 + n_len != size:
        raise ImaLogError(f"{where}: n-ng field of {n_len} bytes does not end the template data")
    raw_path = data[end + 4:]
    if not raw_path.endswith(b"\0") or b"\0" in raw_path[:-1]:
        raise ImaLogError(f"{where}: path is not one NUL-terminated string")
    try:
        path = raw_path[:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise ImaLogError(f"{where}: path is not UTF-8") from None
    return alg, file_digest, path


def parse_ima_log(data: bytes) -> tuple[ImaEntry, ...]:
    """Every entry of a binary ima-ng list; ImaLogError naming the entry and offset when malformed.

    The loop is written out (no helper calls for the usual SHA-256 entry): it runs for every
    entry of every attestation."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("the IMA log must be bytes")
    data = bytes(data)
    entries = []
    append = entries.append
    offset, total = 0, len(data)
    head_size = _HEAD.size
    unpack_head, unpack_u32 = _HEAD.unpack_from, _U32.unpack_from
    name, name_len_expected = TEMPLATE_NAME, len(TEMPLATE_NAME)
    fast_prefix, sha256 = _SHA256_D_NG, ALG.SHA256
    number = 0
    while offset < total:
        number += 1
        if offset + head_size > total:
            raise ImaLogError(f"{_Where(number, offset)}: truncated header")
        pcr, template_hash, name_len = unpack_head(data, offset)
        position = offset + head_size
        if name_len != name_len_expected or data[position:position + name_len] != name:
            raise ImaLogError(f"{_Where(number, offset)}: template is not ima-ng")
        position += name_len
        if position + 4 > total:
            raise ImaLogError(f"{_Where(number, offset)}: truncated template data length")
        (data_len,) = unpack_u32(data, position)
        position += 4
        end = position + data_len
        if data_len > MAX_ENTRY_DATA or end > total:
            raise ImaLogError(f"{_Where(number, offset)}: template data of {data_len} bytes, {total - position} left")
        body = data[position:end]
        if data_len >= 49 and body.startswith(fast_prefix) and unpack_u32(body, 44)[0] == data_len - 48 \
                and body.find(b"\0", 48) == data_len - 1:
            try:
                path = body[48:-1].decode("utf-8")
            except UnicodeDecodeError:
                raise ImaLogError(f"{_Where(number, offset)}: path is not UTF-8") from None
            append(ImaEntry(number, offset, pcr, template_hash, body, sha256, body[12:44], path))
        else:
            alg, file_digest, path = _parse_template(body, _Where(number, offset))
            append(ImaEntry(number, offset, pcr, template_hash, body, alg, file_digest, path))
        offset = end
    return tuple(entries)


def replay_ima(entries: Iterable[ImaEntry], algorithms: Iterable[int], pcr: int = IMA_PCR) -> dict[int, bytes]:
    """PCR ``pcr``'s value per bank after the entries (from zero); checks SHA-1 template hashes when
    the SHA-1 bank is asked for (the other banks hash the template data themselves)."""
    banks = tuple(algorithms)
    for alg in banks:
        if alg not in _HASHLIB:
            raise ImaLogError(f"cannot replay bank 0x{alg:04x}")
    entries = tuple(entries)
    values = {alg: bytes(HASHES[alg].size) for alg in banks}
    for alg in banks:
        new = getattr(hashlib, _HASHLIB[alg])
        ones = b"\xff" * HASHES[alg].size
        value = values[alg]
        check_sha1 = alg == ALG.SHA1
        for entry in entries:
            if entry.pcr != pcr:
                raise ImaLogError(f"IMA entry {entry.number} is for PCR {entry.pcr}, not {pcr}")
            template_hash = entry.template_hash
            if template_hash == _ZERO_HASH:
                measured = ones
            else:
                measured = new(entry.template_data).digest()
                if check_sha1 and measured != template_hash:
                    raise ImaLogError(f"IMA entry {entry.number} ({entry.path}): template hash is not "
                                      "the SHA-1 of its template data")
            value = new(value + measured).digest()
        values[alg] = value
    return values


def replay_ima_with_reference(data: bytes, reference: Mapping[bytes, bytes], alg: int = ALG.SHA256,
                              pcr: int = IMA_PCR) -> tuple[bytes, tuple[ImaEntry, ...], int]:
    """Replay one bank of a binary list, using reference values: ``reference`` maps template data a
    trusted image produces to its digest in bank ``alg`` (precomputed once per image).

    Returns (the bank's PCR value, the entries whose template data is *not* in ``reference``,
    parsed strictly, the number of entries). Every entry's framing is checked as by
    ``parse_ima_log``; template data found in ``reference`` is byte-equal to well-formed data, so
    it is neither parsed nor hashed again. Same result as ``replay_ima`` for that bank.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("the IMA log must be bytes")
    data = bytes(data)
    if _measure is not None and type(reference) is dict:
        # None when an entry's framing is malformed: the loop below then says where and why. Otherwise
        # the entries it returns are parsed here in order, as the loop below would meet them.
        compiled = _measure.ima_replay_reference(data, reference, alg, pcr, MAX_ENTRY_DATA)
        if compiled is not None:
            value, raw, number = compiled
            unknown = []
            for entry_number, offset, entry_pcr, template_hash, body in raw:
                alg_id, file_digest, path = _parse_template(body, _Where(entry_number, offset))
                unknown.append(ImaEntry(entry_number, offset, entry_pcr, template_hash, body, alg_id, file_digest,
                                        path))
            return value, tuple(unknown), number
    return _replay_ima_with_reference(data, reference, alg, pcr)


def _replay_ima_with_reference(data: bytes, reference: Mapping[bytes, bytes], alg: int,
                               pcr: int) -> tuple[bytes, tuple[ImaEntry, ...], int]:
    """The reference loop of ``replay_ima_with_reference`` (the compiled one follows it)."""
    new = getattr(hashlib, _HASHLIB[alg])
    ones = b"\xff" * HASHES[alg].size
    value = bytes(HASHES[alg].size)
    unknown = []
    offset, total, number = 0, len(data), 0
    head_size = _HEAD.size
    unpack_head = _HEAD.unpack_from
    name, name_len_expected, get = TEMPLATE_NAME, len(TEMPLATE_NAME), reference.get
    unpack_ng, ng_size = _NG_HEAD.unpack_from, _NG_HEAD.size
    while offset < total:
        number += 1
        if offset + ng_size <= total:  # the usual head in one read
            entry_pcr, template_hash, name_len, entry_name, data_len = unpack_ng(data, offset)
            if name_len != name_len_expected or entry_name != name:
                raise ImaLogError(f"{_Where(number, offset)}: template is not ima-ng")
            position = offset + ng_size
        else:
            if offset + head_size > total:
                raise ImaLogError(f"{_Where(number, offset)}: truncated header")
            entry_pcr, template_hash, name_len = unpack_head(data, offset)
            position = offset + head_size
            if name_len != name_len_expected or data[position:position + name_len] != name:
                raise ImaLogError(f"{_Where(number, offset)}: template is not ima-ng")
            raise ImaLogError(f"{_Where(number, offset)}: truncated template data length")
        end = position + data_len
        if data_len > MAX_ENTRY_DATA or end > total:
            raise ImaLogError(f"{_Where(number, offset)}: template data of {data_len} bytes, {total - position} left")
        if entry_pcr != pcr:
            raise ImaLogError(f"IMA entry {number} is for PCR {entry_pcr}, not {pcr}")
        body = data[position:end]
        measured = get(body)
        if measured is None or template_hash == _ZERO_HASH:
            alg_id, file_digest, path = _parse_template(body, _Where(number, offset))
            unknown.append(ImaEntry(number, offset, entry_pcr, template_hash, body, alg_id, file_digest, path))
            measured = ones if template_hash == _ZERO_HASH else new(body).digest()
        value = new(value + measured).digest()
        offset = end
    return value, tuple(unknown), number


def reference_templates(files: Mapping[str, bytes], alg: int = ALG.SHA256,
                        digest_alg: int = ALG.SHA256) -> dict[bytes, bytes]:
    """Reference values for ``replay_ima_with_reference``: each file's ima-ng template data and its
    digest in bank ``alg``."""
    table = {}
    for path, file_digest in files.items():
        data = template_data(path, file_digest, digest_alg)
        table[data] = template_digest(alg, data)
    return table


class ImaLogWriter:
    """Appends entries as the kernel does; ``extend_digests`` of an entry is what each bank gets."""

    def __init__(self, algorithms: Iterable[int]) -> None:
        self.algorithms = tuple(algorithms)
        self._parts: list[bytes] = []
        self.count = 0

    def measure(self, path: str, file_digest: bytes, digest_alg: int = ALG.SHA256) -> dict[int, bytes]:
        """Log a file and return the digest to extend into PCR 10 in each bank."""
        data = template_data(path, file_digest, digest_alg)
        self._parts.append(_HEAD.pack(IMA_PCR, hashlib.sha1(data).digest(), len(TEMPLATE_NAME)) + TEMPLATE_NAME
                           + _U32.pack(len(data)) + data)
        self.count += 1
        return {alg: template_digest(alg, data) for alg in self.algorithms}

    def to_bytes(self) -> bytes:
        """The list as the kernel exports it (binary_runtime_measurements), every entry so far."""
        return b"".join(self._parts)
