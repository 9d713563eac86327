"""The scripts in examples/ run as a user would run them, each in its own temp directory.

They use only the public surface (``from vmcrypt import ...``, ``from vtpm import ...``);
with ``$VMCRYPT_HOME`` set everything they write is under it, without it under a new
directory in ``$TMPDIR``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from vtpm import free_port_pair

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REPO = EXAMPLES.parent


def run_example(script: str, tmp_path: Path, *args: str, home: Path | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "PYTHONPATH": str(REPO)}
    env.pop("VMCRYPT_HOME", None)
    if home is not None:
        env["VMCRYPT_HOME"] = str(home)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_examples_import_only_the_public_surface() -> None:
    for script in EXAMPLES.glob("*.py"):
        imports = re.findall(r"^from (vmcrypt|vtpm)(\.\w+)* import", script.read_text(), flags=re.M)
        assert all(sub == "" for _, sub in imports), script.name


def test_create_encrypt_vm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port, data_unix = free_port_pair(), tmp_path / "vm1-tpm.sock"
    done = run_example("create_encrypt_vm.py", tmp_path, "--port", str(port), "--data-unix", str(data_unix),
                       home=home)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"vm1 at .*: encrypted=True, vTPM on port {port} and {data_unix} gave 16 random bytes\n",
                        done.stdout)
    assert str(home) in done.stdout  # the VM lives under $VMCRYPT_HOME
    assert (home / "datastore" / "vm1" / "vm1.vmx").is_file()


def test_benchmark_hot_paths_without_vmcrypt_home_uses_a_temp_dir(tmp_path: Path) -> None:
    done = run_example("benchmark_hot_paths.py", tmp_path, home=None)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["GetRandom(32)", "PCR_Extend(16,", "PCR_Read(0-7,",
                                                   "encrypt_vm", "decrypt_vm"]
    assert all(float(re.search(r"\s([\d.]+) (commands|MB)/s", line).group(1)) > 0 for line in lines)
    assert len(list((tmp_path / "tmp").glob("vmcrypt-bench-*"))) == 1


def test_backup_restore(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = run_example("backup_restore.py", tmp_path, home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "restored identical to the original" in done.stdout
    assert (home / "vm1-backup.tar").is_file()
