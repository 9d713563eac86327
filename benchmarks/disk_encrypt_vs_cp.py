"""Encrypting a sparse disk against `cp` + `sync` of the same file, in the same run and directory.

Prints both throughputs (logical disk bytes per second) and their ratio (target >= 0.8), `du`
of the disk before and after (holes must stay holes), and a resume check: an encryption SIGINTed
at about half of the data resumes and transforms < 60% of the data after the interruption.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/disk_encrypt_vs_cp.py [--size 2G] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmcrypt import disk_stream
from vmcrypt.vm import parse_size
from vmcrypt.keys import KeyManager
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.vm_encryption import decrypt_vm, encrypt_vm, open_vm

MIB = 1 << 20
SEGMENTS = 16  # the disk alternates 3/4 data and 1/4 hole in this many segments


def make_disk(path: Path, size: int) -> int:
    """Rewrite ``path`` as ``size`` bytes, 3/4 random data and 1/4 holes; return the data bytes."""
    segment = size // SEGMENTS // MIB * MIB
    data = segment * 3 // 4 // MIB * MIB
    block = os.urandom(8 * MIB)
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(SEGMENTS):
            f.seek(i * segment)
            left = data
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
    os.sync()
    return data * SEGMENTS


def du(path: Path) -> str:
    return subprocess.run(["du", "-h", str(path)], capture_output=True, text=True).stdout.split()[0]


def vmcrypt(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vmcrypt", "--home", str(home), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G", help="logical disk size (default 2G)")
    parser.add_argument("--dir", default=None, help="directory to work in (default: a new temp dir)")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="disk-bench-", dir=args.dir))
    try:
        home = work / "home"
        home.mkdir(mode=0o700)
        vm_dir = work / "vm1"
        assert vmcrypt(home, "vm", "create", str(vm_dir), "--disk", "1M").wait() == 0
        disk = vm_dir / "vm1-flat.vmdk"
        data = make_disk(disk, size)
        print(f"disk: {size / MIB:.0f} MiB logical, {data / MIB:.0f} MiB data, du {du(disk)}")

        copy = work / "copy.img"
        start = time.perf_counter()
        subprocess.run(["cp", str(disk), str(copy)], check=True)
        os.sync()
        cp_seconds = time.perf_counter() - start
        print(f"cp + sync:  {cp_seconds:6.2f} s  {size / cp_seconds / 1e6:7.1f} MB/s  (du of copy {du(copy)})")
        copy.unlink()
        os.sync()

        keys = KeyManager(ProviderRegistry(home))
        du_before = du(disk)
        start = time.perf_counter()
        encrypt_vm(open_vm(vm_dir), keys, include_disks=True)
        os.sync()
        enc_seconds = time.perf_counter() - start
        print(f"encrypt:    {enc_seconds:6.2f} s  {size / enc_seconds / 1e6:7.1f} MB/s  (du {du_before} -> {du(disk)})")
        print(f"ratio encrypt/cp throughput: {cp_seconds / enc_seconds:.2f}x (target >= 0.8)")

        decrypt_vm(open_vm(vm_dir), keys)
        partial = disk_stream.partial_path(disk)
        proc = vmcrypt(home, "encrypt", str(vm_dir), "--disks")
        while proc.poll() is None:
            if partial.exists() and partial.stat().st_blocks * 512 >= data // 2:
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.02)
        code = proc.wait()
        print(f"interrupted at ~50%: exit {code}, partial file holds {partial.stat().st_blocks * 512 / MIB:.0f} MiB")
        stats: list[disk_stream.StreamStats] = []
        real_copy = disk_stream._copy

        def observed(*a, **k):  # count the bytes the resumed run really transforms
            result = real_copy(*a, **k)
            stats.append(result)
            return result

        disk_stream._copy = observed  # type: ignore[assignment]
        encrypt_vm(open_vm(vm_dir), keys, include_disks=True)
        disk_stream._copy = real_copy  # type: ignore[assignment]
        redone = sum(s.transformed for s in stats)
        resumed_from = max((s.resumed_from for s in stats), default=0)
        print(f"resume: continued from {resumed_from / MIB:.0f} MiB, transformed {redone / MIB:.0f} MiB "
              f"= {redone / data:.0%} of the data after the interruption (target < 60%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
