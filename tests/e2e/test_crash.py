"""Crash safety with real processes killed by SIGKILL in the middle of writing.

A writer process rewrites one container over and over (alternating two
contents); it is killed at varying moments. Afterwards the file must decrypt
to one of the two contents. The same for a whole `vmcrypt encrypt --disks`
killed part-way: re-running it resumes, and `decrypt` rolls back to the
original bytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from durable.atomic import TEMP_PREFIX, remove_stale_temp_files
from support.files import snapshot
from vmcrypt import container
from vmcrypt.keyref import DataKey, KeyReference

WRITER = textwrap.dedent(
    """
    import sys
    from vmcrypt import container
    from vmcrypt.keyref import DataKey, KeyReference
    path, dek = sys.argv[1], bytes.fromhex(sys.argv[2])
    key = DataKey(dek, KeyReference("p", "k"))
    contents = [bytes([65]) * (3 << 20), bytes([66]) * (2 << 20) + b"tail"]
    print("ready", flush=True)
    i = 0
    while True:
        container.write_file(path, contents[i % 2], key, label="crash")
        i += 1
    """
)


@pytest.mark.slow
def test_sigkill_mid_write_leaves_old_or_new(tmp_path: Path) -> None:
    dek = os.urandom(32)
    key = DataKey(dek, KeyReference("p", "k"))
    path = tmp_path / "target.vmc"
    container.write_file(path, b"A" * (3 << 20), key, label="crash")
    allowed = {b"A" * (3 << 20), b"B" * (2 << 20) + b"tail"}
    outcomes = set()
    for attempt in range(25):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), dek.hex()], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.01 + (attempt % 10) * 0.013)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        content = container.read_file(path, key)
        assert content in allowed
        outcomes.add(content[:1])
    assert outcomes == {b"A", b"B"}, "the kill never landed between two different writes"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert len(remove_stale_temp_files(tmp_path)) == len(leftovers)
    assert [p.name for p in tmp_path.iterdir()] == ["target.vmc"]


def _start(home: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCRYPT_")}
    return subprocess.Popen(
        [sys.executable, "-m", "vmcrypt", "--home", str(home), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )


@pytest.mark.slow
@pytest.mark.parametrize("recovery", ["resume", "rollback"])
def test_sigkill_mid_vm_encrypt(tmp_path: Path, home: Path, vmcrypt_cli, recovery: str) -> None:
    vm = tmp_path / "vm"
    vmcrypt_cli("vm", "create", str(vm), "--disk", "256M", check=True)
    with open(vm / "vm-flat.vmdk", "r+b") as disk:
        disk.write(os.urandom(1 << 20))
    original = snapshot(vm)
    interrupted = 0
    journal = vm / ".vm.vmcrypt-journal"
    for delay in (0.05, 0.2, 0.0, 0.1, 0.3, 0.02, 0.15):
        proc = _start(home, "encrypt", str(vm), "--disks")
        # Kill once the operation is under way (its journal exists), however slow the start-up.
        deadline = time.monotonic() + 60
        while not journal.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL and journal.exists():
            interrupted += 1
            break
        if container.is_container(vm / "vm.nvram"):  # finished before the kill: start over
            vmcrypt_cli("decrypt", str(vm), check=True)
    assert interrupted, "encryption always finished before the kill; no crash was exercised"
    described = vmcrypt_cli("describe", str(vm), "--json", check=True).stdout
    assert '"interrupted_operation": {' in described

    if recovery == "resume":
        result = vmcrypt_cli("encrypt", str(vm), "--disks", "--json", check=True)
        assert '"resumed": true' in result.stdout
        assert all(container.is_container(vm / n) for n in ("vm.nvram", "vmware.log", "namespacedb", "vm-flat.vmdk"))
        vmcrypt_cli("decrypt", str(vm), check=True)
    else:
        vmcrypt_cli("decrypt", str(vm), check=True)
    assert snapshot(vm) == original


def test_interrupted_encrypt_blocks_other_operations(tmp_path: Path, home: Path, vmcrypt_cli) -> None:
    vm = tmp_path / "vm"
    vmcrypt_cli("vm", "create", str(vm), check=True)
    original = snapshot(vm)
    vmcrypt_cli("encrypt", str(vm), check=True)
    vmcrypt_cli("decrypt", str(vm), check=True)
    # Simulate a crash right after the journal was written and one file encrypted.
    from vmcrypt.keys import KeyManager
    from vmcrypt.providers.registry import ProviderRegistry
    from vmcrypt.vm import VmHome
    from vmcrypt.vm_encryption import Journal, Operation

    keys = KeyManager(ProviderRegistry(home))
    target = keys.new_data_key()
    Journal(Operation.ENCRYPT, target.reference.to_keysafe(), False).save(VmHome(vm))
    container.encrypt_file_in_place(vm / "vmware.log", target, label="log:vmware.log")
    refused = vmcrypt_cli("rekey", str(vm))
    assert refused.returncode == 1 and "interrupted" in refused.stderr
    vmcrypt_cli("decrypt", str(vm), check=True)
    assert snapshot(vm) == original
