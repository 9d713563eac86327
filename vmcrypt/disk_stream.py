"""Encrypt, decrypt and rekey disk containers at disk speed, sparse and resumable.

Disks are big, mostly sequential and often sparse, so they do not go through
the generic stream code of :mod:`vmcrypt.container`:

- I/O is ``os.preadv``/``os.pwrite`` of large unit-aligned pieces through one
  reused buffer, XTS runs over a whole piece in one C call, and the output is
  synced once at the end (and at checkpoints), not per piece.
- Only the data extents of the source (``SEEK_DATA``/``SEEK_HOLE``) are read
  and transformed; holes stay holes in the output. A disk container (no MAC,
  4 KiB-aligned header) defines an all-zero ciphertext data unit to mean an
  all-zero plaintext unit: a real unit encrypts to all zeros with probability
  2^-32768, and a hole in the container reads back as zeros. The positions of
  holes are therefore visible, as on any sparse encrypted disk (see SECURITY.md).
- The output goes to a partial file next to the disk (``.<name>.vmcrypt-partial``);
  the disk itself is not touched until the partial file is complete, synced
  and renamed over it. After every 1/20 of the disk's data (at most
  ``checkpoint_bytes``; see ``plan``) the partial file is synced and the caller
  records how far it got, so an interrupted run resumes from the last
  checkpoint; anything after it is rewritten from the intact source.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hmac
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from durable.atomic import fsync_directory
from vmcrypt import container
from vmcrypt.container import ContainerHeader, KeySource, Mac
from vmcrypt.errors import CorruptError, TruncatedError, VmcryptError
from vmcrypt.keyref import DataKey
from vmcrypt.xts import XtsCipher

BUFFER_BYTES = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2


def _writeback_starter() -> Callable[[int, int, int], None]:
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`` where libc has it: starts writing a
    piece back at once, so a checkpoint's fdatasync finds little left to wait for (I/O overlaps the
    next piece's work instead of piling up); a no-op elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc among them
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, n: None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)

    def start(fd: int, offset: int, n: int) -> None:
        call(fd, offset, n, _SYNC_FILE_RANGE_WRITE)  # advisory: a failure only loses the overlap
    return start


_start_writeback = _writeback_starter()
CHECKPOINT_BYTES = 64 << 20
MIN_PIECE_BYTES = 1 << 20  # below this, per-piece overhead (a syscall pair, one XTS call) starts to show
# a checkpoint at least every this share of a disk's data: an interrupted run redoes at most that much
CHECKPOINT_SHARE = 20
PARTIAL_SUFFIX = ".vmcrypt-partial"

# (payload bytes covered so far, payload bytes in total, bytes actually transformed) -> None
ProgressFn = Callable[[int, int], None]
# durably record that the first ``done`` payload bytes of the partial file are final
CheckpointFn = Callable[[int], None]


def partial_path(disk: Path) -> Path:
    """Where the converted copy of ``disk`` is built before it replaces the disk."""
    return disk.with_name(f".{disk.name}{PARTIAL_SUFFIX}")


@dataclasses.dataclass
class Resume:
    """How far an earlier run got (from the journal) and where to report new progress."""

    done: int = 0
    checkpoint: CheckpointFn | None = None
    checkpoint_bytes: int = dataclasses.field(default_factory=lambda: CHECKPOINT_BYTES)


@dataclasses.dataclass
class StreamStats:
    """What one conversion did: bytes read and transformed (holes and resumed parts excluded)."""

    transformed: int = 0
    resumed_from: int = 0


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a conversion steps through a disk: ``piece`` bytes per read/transform/write, and a checkpoint
    after every ``every`` bytes of data transformed."""

    piece: int
    every: int


