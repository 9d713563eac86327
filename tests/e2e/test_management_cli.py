"""The same lifecycle and role table through the real `vmcrypt --user` command line.

Inputs tried for refusal: a command needing --user without it, a wrong password,
a second `inventory init`, a VM path outside every datastore, and each privilege
a No Cryptography Administrator lacks on an encrypted VM.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from support.files import snapshot
from support.tpm_helpers import check_served_on
from vtpm import free_port_pair

pytestmark = pytest.mark.slow  # each test drives the management plane through many CLI processes: 8-19 s

ADMIN = {"VMCRYPT_PASSWORD": "correct horse battery"}
NOCRYPTO = {"VMCRYPT_PASSWORD": "staple paper clips"}


@pytest.fixture
def setup(tmp_path: Path, vmcrypt_cli):
    vmcrypt_cli("inventory", "init", "--admin", "admin", env=ADMIN, check=True)
    vmcrypt_cli("--user", "admin", "inventory", "user-add", "nocrypto", "--role", "No Cryptography Administrator",
                env={**ADMIN, **{"VMCRYPT_NEW_PASSWORD": NOCRYPTO["VMCRYPT_PASSWORD"]}}, check=True)
    ds = tmp_path / "ds1"
    vmcrypt_cli("--user", "admin", "inventory", "datastore-add", "ds1", str(ds), env=ADMIN, check=True)
    vmcrypt_cli("--user", "admin", "vm", "create", str(ds / "enc"), env=ADMIN, check=True)
    vmcrypt_cli("--user", "admin", "vtpm", "add", str(ds / "enc"), env=ADMIN, check=True)
    vmcrypt_cli("--user", "admin", "vm", "create", str(ds / "plain"), env=ADMIN, check=True)
    yield ds
    listing = json.loads(vmcrypt_cli("--user", "admin", "vm", "list", "--json", env=ADMIN, check=True).stdout)
    for row in listing:
        if row["power_state"] == "on":
            vmcrypt_cli("--user", "admin", "vm", "power-off", row["name"], env=ADMIN)


def _args(operation: str, vm: str, tmp_path: Path) -> list[str]:
    return {
        "console": ["vm", "console", vm],
        "download": ["vm", "download", vm, f"{vm}.nvram", "--out", str(tmp_path / f"{vm}.download")],
        "browse": ["vm", "browse", vm],
        "remove vTPM": ["vtpm", "remove", vm],
        "power on": ["vm", "power-on", vm],
        "power off": ["vm", "power-off", vm],
    }[operation]


TABLE = [
    ("admin", "console", "enc", None), ("admin", "download", "enc", None), ("admin", "console", "plain", None),
    ("nocrypto", "console", "enc", "Cryptographer.Access"), ("nocrypto", "console", "plain", None),
    ("nocrypto", "download", "enc", "Cryptographer.Access"), ("nocrypto", "download", "plain", None),
    ("nocrypto", "remove vTPM", "enc", "Cryptographer.Decrypt"), ("nocrypto", "browse", "enc", None),
    ("nocrypto", "power on", "enc", None), ("admin", "remove vTPM", "enc", None),
]


def test_role_table_through_the_cli(tmp_path: Path, setup: Path, vmcrypt_cli) -> None:
    for user, operation, vm, missing in TABLE:
        env = ADMIN if user == "admin" else NOCRYPTO
        before = snapshot(setup / vm)
        result = vmcrypt_cli("--user", user, *_args(operation, vm, tmp_path), env=env)
        case = f"{user} {operation} {vm}"
        if missing is None:
            assert result.returncode == 0, f"{case}: {result.stderr}"
            if operation == "download":
                assert (tmp_path / f"{vm}.download").read_bytes() == (setup / vm / f"{vm}.nvram").read_bytes()
            if operation == "power on":
                assert "TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=" in result.stdout
                vmcrypt_cli("--user", user, "vm", "power-off", vm, env=env, check=True)
        else:
            assert result.returncode == 1, case
            assert f"missing privilege {missing}" in result.stderr, case
            assert snapshot(setup / vm) == before, case
    audit = json.loads(vmcrypt_cli("--user", "admin", "inventory", "audit", "--json", env=ADMIN, check=True).stdout)
    denied = [(e["user"], e["action"], e["entity"]) for e in audit if e["outcome"] == "denied"]
    assert denied == [("nocrypto", "open console", "vm enc"), ("nocrypto", "download file", "vm enc"),
                      ("nocrypto", "remove vTPM", "vm enc")]
    listing = json.loads(vmcrypt_cli("--user", "nocrypto", "vm", "list", "--json", env=NOCRYPTO, check=True).stdout)
    assert {r["name"]: (r["encrypted"], r["vtpm"]) for r in listing} == {"enc": (True, False), "plain": (False, False)}


def test_lifecycle_story_through_the_cli(tmp_path: Path, setup: Path, vmcrypt_cli) -> None:
    """Power on, write NV + extend a PCR with tpm2-tools, power off, encrypted at rest, power on, read back."""
    on = json.loads(vmcrypt_cli("--user", "nocrypto", "vm", "power-on", "enc", "--json", env=NOCRYPTO, check=True).stdout)
    env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={on['vtpm_port']}"}
    run = lambda *a, stdin=None: subprocess.run(a, env=env, input=stdin, capture_output=True, timeout=60, check=True)  # noqa: E731
    run("tpm2_startup", "-c")
    run("tpm2_nvdefine", "0x1500030", "-C", "o", "-s", "9", "-a", "ownerread|ownerwrite")
    run("tpm2_nvwrite", "0x1500030", "-C", "o", "-i", "-", stdin=b"CLI-STORY")
    vmcrypt_cli("--user", "nocrypto", "vm", "power-off", "enc", env=NOCRYPTO, check=True)
    assert b"CLI-STORY" not in (setup / "enc" / "enc.nvram").read_bytes()
    on = json.loads(vmcrypt_cli("--user", "admin", "vm", "power-on", "enc", "--json", env=ADMIN, check=True).stdout)
    env["TPM2TOOLS_TCTI"] = f"swtpm:host=127.0.0.1,port={on['vtpm_port']}"
    run("tpm2_startup", "-c")
    run("tpm2_nvread", "0x1500030", "-C", "o", "-o", str(tmp_path / "nv"))
    assert (tmp_path / "nv").read_bytes() == b"CLI-STORY"
    assert "enc suspended" in vmcrypt_cli("--user", "admin", "vm", "suspend", "enc", env=ADMIN, check=True).stdout
    assert container_magic(setup / "enc" / "enc.vmss")
    assert "enc resumed; vTPM at" in vmcrypt_cli("--user", "admin", "vm", "resume", "enc", env=ADMIN, check=True).stdout
    vmcrypt_cli("--user", "admin", "vm", "power-off", "enc", env=ADMIN, check=True)


def container_magic(path: Path) -> bool:
    from vmcrypt import container

    return container.is_container(path)


def test_cli_refusals(tmp_path: Path, setup: Path, vmcrypt_cli) -> None:
    needs_user = vmcrypt_cli("vm", "console", "enc")
    assert needs_user.returncode == 1 and "give --user NAME" in needs_user.stderr
    wrong = vmcrypt_cli("--user", "admin", "vm", "list", env={"VMCRYPT_PASSWORD": "nope"})
    assert wrong.returncode == 1 and "login failed for 'admin'" in wrong.stderr
    again = vmcrypt_cli("inventory", "init", "--admin", "mallory", env={"VMCRYPT_PASSWORD": "x"})
    assert again.returncode == 1 and "already has users" in again.stderr
    outside = vmcrypt_cli("--user", "admin", "vm", "create", str(tmp_path / "elsewhere" / "vm9"), env=ADMIN)
    assert outside.returncode == 1 and "not inside a datastore" in outside.stderr
    assert not (tmp_path / "elsewhere" / "vm9").exists()
    # without --user the path commands act on files directly, as before
    assert vmcrypt_cli("describe", str(setup / "plain"), check=True).returncode == 0


def test_snapshot_and_delete_through_the_cli(setup: Path, vmcrypt_cli) -> None:
    snap = vmcrypt_cli("--user", "nocrypto", "vm", "snapshot", "enc", env=NOCRYPTO, check=True)
    assert "snapshot 1 of enc in enc-Snapshot1.vmsn" in snap.stdout
    assert (setup / "enc" / "enc-Snapshot1.vmsn").exists()
    assert "reverted to snapshot 1" in vmcrypt_cli("--user", "admin", "vm", "revert", "enc", env=ADMIN, check=True).stdout
    refused = vmcrypt_cli("--user", "nocrypto", "vm", "clone", "enc", "enc2", "--exact", env=NOCRYPTO)
    assert refused.returncode == 1 and "missing privilege Cryptographer.Clone" in refused.stderr
    cloned = vmcrypt_cli("--user", "admin", "vm", "clone", "enc", "enc2", env=ADMIN, check=True)
    assert "cloned enc to enc2 with a new identity" in cloned.stdout
    vmcrypt_cli("--user", "admin", "inventory", "datastore-add", "ds2", str(setup.parent / "ds2"), env=ADMIN, check=True)
    vmcrypt_cli("--user", "admin", "inventory", "host-add", "esx01", env=ADMIN, check=True)
    allowed = vmcrypt_cli("--user", "nocrypto", "inventory", "host-add", "esx02", env=NOCRYPTO)
    assert allowed.returncode == 0  # Host.Inventory.* is not a Cryptographer privilege
    moved = vmcrypt_cli("--user", "nocrypto", "vm", "migrate", "enc", "--datastore", "ds2", env=NOCRYPTO, check=True)
    assert "enc migrated to ds2" in moved.stdout and (setup.parent / "ds2" / "enc" / "enc.vmx").exists()
    assert not (setup / "enc").exists()
    vmcrypt_cli("--user", "nocrypto", "vm", "delete", "plain", env=NOCRYPTO, check=True)
    assert not (setup / "plain").exists()
    listing = json.loads(vmcrypt_cli("--user", "admin", "vm", "list", "--json", env=ADMIN, check=True).stdout)
    assert [r["name"] for r in listing] == ["enc", "enc2"]


def test_power_on_takes_the_vtpm_port_and_a_unix_data_socket(tmp_path: Path, vmcrypt_cli) -> None:
    """`vm power-on --port P --data-unix` over the real service: the vTPM answers on exactly that TCP port
    and on the Unix socket the service names (inside its own run directory); a bad port is refused."""
    vmcrypt_cli("inventory", "init", "--admin", "admin", env=ADMIN, check=True)
    ds = tmp_path / "ds1"
    vmcrypt_cli("--user", "admin", "inventory", "datastore-add", "ds1", str(ds), env=ADMIN, check=True)
    vmcrypt_cli("--user", "admin", "vm", "create", str(ds / "vm1"), env=ADMIN, check=True)
    vmcrypt_cli("--user", "admin", "vtpm", "add", str(ds / "vm1"), env=ADMIN, check=True)

    refused = vmcrypt_cli("--user", "admin", "vm", "power-on", "vm1", "--port", "80", env=ADMIN)
    assert refused.returncode == 1 and "'port' must be between 1024 and 65534" in refused.stderr
    port = free_port_pair()
    on = json.loads(vmcrypt_cli("--user", "admin", "vm", "power-on", "vm1", "--port", str(port), "--data-unix",
                                "--json", env=ADMIN, check=True).stdout)
    try:
        assert on["vtpm_port"] == port
        data_unix = Path(on["vtpm_data_unix"])
        assert data_unix.name == "vm1.sock" and data_unix.is_socket()
        assert data_unix.parent.stat().st_mode & 0o777 == 0o700
        check_served_on(port, data_unix)
    finally:
        vmcrypt_cli("--user", "admin", "vm", "power-off", "vm1", env=ADMIN, check=True)
    text = vmcrypt_cli("--user", "admin", "vm", "power-on", "vm1", "--data-unix", env=ADMIN, check=True).stdout
    vmcrypt_cli("--user", "admin", "vm", "power-off", "vm1", env=ADMIN, check=True)
    assert f"data socket {data_unix}" in text
