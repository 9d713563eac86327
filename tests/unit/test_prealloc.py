"""PreallocatedFile: appends written through the page cache (the default), or in direct mode as whole
blocks through O_DIRECT | O_DSYNC from a buffer holding the last partial block, falling back to the
page cache where the file system refuses O_DIRECT. Every test
reads the file back through a separate descriptor and compares it byte for byte."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from durable import prealloc
from durable.prealloc import BLOCK, PreallocatedFile

HEAD = b"H" * 100


def _on_disk(path: Path) -> bytes:
    return path.read_bytes()


def _expect(path: Path, body: bytes) -> None:
    data = _on_disk(path)
    assert data[:len(body)] == body
    assert not any(data[len(body):]), "bytes after the end are not zeros"


def test_the_page_cache_is_the_default(tmp_path: Path) -> None:
    with PreallocatedFile.create(tmp_path / "j", HEAD, size=2 * BLOCK) as file:
        assert not file.direct


def _require_direct(file: PreallocatedFile) -> None:
    if not file.direct:
        pytest.skip("this file system refuses O_DIRECT (the fallback tests cover it)")


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "page-cache"])
def test_records_across_block_boundaries_are_written_whole_and_in_place(tmp_path: Path, direct: bool) -> None:
    """Random record sizes, one to three appends per sync: after every sync the file is the head,
    every record in order and zeros, its size unchanged (the blocks were preallocated)."""
    path = tmp_path / "j"
    rng = random.Random(3)
    with PreallocatedFile.create(path, HEAD, size=64 * BLOCK, direct=direct) as file:
        if direct:
            _require_direct(file)
        body = bytearray(HEAD)
        crossed = 0
        for _ in range(40):
            before = len(body) // BLOCK
            for _ in range(rng.randrange(1, 4)):
                record = rng.randbytes(rng.choice([1, 17, 300, 4000, 4096, 5000]))
                file.append(record)
                body += record
            file.sync()
            crossed += len(body) // BLOCK != before
            assert file.end == len(body)
            _expect(path, bytes(body))
        assert crossed > 5
        assert os.path.getsize(path) == 64 * BLOCK


def test_a_record_ending_exactly_on_a_block_boundary_then_the_next(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with PreallocatedFile.create(path, HEAD, size=8 * BLOCK, direct=True) as file:
        _require_direct(file)
        first = b"a" * (2 * BLOCK - len(HEAD))  # ends at 8192: the next append starts a fresh block
        file.append(first)
        file.sync()
        _expect(path, HEAD + first)
        file.append(b"b" * 10)
        file.sync()
        _expect(path, HEAD + first + b"b" * 10)
        file.sync()  # nothing new: nothing written, nothing changed
        _expect(path, HEAD + first + b"b" * 10)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "page-cache"])
def test_growth_past_the_preallocated_size_adds_whole_chunks(tmp_path: Path, direct: bool) -> None:
    path = tmp_path / "j"
    with PreallocatedFile.create(path, HEAD, size=2 * BLOCK, chunk=4 * BLOCK, direct=direct) as file:
        body = HEAD
        for size in (3000, 9000, 20000):
            record = os.urandom(size)
            file.append(record)
            file.sync()
            body += record
            _expect(path, body)
        assert file.size == os.path.getsize(path)
        assert file.size % (4 * BLOCK) == 2 * BLOCK and file.size >= len(body)


def test_reopening_mid_block_keeps_the_bytes_before_the_end(tmp_path: Path) -> None:
    """``open(end=...)`` reads the partial block back: the next block-sized write rewrites it as it was."""
    path = tmp_path / "j"
    with PreallocatedFile.create(path, HEAD, size=4 * BLOCK, direct=True) as file:
        file.append(b"x" * 5000)
        file.sync()
    with PreallocatedFile.open(path, end=len(HEAD) + 5000, chunk=4 * BLOCK, direct=True) as file:
        file.append(b"y" * 50)
        file.sync()
    _expect(path, HEAD + b"x" * 5000 + b"y" * 50)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "page-cache"])
def test_erase_from_zeroes_what_followed_and_the_next_append_goes_there(tmp_path: Path, direct: bool) -> None:
    path = tmp_path / "j"
    with PreallocatedFile.create(path, HEAD, size=4 * BLOCK, direct=direct) as file:
        file.append(b"a" * 200)
        file.sync()
        kept = file.end
        file.append(b"b" * 5000)
        file.sync()  # on disk, then given up (a failed group commit erases what was not acknowledged)
        file.append(b"c" * 30)  # never synced
        file.erase_from(kept)
        _expect(path, HEAD + b"a" * 200)
        file.append(b"d" * 20)
        file.sync()
        _expect(path, HEAD + b"a" * 200 + b"d" * 20)


def _refuse_direct_open(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def refusing(path, flags, *args, **kwargs):  # noqa: ANN001, ANN202 - os.open's signature
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT refused", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(prealloc.os, "open", refusing)


def test_a_file_system_refusing_o_direct_at_open_gets_page_cache_writes(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """What ramfs (and tmpfs before Linux 6.6) answer to open(O_DIRECT): EINVAL; the file is then
    written and fdatasync'ed through the page cache."""
    _refuse_direct_open(monkeypatch)
    path = tmp_path / "j"
    with PreallocatedFile.create(path, HEAD, size=2 * BLOCK, chunk=BLOCK, direct=True) as file:
        assert not file.direct
        file.append(b"p" * 6000)
        file.sync()
        _expect(path, HEAD + b"p" * 6000)
        file.erase_from(len(HEAD) + 10)
        file.append(b"q")
        file.sync()
        _expect(path, HEAD + b"p" * 10 + b"q")


def test_a_direct_write_refused_falls_back_and_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Open took O_DIRECT but the write answers EINVAL: what was appended is written through the page
    cache and synced, and the file stays in that mode."""
    path = tmp_path / "j"
    with PreallocatedFile.create(path, HEAD, size=2 * BLOCK, direct=True) as file:
        _require_direct(file)
        file.append(b"1" * 100)
        file.sync()
        direct_fd = file._direct_fd
        real_pwrite = os.pwrite

        def refusing(fd: int, data: bytes, offset: int) -> int:
            if fd == direct_fd:
                raise OSError(errno.EINVAL, "direct write refused")
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(prealloc.os, "pwrite", refusing)
        file.append(b"2" * 200)
        file.append(b"3" * 8000)
        file.sync()
        assert not file.direct
        _expect(path, HEAD + b"1" * 100 + b"2" * 200 + b"3" * 8000)
        file.append(b"4")
        file.sync()
        _expect(path, HEAD + b"1" * 100 + b"2" * 200 + b"3" * 8000 + b"4")
