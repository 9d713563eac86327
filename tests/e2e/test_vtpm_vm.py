"""`vtpm serve --vm`: the vTPM lives in the VM's encrypted .nvram, next to the EFI variables.

Inputs tried for refusal: an interrupted encryption journal, a second server
on the same VM, a wrong master key.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmcrypt import container
from vmcrypt.keys import KeyManager
from vmcrypt.nvram import Nvram
from vmcrypt.providers.registry import ProviderRegistry
from support.servers import start_vtpm
from support.tools import tools


@pytest.fixture
def encrypted_vm(tmp_path: Path, home: Path, vmcrypt_cli) -> Path:
    vm = tmp_path / "ds" / "vm1"
    vmcrypt_cli("vm", "create", str(vm), check=True)
    vmcrypt_cli("encrypt", str(vm), check=True)
    return vm


@pytest.mark.slow
def test_vtpm_state_in_encrypted_nvram(tmp_path: Path, home: Path, encrypted_vm: Path, vmcrypt_cli) -> None:
    vm = encrypted_vm
    nvram = vm / "vm1.nvram"
    efi_before = None
    args = ["--vm", str(vm / "vm1.vmx"), "--startup-clear"]
    os.environ["VMCRYPT_HOME"] = str(home)  # the served process finds the key provider there
    try:
        with start_vtpm(args, tmp_path / "log1") as tpm:
            tools(tpm, "tpm2_nvdefine", "0x1500060", "-C", "o", "-s", "20", "-a", "ownerread|ownerwrite")
            tools(tpm, "tpm2_nvwrite", "0x1500060", "-C", "o", "-i", "-", stdin=b"VTPM-SECRET-IN-NVRAM")
            second = subprocess.run([sys.executable, "-m", "vmcrypt.vtpm_command", "serve", *args, "--port", "1"],
                                    capture_output=True, text=True, timeout=30)
            assert second.returncode == 1 and "already being served" in second.stderr
        blob = nvram.read_bytes()
        assert container.is_container(nvram) and b"VTPM-SECRET-IN-NVRAM" not in blob
        keys = KeyManager(ProviderRegistry(home))
        sections = Nvram.parse(container.read_file(nvram, keys.header_key))
        assert sections.vtpm_state is not None and [v.name for v in sections.efi_variables][0] == "PlatformLang"
        efi_before = sections.efi_variables
        with start_vtpm(args, tmp_path / "log2") as tpm:
            tools(tpm, "tpm2_nvread", "0x1500060", "-C", "o", "-o", str(tmp_path / "out"))
            assert (tmp_path / "out").read_bytes() == b"VTPM-SECRET-IN-NVRAM"
    finally:
        os.environ.pop("VMCRYPT_HOME", None)
    # decrypting the VM keeps the vTPM section and the EFI variables
    vmcrypt_cli("decrypt", str(vm), check=True)
    plain = Nvram.parse(nvram.read_bytes())
    assert plain.vtpm_state is not None and plain.efi_variables == efi_before


@pytest.mark.slow
def test_refusals(tmp_path: Path, home: Path, encrypted_vm: Path) -> None:
    env = {**os.environ, "VMCRYPT_HOME": str(home)}
    (encrypted_vm / ".vm1.vmcrypt-journal").write_text(
        '{"format": 1, "operation": "encrypt", "target": null, "include_disks": false, "started": "x"}'
    )
    result = subprocess.run([sys.executable, "-m", "vmcrypt.vtpm_command", "serve", "--vm", str(encrypted_vm / "vm1.vmx"), "--port", "1"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 1 and "interrupted" in result.stderr
    (encrypted_vm / ".vm1.vmcrypt-journal").unlink()
    (master,) = home.glob("native/*/master.key")
    master.write_bytes(os.urandom(32))
    before = (encrypted_vm / "vm1.nvram").read_bytes()
    result = subprocess.run([sys.executable, "-m", "vmcrypt.vtpm_command", "serve", "--vm", str(encrypted_vm / "vm1.vmx"), "--port", "1"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 1 and "wrong master key" in result.stderr
    assert (encrypted_vm / "vm1.nvram").read_bytes() == before


def test_python_m_vtpm_serves_plain_state_only(tmp_path: Path, encrypted_vm: Path) -> None:
    """vtpm alone has no encrypted stores: --vm and --key-file are usage errors that name the `vtpm` command."""
    key = tmp_path / "k"
    key.write_bytes(os.urandom(32))
    for args in (["serve", "--vm", str(encrypted_vm / "vm1.vmx"), "--port", "1"],
                 ["info", "--state", str(tmp_path / "s"), "--key-file", str(key)]):
        result = subprocess.run([sys.executable, "-m", "vtpm", *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "vmcrypt.vtpm_command" in result.stderr, result.stderr
    assert not (tmp_path / "s").exists()
