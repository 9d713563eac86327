"""The encrypted file format shared by every encrypted home file.

Layout (all integers big-endian)::

    header      magic "VMCRYPTC", format version, header length, cipher, MAC,
                data-unit size, generation, plaintext length, salt, key check,
                label, VM id (version 2), key reference (provider id, key id,
                wrap alg, wrapped DEK), zero padding up to the header length
    ciphertext  AES-XTS-256 data units, tweak = unit index; the plaintext is
                zero-padded to a multiple of 16 bytes so every unit is >= 16 B
    mac         HMAC-SHA-256 over header and ciphertext (absent for disks)

Per file, a random salt feeds HKDF-SHA-256 over the DEK with distinct labels
for the XTS key, the MAC key and a key check value: rewriting a file never
reuses an XTS key/tweak pair, and a wrong key is told apart from tampering
before any plaintext is produced. Encrypt-then-MAC: XTS alone does not
detect modification.

The label names the file's role (``nvram:vm1.nvram``) and, since format
version 2, the VM id names the VM the file belongs to; both are covered by
the MAC, so a reader that checks them notices a file swapped with another
role's or copied from another VM. Version 1 files (no VM id) are still read.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import io
import os
import secrets
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Union

import construct as cs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from durable.atomic import atomic_writer
from vmcrypt.errors import (
    CorruptError,
    IntegrityError,
    NotEncryptedError,
    TruncatedError,
    UnsupportedFormatError,
    VmcryptError,
    WrongKeyError,
)
from vmcrypt.keyref import DataKey, KeyReference, WrapAlgorithm
from vmcrypt.xts import XtsCipher

MAGIC = b"VMCRYPTC"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SALT_SIZE = 32
CHECK_SIZE = 16
MAC_SIZE = 32
DEFAULT_UNIT_SIZE = 4096
DISK_HEADER_ALIGN = 4096
CHUNK_UNITS_BYTES = 1 << 20  # stream in 1 MiB pieces (whole units)
MAX_HEADER = 1 << 20

ProgressCallback = Callable[[int, int], None]
KeySource = Union[bytes, DataKey, Callable[["ContainerHeader"], bytes]]


class Cipher(enum.IntEnum):
    """The data cipher of a container (the one this format version knows: AES-256-XTS)."""
    AES_XTS_256 = 1


class Mac(enum.IntEnum):
    """The integrity check after the ciphertext: none, or HMAC-SHA-256 over header and ciphertext."""
    NONE = 0
    HMAC_SHA256 = 1


_FIXED = cs.Struct(
    "magic" / cs.Bytes(8),
    "version" / cs.Int16ub,
    "header_length" / cs.Int32ub,
)

_COMMON_START = (
    "header_length" / cs.Int32ub,
    "cipher" / cs.Int16ub,
    "mac" / cs.Int16ub,
    "unit_size" / cs.Int32ub,
    "generation" / cs.Int64ub,
    "plaintext_length" / cs.Int64ub,
    "salt" / cs.Bytes(SALT_SIZE),
    "key_check" / cs.Bytes(CHECK_SIZE),
    "label" / cs.PascalString(cs.Int16ub, "utf8"),
)
_KEY_REFERENCE = (
    "provider_id" / cs.PascalString(cs.Int16ub, "utf8"),
    "key_id" / cs.PascalString(cs.Int16ub, "utf8"),
    "wrap_algorithm" / cs.Int8ub,
    "wrapped_dek" / cs.Prefixed(cs.Int16ub, cs.GreedyBytes),
)
_HEADER_V1 = cs.Struct(
    "magic" / cs.Const(MAGIC), "version" / cs.Const(1, cs.Int16ub), *_COMMON_START, *_KEY_REFERENCE
).compile()
_HEADER_V2 = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Const(2, cs.Int16ub),
    *_COMMON_START,
    "vm_id" / cs.PascalString(cs.Int16ub, "utf8"),
    *_KEY_REFERENCE,
).compile()
_HEADERS = {1: _HEADER_V1, 2: _HEADER_V2}


@dataclasses.dataclass(frozen=True)
class ContainerHeader:
    """Everything stored in clear at the start of an encrypted file."""

    unit_size: int
    generation: int
    plaintext_length: int
    salt: bytes
    key_check: bytes
    label: str
    reference: KeyReference
    mac: Mac = Mac.HMAC_SHA256
    cipher: Cipher = Cipher.AES_XTS_256
    header_length: int = 0
    version: int = FORMAT_VERSION
    vm_id: str = ""  # the VM the file belongs to ("" for files of no VM, and in version 1)

    @property
    def ciphertext_length(self) -> int:
        """The ciphertext's length: the plaintext padded to a multiple of 16 bytes (the AES block)."""
        return _padded(self.plaintext_length)

    @property
    def file_length(self) -> int:
        """The length a complete container file has: header, ciphertext and MAC."""
        mac = MAC_SIZE if self.mac == Mac.HMAC_SHA256 else 0
        return self.header_length + self.ciphertext_length + mac

    def encode(self, align: int = 0) -> bytes:
        """Serialise in the current format version, padding with zeros to a multiple of ``align`` if given."""
        fields = dict(
            vm_id=self.vm_id,
            header_length=0,
            cipher=int(self.cipher),
            mac=int(self.mac),
            unit_size=self.unit_size,
            generation=self.generation,
            plaintext_length=self.plaintext_length,
            salt=self.salt,
            key_check=self.key_check,
            label=self.label,
            provider_id=self.reference.provider_id,
            key_id=self.reference.key_id,
            wrap_algorithm=int(self.reference.wrap_algorithm),
            wrapped_dek=self.reference.wrapped_dek,
        )
        length = len(_HEADER_V2.build(fields))
        if align:
            length = -(-length // align) * align
        fields["header_length"] = length
        raw = _HEADER_V2.build(fields)
        return raw + bytes(length - len(raw))


def _padded(length: int) -> int:
    return -(-length // 16) * 16


def _check_unit_size(unit_size: int) -> None:
    if unit_size < 512 or unit_size > (1 << 20) or unit_size & (unit_size - 1):
        raise ValueError(f"data unit size must be a power of two from 512 B to 1 MiB, got {unit_size}")


@dataclasses.dataclass(frozen=True)
class _FileKeys:
    xts: XtsCipher
    mac_key: bytes = dataclasses.field(repr=False)
    key_check: bytes


def _derive(dek: bytes, salt: bytes) -> _FileKeys:
    def hkdf(label: bytes, length: int) -> bytes:
        return HKDF(hashes.SHA256(), length, salt, b"vmcrypt/v1/" + label).derive(dek)

    return _FileKeys(
        xts=XtsCipher(hkdf(b"xts-key", 64)),
        mac_key=hkdf(b"mac-key", 32),
        key_check=hkdf(b"key-check", CHECK_SIZE),
    )


def parse_header(raw: bytes, name: str | os.PathLike[str] = "<memory>") -> ContainerHeader:
    """Parse a header from the first bytes of a container; raise a named error if it is not one."""
    if len(raw) < _FIXED.sizeof():
        if raw and not MAGIC.startswith(raw[: len(MAGIC)]):
            raise NotEncryptedError("not an encrypted vmcrypt file", name)
        raise TruncatedError(f"only {len(raw)} bytes, too short for a header", name)
    fixed = _FIXED.parse(raw)
    if fixed.magic != MAGIC:
        raise NotEncryptedError("not an encrypted vmcrypt file", name)
    if fixed.version not in READABLE_VERSIONS:
        raise UnsupportedFormatError(
            f"format version {fixed.version} is not supported (this build reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))})",
            name,
        )
    if not _FIXED.sizeof() < fixed.header_length <= MAX_HEADER:
        raise CorruptError(f"implausible header length {fixed.header_length}", name)
    if len(raw) < fixed.header_length:
        raise TruncatedError(f"file ends inside the header ({len(raw)} of {fixed.header_length} bytes)", name)
    try:
        parsed = _HEADERS[fixed.version].parse(raw[: fixed.header_length])
        reference = KeyReference(
            parsed.provider_id, parsed.key_id, WrapAlgorithm(parsed.wrap_algorithm), parsed.wrapped_dek
        )
        cipher, mac = Cipher(parsed.cipher), Mac(parsed.mac)
    except (cs.ConstructError, UnicodeDecodeError, struct.error) as exc:  # the compiled parser raises struct.error
        raise CorruptError(f"damaged header ({type(exc).__name__})", name) from None
    except ValueError as exc:
        raise UnsupportedFormatError(f"unknown algorithm in header: {exc}", name) from None
    try:
        _check_unit_size(parsed.unit_size)
    except ValueError as exc:
        raise CorruptError(str(exc), name) from None
    return ContainerHeader(
        unit_size=parsed.unit_size,
        generation=parsed.generation,
        plaintext_length=parsed.plaintext_length,
        salt=parsed.salt,
        key_check=parsed.key_check,
        label=parsed.label,
        reference=reference,
        mac=mac,
        cipher=cipher,
        header_length=fixed.header_length,
        version=fixed.version,
        vm_id=parsed.get("vm_id", ""),
    )


def read_header(path: str | os.PathLike[str]) -> ContainerHeader:
    """The header of an encrypted file, without any key."""
    with open(path, "rb") as handle:
        start = handle.read(4096)
        if len(start) >= _FIXED.sizeof():
            wanted = _FIXED.parse(start).header_length
            if len(start) < wanted <= MAX_HEADER:
                start += handle.read(wanted - len(start))
    return parse_header(start, path)


def is_container(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` starts with the container magic (cheap: reads 8 bytes)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except (FileNotFoundError, IsADirectoryError):
        return False


def _resolve_dek(key: KeySource, header: ContainerHeader) -> bytes:
    if isinstance(key, DataKey):
        return key.dek
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    return key(header)


def _open_keys(key: KeySource, header: ContainerHeader, name: str | os.PathLike[str]) -> _FileKeys:
    keys = _derive(_resolve_dek(key, header), header.salt)
    if not hmac.compare_digest(keys.key_check, header.key_check):
        raise WrongKeyError("wrong key: the key offered does not open this file", name)
    return keys


def _read_exact(src: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left:
        piece = src.read(left)
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


# --------------------------------------------------------------------------- writing


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: DataKey,
    *,
    label: str,
    plaintext_length: int,
    unit_size: int = DEFAULT_UNIT_SIZE,
    generation: int = 1,
    mac: Mac = Mac.HMAC_SHA256,
    header_align: int = 0,
    progress: ProgressCallback | None = None,
    vm_id: str = "",
) -> ContainerHeader:
    """Encrypt ``plaintext_length`` bytes from ``src`` into a container written to ``dst``."""
    _check_unit_size(unit_size)
    salt = secrets.token_bytes(SALT_SIZE)
    keys = _derive(key.dek, salt)
    header = ContainerHeader(
        unit_size=unit_size,
        generation=generation,
        plaintext_length=plaintext_length,
        salt=salt,
        key_check=keys.key_check,
        label=label,
        reference=key.reference,
        mac=mac,
        vm_id=vm_id,
    )
    raw_header = header.encode(header_align)
    header = dataclasses.replace(header, header_length=len(raw_header))
    mac_state = hmac.new(keys.mac_key, raw_header, hashlib.sha256)
    dst.write(raw_header)
    chunk = max(unit_size, CHUNK_UNITS_BYTES // unit_size * unit_size)
    done, unit = 0, 0
    while done < plaintext_length:
        piece = _read_exact(src, min(chunk, plaintext_length - done))
        if not piece:
            raise CorruptError(
                f"source ended after {done} of {plaintext_length} bytes (changed while encrypting?)",
                getattr(src, "name", None),
            )
        done += len(piece)
        if len(piece) % 16:
            piece += bytes(16 - len(piece) % 16)
        ciphertext = keys.xts.encrypt_units(unit, piece, unit_size)
        unit += -(-len(piece) // unit_size)
        mac_state.update(ciphertext)
        dst.write(ciphertext)
        if progress:
            progress(done, plaintext_length)
    if mac == Mac.HMAC_SHA256:
        dst.write(mac_state.digest())
    return header


def encrypt_bytes(
    plaintext: bytes, key: DataKey, *, label: str, unit_size: int = DEFAULT_UNIT_SIZE, vm_id: str = ""
) -> bytes:
    """Encrypt a small value in memory (e.g. the ``encryption.data`` of a ``.vmx``)."""
    out = io.BytesIO()
    encrypt_stream(
        io.BytesIO(plaintext), out, key, label=label, plaintext_length=len(plaintext), unit_size=unit_size, vm_id=vm_id
    )
    return out.getvalue()


def _next_generation(path: Path) -> int:
    try:
        return read_header(path).generation + 1
    except (OSError, VmcryptError):  # absent, plain or damaged: start over
        return 1


def write_file(
    path: str | os.PathLike[str],
    data: bytes | BinaryIO,
    key: DataKey,
    *,
    label: str,
    unit_size: int = DEFAULT_UNIT_SIZE,
    mac: Mac = Mac.HMAC_SHA256,
    header_align: int = 0,
    mode: int | None = None,
    progress: ProgressCallback | None = None,
    vm_id: str = "",
    min_generation: int = 1,
) -> ContainerHeader:
    """Atomically replace ``path`` with an encrypted container of ``data`` (bytes or a readable file).

    The new file's generation is one more than the file it replaces, and at least
    ``min_generation`` (a caller that knows a later generation than the file on disk shows).
    """
    target = Path(path)
    if isinstance(data, (bytes, bytearray, memoryview)):
        src: BinaryIO = io.BytesIO(data)
        length = len(data)
    else:
        src = data
        length = os.fstat(data.fileno()).st_size - data.tell()
    generation = max(_next_generation(target), min_generation)
    with atomic_writer(target, mode) as dst:
        return encrypt_stream(
            src,
            dst,
            key,
            label=label,
            plaintext_length=length,
            unit_size=unit_size,
            generation=generation,
            mac=mac,
            header_align=header_align,
            progress=progress,
            vm_id=vm_id,
        )


def encrypt_file_in_place(
    path: str | os.PathLike[str], key: DataKey, *, label: str, progress: ProgressCallback | None = None, **kwargs
) -> ContainerHeader:
    """Replace a plaintext file by its encrypted container, atomically."""
    with open(path, "rb") as src:
        return write_file(path, src, key, label=label, progress=progress, **kwargs)


# --------------------------------------------------------------------------- reading


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: KeySource,
    *,
    name: str | os.PathLike[str] = "<stream>",
    progress: ProgressCallback | None = None,
) -> ContainerHeader:
    """Decrypt a container from ``src`` into ``dst``.

    Plaintext is written before the MAC at the end is checked, so ``dst``
    must be a place that is discarded when this raises (see :func:`decrypt_file`).
    """
    header, keys, raw_header = _open_stream(src, key, name)
    mac_state = hmac.new(keys.mac_key, raw_header, hashlib.sha256)
    chunk = CHUNK_UNITS_BYTES // header.unit_size * header.unit_size
    left, unit, done = header.ciphertext_length, 0, 0
    while left:
        piece = _read_exact(src, min(chunk, left))
        if len(piece) != min(chunk, left):
            raise TruncatedError("file shrank while reading", name)
        left -= len(piece)
        mac_state.update(piece)
        plain = keys.xts.decrypt_units(unit, piece, header.unit_size)
        unit += -(-len(piece) // header.unit_size)
        keep = min(len(plain), header.plaintext_length - done)
        dst.write(plain[:keep])
        done += keep
        if progress:
            progress(done, header.plaintext_length)
    if header.mac == Mac.HMAC_SHA256:
        stored = _read_exact(src, MAC_SIZE)
        if not hmac.compare_digest(stored, mac_state.digest()):
            raise IntegrityError("integrity check failed: the file was modified or damaged", name)
    return header


def _open_stream(src: BinaryIO, key: KeySource, name: str | os.PathLike[str]) -> tuple[ContainerHeader, _FileKeys, bytes]:
    """Parse and check the header of a container stream, open its keys, and leave the
    stream at the first ciphertext byte. Returns the header, the keys and the raw header."""
    src.seek(0, io.SEEK_END)
    size = src.tell()
    src.seek(0)
    start = src.read(min(size, MAX_HEADER))
    header = parse_header(start, name)
    _check_size(header, size, name)
    keys = _open_keys(key, header, name)
    src.seek(header.header_length)
    return header, keys, start[: header.header_length]


def _check_size(header: ContainerHeader, size: int, name: str | os.PathLike[str]) -> None:
    if size < header.file_length:
        raise TruncatedError(f"truncated: {size} bytes, the header promises {header.file_length}", name)
    if size > header.file_length:
        raise CorruptError(f"{size - header.file_length} unexpected bytes after the end of the data", name)


def decrypt_bytes(blob: bytes, key: KeySource, *, name: str | os.PathLike[str] = "<memory>") -> bytes:
    """Verify and decrypt a container held in memory; no plaintext is returned unless the MAC holds."""
    header = parse_header(blob[:MAX_HEADER], name)
    _check_size(header, len(blob), name)
    keys = _open_keys(key, header, name)
    body_end = header.header_length + header.ciphertext_length
    if header.mac == Mac.HMAC_SHA256:
        expected = hmac.new(keys.mac_key, blob[:body_end], hashlib.sha256).digest()
        if not hmac.compare_digest(blob[body_end:], expected):
            raise IntegrityError("integrity check failed: the file was modified or damaged", name)
    plain = keys.xts.decrypt_units(0, blob[header.header_length : body_end], header.unit_size)
    return plain[: header.plaintext_length]


def read_file(path: str | os.PathLike[str], key: KeySource) -> bytes:
    """Verify and decrypt a whole (small) encrypted file into memory."""
    with open(path, "rb") as handle:
        return decrypt_bytes(handle.read(), key, name=path)


def decrypt_file(
    path: str | os.PathLike[str],
    key: KeySource,
    destination: str | os.PathLike[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> ContainerHeader:
    """Decrypt ``path`` to ``destination`` (default: in place), atomically, streaming.

    The destination only appears once the whole file decrypted and its MAC
    matched; on any error it is left as it was. A sparse disk container (its holes
    read as zeros) goes through ``vmcrypt.disk_stream.decrypt_disk`` instead.
    """
    with open(path, "rb") as src:
        with atomic_writer(destination or path) as dst:
            return decrypt_stream(src, dst, key, name=path, progress=progress)


# --------------------------------------------------------------------------- re-keying


def recrypt_file(
    path: str | os.PathLike[str],
    old_key: KeySource,
    new_key: DataKey,
    *,
    progress: ProgressCallback | None = None,
    vm_id: str | None = None,
) -> ContainerHeader:
    """Move an encrypted file to ``new_key``, atomically, streaming.

    The new header is written in the current format version, with ``vm_id`` when given
    (a version 1 file gains its VM id this way) and the old one otherwise.

    Same DEK under a new reference (shallow rekey): the ciphertext is copied
    as is and only the header and MAC change. Different DEK (deep rekey): each
    chunk is decrypted and re-encrypted in memory; no plaintext touches disk.
    The old MAC is verified before the new file replaces the old one.
    """
    with open(path, "rb") as src:
        old, old_keys, raw_old = _open_stream(src, old_key, path)
        same_dek = hmac.compare_digest(old_keys.key_check, _derive(new_key.dek, old.salt).key_check)
        salt = old.salt if same_dek else secrets.token_bytes(SALT_SIZE)
        new_keys = old_keys if same_dek else _derive(new_key.dek, salt)
        new = dataclasses.replace(
            old, generation=old.generation + 1, salt=salt, key_check=new_keys.key_check, reference=new_key.reference,
            version=FORMAT_VERSION, vm_id=old.vm_id if vm_id is None else vm_id,
        )
        align = DISK_HEADER_ALIGN if old.header_length % DISK_HEADER_ALIGN == 0 else 0
        raw_new = new.encode(align)
        old_mac = hmac.new(old_keys.mac_key, raw_old, hashlib.sha256)
        new_mac = hmac.new(new_keys.mac_key, raw_new, hashlib.sha256)
        chunk = CHUNK_UNITS_BYTES // old.unit_size * old.unit_size
        with atomic_writer(path) as dst:
            dst.write(raw_new)
            left, unit = old.ciphertext_length, 0
            while left:
                piece = _read_exact(src, min(chunk, left))
                if len(piece) != min(chunk, left):
                    raise TruncatedError("file shrank while reading", path)
                left -= len(piece)
                old_mac.update(piece)
                if not same_dek:
                    plain = old_keys.xts.decrypt_units(unit, piece, old.unit_size)
                    piece = new_keys.xts.encrypt_units(unit, plain, old.unit_size)
                unit += -(-len(piece) // old.unit_size)
                new_mac.update(piece)
                dst.write(piece)
                if progress:
                    progress(old.ciphertext_length - left, old.ciphertext_length)
            if old.mac == Mac.HMAC_SHA256:
                if not hmac.compare_digest(_read_exact(src, MAC_SIZE), old_mac.digest()):
                    raise IntegrityError("integrity check failed: the file was modified or damaged", path)
                dst.write(new_mac.digest())
    return dataclasses.replace(new, header_length=len(raw_new))


def verify_file(path: str | os.PathLike[str], key: KeySource) -> ContainerHeader:
    """Check that ``key`` opens ``path`` and that its MAC holds, without writing anything."""

    class _Discard(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data) -> int:  # type: ignore[override]
            return len(data)

    with open(path, "rb") as src:
        return decrypt_stream(src, _Discard(), key, name=path)  # type: ignore[arg-type]


def verify_key(path: str | os.PathLike[str], key: KeySource) -> ContainerHeader:
    """Check only that ``key`` opens ``path`` (for files without a MAC, such as disks)."""
    header = read_header(path)
    _check_size(header, os.stat(path).st_size, path)
    _open_keys(key, header, path)
    return header
