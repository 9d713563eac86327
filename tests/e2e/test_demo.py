"""The README demo runs end to end and shows what it claims."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.servers import REPO_ROOT
from vtpm import free_port_pair


def test_demo(tmp_path: Path) -> None:
    """Run from an empty current directory with $VMCRYPT_HOME set: the home is used, the directory untouched."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "VMCRYPT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO_ROOT)}
    port, data_unix = free_port_pair(), tmp_path / "vtpm.sock"
    result = subprocess.run(
        [sys.executable, "-m", "vmcrypt.demo", "--out", str(tmp_path / "demo"), "--disk", "8M",
         "--port", str(port), "--data-unix", str(data_unix)],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert list(cwd.iterdir()) == []
    assert out.count(f"vTPM at TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port={port}\n") == 1
    assert f"and on the Unix data socket {data_unix}" in out
    assert f"management home: {tmp_path / 'home'}" in out and (tmp_path / "home" / "inventory.db").exists()
    assert not (tmp_path / "demo" / "home").exists()
    assert "encrypted     yes" in out and "AES-XTS-256" in out
    assert "FOUND (bad)" not in out and out.count("not found") == 4
    assert "integrity check failed" in out
    assert "byte-for-byte identical to before encryption: True" in out
    assert ".nvram is still an encrypted container: True; NV secret readable in it: False" in out
    assert "0x01500016" in out
    assert out.count("refused: 'operator' may not") == 5 and "missing privilege Cryptographer.Access" in out
    assert "may not export keys on root: missing privilege Cryptographer.ManageKeys" in out
    assert "may not import CA on root: missing privilege" in out
    assert "VM files unchanged: True" in out
    assert "$ tpm2_nvread 0x1500016 -> 'DEMO-VTPM-NV-SECRET!!'" in out
    assert "openssl verify -CAfile vmca-root.pem ek-rsa.pem -> OK" in out
    assert "same public key as the certificate: True" in out
    assert out.count("denied  ") == 5
    # the Trust Authority: the trusted host passes, the tampered one fails naming the VIB, the key goes only
    # to the trusted one and the trusted VM does not power on on the tampered host
    assert "esx-01: attestation passed, version 8.0.2" in out
    assert "esx-02: attestation FAILED: VIB 'esx-base'" in out
    assert "key released to esx-01: 32 bytes" in out and "key refused to esx-02" in out
    assert "power on trusted-vm on esx-02 refused: destination host is not trusted and attested" in out