def plan(data_bytes: int, unit_size: int, checkpoint_bytes: int) -> Plan:
    """Checkpoint every 1/CHECKPOINT_SHARE of the data (at most ``checkpoint_bytes``), so a run interrupted
    half-way redoes at most ~5% after it resumes, whatever the disk's size; pieces of BUFFER_BYTES, smaller
    on a small disk (down to MIN_PIECE_BYTES) so that a checkpoint can fall that often (it falls between
    pieces). Both are whole data units."""
    every = min(checkpoint_bytes, max(unit_size, data_bytes // CHECKPOINT_SHARE))
    piece = min(BUFFER_BYTES, max(MIN_PIECE_BYTES, every))
    piece = max(unit_size, piece // unit_size * unit_size)
    return Plan(piece, max(piece, every))


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Yield the ``[offset, end)`` ranges of ``fd`` holding data between ``start`` and ``end``."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole up to the end of the file
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support: all data
                yield pos, end
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole
        pos = hole


def _zero_units(data: memoryview, unit_size: int) -> Iterator[int]:
    """Offsets of the all-zero units of ``data`` (unit-aligned)."""
    zero = bytes(unit_size)
    raw = data.obj if isinstance(data.obj, (bytes, bytearray)) and data.nbytes == len(data.obj) else bytes(data)
    pos = 0
    while True:
        found = raw.find(zero, pos)
        if found < 0:
            return
        if found % unit_size:
            pos = found - found % unit_size + unit_size
            continue
        yield found
        pos = found + unit_size


def _zero_tail(data: memoryview, unit_size: int) -> int:
    """Length of a trailing partial unit that is all zeros (a hole at the end of the disk), else 0."""
    tail = len(data) % unit_size
    return tail if tail and not any(data[len(data) - tail :]) else 0


Transform = Callable[[int, memoryview], bytes | bytearray | memoryview]


def _kernel_copy(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, n: int) -> None:
    """Copy ``n`` bytes as they are, inside the kernel (``copy_file_range``)."""
    copied = 0
    while copied < n:
        step = os.copy_file_range(src_fd, dst_fd, n - copied, src_offset + copied, dst_offset + copied)
        if step <= 0:
            raise TruncatedError("the source shrank while converting", None)
        copied += step


def _transform_piece(src_fd: int, src_base: int, dst_fd: int, dst_base: int, pos: int, n: int,
                     buffer: bytearray, out_length: int, unit_size: int, transform: Transform) -> None:
    """Read ``n`` payload bytes at ``pos`` into ``buffer``, transform them in one call, write the result."""
    view = memoryview(buffer)
    got = os.preadv(src_fd, [view[:n]], src_base + pos)
    if got != n:
        raise TruncatedError("the source shrank while converting", None)
    piece = view[:n]
    if n % 16:
        pad = 16 - n % 16
        buffer[n : n + pad] = bytes(pad)
        piece = view[: n + pad]
    out = transform(pos // unit_size, piece)
    keep = min(len(out), out_length - pos)
    written = os.pwrite(dst_fd, memoryview(out)[:keep], dst_base + pos)
    if written != keep:
        raise OSError(errno.EIO, "short write")
    _start_writeback(dst_fd, dst_base + pos, keep)


def _copy(
    src_fd: int, src_base: int, dst_fd: int, dst_base: int, in_length: int, out_length: int,
    unit_size: int, transform: Transform | None, resume: Resume, progress: ProgressFn | None,
) -> StreamStats:
    """Transform the data extents of the source payload into the destination payload."""
    stats = StreamStats(resumed_from=resume.done)
    data_bytes = sum(last - first for first, last in data_extents(src_fd, src_base, src_base + in_length))
    steps = plan(data_bytes, unit_size, resume.checkpoint_bytes)
    buffer = bytearray(steps.piece)
    with contextlib.suppress(OSError):
        os.posix_fadvise(src_fd, src_base, in_length, os.POSIX_FADV_SEQUENTIAL)
    since_checkpoint = 0  # data bytes transformed since the last checkpoint (holes cost no rework)
    for first, last in data_extents(src_fd, src_base + resume.done, src_base + in_length):
        pos = (first - src_base) // unit_size * unit_size
        end = min(in_length, -(-(last - src_base) // unit_size) * unit_size)
        pos = max(pos, resume.done)
        while pos < end:
            n = min(len(buffer), end - pos)
            if transform is None:  # ciphertext as is: the kernel copies it (no transform, no user-space copy)
                _kernel_copy(src_fd, src_base + pos, dst_fd, dst_base + pos, n)
            else:
                _transform_piece(src_fd, src_base, dst_fd, dst_base, pos, n, buffer, out_length, unit_size,
                                 transform)
            stats.transformed += n
            since_checkpoint += n
            pos += n
            if progress:
                progress(pos, in_length)
            if resume.checkpoint and since_checkpoint >= steps.every:
                os.fdatasync(dst_fd)
                resume.checkpoint(pos)
                since_checkpoint = 0
                with contextlib.suppress(OSError):  # what is synced need not stay cached
                    os.posix_fadvise(dst_fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    os.posix_fadvise(src_fd, src_base, pos, os.POSIX_FADV_DONTNEED)
    if progress:
        progress(in_length, in_length)
    return stats


@contextlib.contextmanager
def _partial(disk: Path, resume: Resume, valid: Callable[[int], bool]) -> Iterator[int]:
    """Open the partial file (reusing it when ``resume.done`` says an earlier run got somewhere and
    ``valid(fd)`` agrees), yield its descriptor, and on success rename it over ``disk``."""
    path = partial_path(disk)
    mode = disk.stat().st_mode & 0o7777
    fd = -1
    if resume.done:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            resume.done = 0
        else:
            if not valid(fd):
                os.close(fd)
                fd = -1
                resume.done = 0
    if fd < 0:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        yield fd
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        if resume.checkpoint is None:  # nothing will resume it: leave nothing behind
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    os.close(fd)
    os.replace(path, disk)
    fsync_directory(disk.parent)


def discard_partial(disk: Path) -> None:
    """Remove a partial file left by an interrupted run that will not be resumed."""
    with contextlib.suppress(FileNotFoundError):
        partial_path(disk).unlink()


def _header_of(fd: int) -> ContainerHeader | None:
    try:
        return container.parse_header(os.pread(fd, container.MAX_HEADER, 0))
    except (VmcryptError, ValueError):
        return None


@dataclasses.dataclass
class _Target:
    """The container header (and its keys) a run writes under ``key``: adopted from a partial file a
    checkpoint left, when it is the one this run would write, else written afresh."""

    key: DataKey
    header: ContainerHeader | None = None
    keys: container._FileKeys | None = None

    def adopt(self, fd: int, expected: Callable[[ContainerHeader], bool]) -> bool:
        """Resume onto the partial file ``fd`` if its header is under our key and ``expected`` accepts it."""
        found = _header_of(fd)
        if found is None or found.reference != self.key.reference or not expected(found):
            return False
        keys = container._derive(self.key.dek, found.salt)
        if not hmac.compare_digest(keys.key_check, found.key_check):
            return False
        self.header, self.keys = found, keys
        return True

    def start(self, fd: int, header: ContainerHeader, keys: container._FileKeys, disk: Path,
              header_length: int | None = None) -> None:
        """Write ``header`` (disk-aligned; exactly ``header_length`` bytes when given) and size the file."""
        raw = header.encode(container.DISK_HEADER_ALIGN)
        if header_length is not None and len(raw) != header_length:
            raise CorruptError("the new header does not fit the old header's space", disk)
        self.header, self.keys = dataclasses.replace(header, header_length=len(raw)), keys
        os.pwrite(fd, raw, 0)
        os.ftruncate(fd, self.header.file_length)


def encrypt_disk(
    disk: Path, key: DataKey, *, label: str, vm_id: str = "", generation: int = 1,
    resume: Resume | None = None, progress: ProgressFn | None = None,
) -> StreamStats:
    """Replace the plaintext ``disk`` by a sparse disk container under ``key``."""
    resume = resume or Resume()
    length = disk.stat().st_size
    target = _Target(key)

    def valid(fd: int) -> bool:
        return target.adopt(fd, lambda old: old.plaintext_length == length and old.label == label
                            and old.vm_id == vm_id and old.header_length % container.DISK_HEADER_ALIGN == 0)

    with open(disk, "rb") as src, _partial(disk, resume, valid) as dst:
        if target.header is None:
            salt = secrets.token_bytes(container.SALT_SIZE)
            keys = container._derive(key.dek, salt)
            target.start(dst, ContainerHeader(
                unit_size=container.DEFAULT_UNIT_SIZE, generation=generation, plaintext_length=length, salt=salt,
                key_check=keys.key_check, label=label, reference=key.reference, mac=Mac.NONE, vm_id=vm_id,
            ), keys, disk)
        header, xts = target.header, target.keys.xts  # type: ignore[union-attr]
        assert header is not None
        if os.fstat(dst).st_size != header.file_length:
            os.ftruncate(dst, header.file_length)

        def transform(unit: int, data: memoryview) -> bytes:
            return xts.encrypt_units(unit, data, header.unit_size)

        return _copy(src.fileno(), 0, dst, header.header_length, length, header.ciphertext_length,
                     header.unit_size, transform, resume, progress)


def _decryptor(xts: XtsCipher, unit_size: int) -> Transform:
    """Decrypt units; an all-zero ciphertext unit (a hole) decrypts to zeros."""
    def transform(unit: int, data: memoryview) -> bytearray:
        return _holes_kept(bytearray(xts.decrypt_units(unit, data, unit_size)), data, unit_size)
    return transform


def _holes_kept(out: bytearray, data: memoryview, unit_size: int) -> bytearray:
    """``out`` with zeros wherever the input ``data`` had an all-zero unit or tail (a hole stays a hole)."""
    zero = bytes(unit_size)
    for offset in _zero_units(data, unit_size):
        out[offset : offset + unit_size] = zero
    tail = _zero_tail(data, unit_size)
    if tail:
        out[len(out) - tail :] = bytes(tail)
    return out


def decrypt_disk(
    disk: Path, key: KeySource, *, destination: Path | None = None,
    resume: Resume | None = None, progress: ProgressFn | None = None,
) -> StreamStats:
    """Replace the disk container ``disk`` (or write ``destination``) by its sparse plaintext."""
    resume = resume or Resume()
    header = container.read_header(disk)
    container._check_size(header, disk.stat().st_size, disk)
    keys = container._open_keys(key, header, disk)
    target = destination or disk
    if destination is not None:
        resume = Resume()  # a copy elsewhere is never resumed

    def valid(fd: int) -> bool:
        return os.fstat(fd).st_size == header.plaintext_length

    with open(disk, "rb") as src:
        with _partial_for(disk, target, resume, valid) as dst:
            os.ftruncate(dst, header.plaintext_length)
            return _copy(src.fileno(), header.header_length, dst, 0, header.ciphertext_length,
                         header.plaintext_length, header.unit_size, _decryptor(keys.xts, header.unit_size),
                         resume, progress)


def copy_sparse(source: Path, destination: Path) -> StreamStats:
    """Copy the plain disk ``source`` to ``destination`` keeping its holes: only data extents are read and
    written (``cp`` and ``shutil.copyfile`` write the holes out as zeros). Built under a temporary name
    next to ``destination`` and renamed over it, so an interrupted copy leaves nothing half-written."""
    length = source.stat().st_size
    with open(source, "rb") as src, _partial_for(source, destination, Resume(), lambda fd: True) as dst:
        os.ftruncate(dst, length)
        # through user space, not copy_file_range: a clone may go to a datastore on another file system
        return _copy(src.fileno(), 0, dst, 0, length, length, container.DEFAULT_UNIT_SIZE,
                     lambda unit, data: data, Resume(), None)


@contextlib.contextmanager
def _partial_for(disk: Path, target: Path, resume: Resume, valid: Callable[[int], bool]) -> Iterator[int]:
    if target == disk:
        with _partial(disk, resume, valid) as fd:
            yield fd
        return
    # a new file elsewhere: built under a temporary name next to it, then renamed
    holder = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
    fd = os.open(holder, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        yield fd
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            holder.unlink()
        raise
    os.close(fd)
    os.replace(holder, target)
    fsync_directory(target.parent)


def recrypt_disk(
    disk: Path, old_key: KeySource, new_key: DataKey, *, vm_id: str | None = None,
    resume: Resume | None = None, progress: ProgressFn | None = None,
) -> StreamStats:
    """Move the disk container ``disk`` to ``new_key``, keeping holes; zero units stay zero units."""
    resume = resume or Resume()
    old = container.read_header(disk)
    container._check_size(old, disk.stat().st_size, disk)
    old_keys = container._open_keys(old_key, old, disk)
    same_dek = hmac.compare_digest(old_keys.key_check, container._derive(new_key.dek, old.salt).key_check)
    target = _Target(new_key)

    def valid(fd: int) -> bool:
        return target.adopt(fd, lambda new: new.plaintext_length == old.plaintext_length
                            and new.header_length == old.header_length and new.generation == old.generation + 1)

    with open(disk, "rb") as src, _partial(disk, resume, valid) as dst:
        if target.header is None:
            salt = old.salt if same_dek else secrets.token_bytes(container.SALT_SIZE)
            keys = old_keys if same_dek else container._derive(new_key.dek, salt)
            target.start(dst, dataclasses.replace(
                old, generation=old.generation + 1, salt=salt, key_check=keys.key_check, reference=new_key.reference,
                version=container.FORMAT_VERSION, vm_id=old.vm_id if vm_id is None else vm_id,
            ), keys, disk, header_length=old.header_length)
        new, new_keys = target.header, target.keys
        assert new is not None and new_keys is not None
        unit_size = old.unit_size
        transform: Transform | None = None  # same DEK: the ciphertext is copied as is
        if not same_dek:
            decrypt = _decryptor(old_keys.xts, unit_size)
            encrypt = new_keys.xts

            def transform(unit: int, data: memoryview) -> bytearray:  # type: ignore[misc]
                return _holes_kept(bytearray(encrypt.encrypt_units(unit, decrypt(unit, data), unit_size)),
                                   data, unit_size)
        return _copy(src.fileno(), old.header_length, dst, new.header_length, old.ciphertext_length,
                     old.ciphertext_length, unit_size, transform, resume, progress)
