"""The acceptance test: a hostile local operator against the running management service.

As root: a management home with an encrypted VM that has a vTPM, powered on (its vTPM served by the
service), and an inventory account ``mallory`` with the No Cryptography Administrator role. As an
unprivileged OS user (created here, removed at the end) the real CLI then tries every command:

- through the service (``--user mallory``, over the Unix socket and over HTTPS): every key provider
  and CA change (export, import, keys, add-native, add-kmip, test, set-default; import, revoke,
  reissue-ek --all, csr, import-signed), console, download, backup, vTPM removal, decrypt, rekey,
  encrypt, clone, delete --destroy-key, power-on --accept-rollback, accept-rollback: each refused
  (exit 1) naming the missing privilege, each in the audit log as denied; what she may do (list,
  browse, describe, CA show/root/CRL, provider list, audit, users, roles, datastores, hosts)
  works and shows no secret;
- directly: open() of the inventory, the datastore, the VM's .nvram; listing the home and the datastore
  (PermissionError each);
- without ``--user`` (the local administrator's mode): provider export, ca revoke, decrypt (exit 1 on
  the files' permissions).

Nothing she gets, printed or written, holds a byte of the VM's key (KEK or DEK, raw, hex or base64), the
plaintext markers of its home files, or a slice of any encrypted file or key store; the home's and the
VM's files are unchanged (the audit log aside).
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support.files import snapshot
from support.servers import REPO_ROOT
from support.service import start_service
from vmcrypt.management import Management
from vmcrypt.service_client import ServiceClient
from vmcrypt.vm import VmHome
from vmcrypt.vm_encryption import read_vmx

pytestmark = pytest.mark.slow  # some forty CLI processes as another user

MALLORY_PW = "mallory-" + secrets.token_urlsafe(8)
ADMIN_PW = "admin-" + secrets.token_urlsafe(8)
PLAINTEXT = ["PlatformLang".encode("utf-16-le"), b"Log for VMware ESX", b"com.vmware.guestinfo"]

# command (after --user mallory) -> the privilege its refusal must name
REFUSED = [
    (["provider", "export", "--passphrase-file", "{pp}", "{out}/keys.bin"], "Cryptographer.ManageKeys"),
    (["provider", "import", "--passphrase-file", "{pp}", "{out}/junk.bin"], "Cryptographer.ManageKeys"),
    (["provider", "keys"], "Cryptographer.ManageKeys"),
    (["provider", "add-native", "evil"], "Cryptographer.ManageKeyServers"),
    (["provider", "add-kmip", "evil", "--server", "127.0.0.1:5696", "--ca", "{out}/junk.bin", "--cert",
      "{out}/junk.bin", "--key", "{out}/junk.bin", "--default"], "Cryptographer.ManageKeyServers"),
    (["provider", "test", "{provider}"], "Cryptographer.ManageKeyServers"),
    (["provider", "set-default", "{provider}"], "Cryptographer.ManageEncryptionPolicy"),
    (["ca", "import", "--cert", "{out}/junk.bin", "--key", "{out}/junk.bin"], "Cryptographer.ManageKeys"),
    (["ca", "revoke", "1"], "Cryptographer.ManageKeys"),
    (["ca", "reissue-ek", "--all"], "Cryptographer.ManageKeys"),
    (["ca", "csr", "--cn", "evil", "--out", "{out}/evil.csr"], "Cryptographer.ManageKeys"),
    (["ca", "import-signed", "--chain", "{out}/junk.bin"], "Cryptographer.ManageKeys"),
    (["vm", "console", "enc"], "Cryptographer.Access"),
    (["vm", "download", "enc", "enc.nvram", "--out", "{out}/enc.nvram"], "Cryptographer.Access"),
    (["vm", "download", "enc", "enc.vmx", "--out", "{out}/enc.vmx"], "Cryptographer.Access"),
    (["backup", "enc", "{out}/enc.tar"], "Cryptographer.Access"),
    (["vtpm", "remove", "enc"], "Cryptographer.Decrypt"),
    (["decrypt", "{vm}"], "Cryptographer.Decrypt"),
    (["rekey", "{vm}", "--deep"], "Cryptographer.Recrypt"),
    (["encrypt", "{vm}", "--disks"], "Cryptographer.Encrypt"),
    (["vm", "clone", "enc", "enc-copy"], "Cryptographer.Clone"),
    (["vm", "clone", "enc", "enc-twin", "--exact"], "Cryptographer.Clone"),
    (["vm", "delete", "enc", "--destroy-key"], "Cryptographer.ManageKeys"),
    (["vm", "power-on", "enc", "--accept-rollback"], "Cryptographer.ManageKeys"),
    (["vtpm", "accept-rollback", "{vm}"], "Cryptographer.ManageKeys"),
]
ALLOWED = [["vm", "list", "--json"], ["vm", "browse", "enc"], ["describe", "{vm}", "--json"], ["ca", "show"],
           ["ca", "export-root", "--chain"], ["ca", "crl"], ["provider", "list"],
           ["inventory", "audit", "--json"], ["inventory", "users"], ["inventory", "roles"],
           ["inventory", "datastores"], ["inventory", "hosts"]]
# as the local administrator (no --user): the files' permissions refuse
LOCAL = [["provider", "export", "--passphrase-file", "{pp}", "{out}/local.bin"], ["ca", "revoke", "1"],
         ["decrypt", "{vm}"], ["provider", "list"]]


@pytest.fixture
def mallory_os_user():
    name = f"vmcrypt-mallory-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--no-create-home", name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        yield name, entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def site(mallory_os_user):
    """The home (root's), the datastore, mallory's own directory; the VM encrypted with a vTPM, powered on."""
    _, uid, gid = mallory_os_user
    base = Path(tempfile.mkdtemp(prefix="vmcrypt-hostile-", dir="/tmp"))
    os.chmod(base, 0o711)
    home, datastore, out = base / "home", base / "ds", base / "mallory"
    out.mkdir(mode=0o700)
    os.chown(out, uid, gid)
    m = Management(home)
    m.bootstrap("admin", ADMIN_PW)
    admin = m.login("admin", ADMIN_PW)
    admin.add_user("mallory", MALLORY_PW, "No Cryptography Administrator")
    admin.add_datastore("ds1", datastore)
    admin.create_vm("ds1", "enc")
    record = admin.add_vtpm("enc")
    vm = VmHome(record.vmx_path)
    reference = read_vmx(vm, None).reference
    kek = m.keys.provider(reference.provider_id).get_key(reference.key_id)
    dek = m.keys.unlock(reference).dek
    provider = m.keys.provider(reference.provider_id).name
    m.close()
    secrets_found = [kek, dek]
    secrets_found += [form for key in (kek, dek) for form in (key.hex().encode(), base64.b64encode(key))]
    (out / "pp").write_text("a backup passphrase\n")
    (out / "junk.bin").write_bytes(os.urandom(64))
    for name in ("pp", "junk.bin"):
        os.chown(out / name, uid, gid)
    with start_service(home, listen="127.0.0.1:0") as service:
        with ServiceClient(service.url) as client:
            client.login("admin", ADMIN_PW)
            on = client.request("POST", "/vms/enc/power-on")
            assert on["power_state"] == "on" and on["vtpm_port"]
            try:
                yield {"home": home, "datastore": datastore, "out": out, "vm": vm, "service": service,
                       "secrets": secrets_found, "provider": provider, "uid": uid, "gid": gid}
            finally:
                client.request("POST", "/vms/enc/power-off")
    shutil.rmtree(base, ignore_errors=True)


def _as_mallory(site: dict, *args: str, server: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(site["out"]), "LANG": "C.UTF-8",
           "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1", "VMCRYPT_PASSWORD": MALLORY_PW}
    command = ["setpriv", f"--reuid={site['uid']}", f"--regid={site['gid']}", "--clear-groups",
               sys.executable, "-m", "vmcrypt", "--home", str(site["home"]), *(server or []), *args]
    return subprocess.run(command, capture_output=True, env=env, cwd=site["out"], timeout=120)


def _fill(args: list[str], site: dict) -> list[str]:
    return [a.format(pp=site["out"] / "pp", out=site["out"], vm=site["vm"].directory, provider=site["provider"])
            for a in args]


def _guarded_files(site: dict) -> dict[str, bytes]:
    """The home's files but the audit log's database and the service's logs, and the VM's files."""
    home = {f"home/{k}": v for k, v in snapshot(site["home"]).items()
            if not k.startswith(("inventory.db", "run/"))}
    return {**home, **{f"vm/{k}": v for k, v in snapshot(site["vm"].directory).items()}}


def _leaks(site: dict, data: bytes) -> list[str]:
    found = [f"key material ({len(s)} bytes)" for s in site["secrets"] if s in data]
    found += [f"plaintext {marker!r}" for marker in PLAINTEXT if marker in data]
    for name, content in _guarded_files(site).items():
        if len(content) >= 96 and content[32:96] in data and not name.endswith(".pem"):
            found.append(f"bytes of {name}")
    return found


def test_a_no_cryptography_administrator_gets_nothing(site: dict) -> None:
    before = _guarded_files(site)
    https = ["--server", site["service"].https_url(), "--ca", str(site["home"] / "service-ca.pem")]
    outputs: list[bytes] = []
    for number, (args, privilege) in enumerate(REFUSED):
        result = _as_mallory(site, "--user", "mallory", *_fill(args, site), server=https if number % 3 == 0 else None)
        outputs += [result.stdout, result.stderr]
        stderr = result.stderr.decode()
        assert result.returncode == 1, f"{args}: exit {result.returncode}: {stderr}"
        assert "missing privilege" in stderr and privilege in stderr, f"{args}: {stderr}"
        assert "Traceback" not in stderr
    for args in ALLOWED:
        result = _as_mallory(site, "--user", "mallory", *_fill(args, site))
        outputs += [result.stdout, result.stderr]
        assert result.returncode == 0, f"{args}: {result.stderr.decode()}"
    listing = json.loads(_as_mallory(site, "--user", "mallory", "vm", "list", "--json").stdout)
    assert [(r["name"], r["encrypted"], r["vtpm"], r["power_state"]) for r in listing] == [("enc", True, True, "on")]

    # what she writes in her own directory holds nothing either
    outputs += [p.read_bytes() for p in site["out"].iterdir() if p.is_file()]
    assert not (site["out"] / "keys.bin").exists() and not (site["out"] / "enc.nvram").exists()
    leaks = [leak for data in outputs for leak in _leaks(site, data)]
    assert not leaks, leaks

    # every refusal is in the audit log, naming the privilege
    with ServiceClient(site["service"].url) as admin:
        admin.login("admin", ADMIN_PW)
        audit = admin.request("GET", "/audit")
    denied = [e for e in audit if e["user"] == "mallory" and e["outcome"] == "denied"]
    assert len(denied) == len(REFUSED)
    for entry, (_, privilege) in zip(denied, REFUSED):
        assert privilege in entry["detail"], entry
    assert _guarded_files(site) == before


def test_mallory_cannot_reach_the_files_or_act_as_local_administrator(site: dict) -> None:
    before = _guarded_files(site)
    probe = (
        "import os, sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        (os.listdir if os.path.isdir(path) else lambda p: open(p, 'rb').read())(path)\n"
        "        print('READ', path)\n"
        "    except PermissionError:\n"
        "        print('refused', path)\n"
    )
    targets = [site["home"], site["home"] / "inventory.db", site["home"] / "providers.json", site["datastore"],
               site["vm"].nvram_path, site["vm"].vmx_path, site["home"] / "service" / "ca-key.pem"]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(site["out"])}
    result = subprocess.run(["setpriv", f"--reuid={site['uid']}", f"--regid={site['gid']}", "--clear-groups",
                             sys.executable, "-c", probe, *map(str, targets)], capture_output=True, env=env,
                            timeout=60)
    assert result.stdout.decode().split("\n")[:-1] == [f"refused {t}" for t in targets], result.stderr.decode()
    for args in LOCAL:
        result = _as_mallory(site, *_fill(args, site))
        assert result.returncode == 1, f"{args}: {result.stdout!r} {result.stderr!r}"
        assert b"Permission denied" in result.stderr and b"Traceback" not in result.stderr, result.stderr
        assert not _leaks(site, result.stdout + result.stderr)
    assert not (site["out"] / "local.bin").exists()
    assert _guarded_files(site) == before
    # the service itself is still hers to ask, the way every user reaches it
    assert (site["home"] / "service-ca.pem").stat().st_mode & 0o777 == 0o644
    assert (site["home"] / "run" / "vmcrypt.sock").stat().st_mode & 0o777 == 0o666
    assert (site["home"]).stat().st_mode & 0o777 == 0o711 and site["datastore"].stat().st_mode & 0o777 == 0o700


def test_without_the_service_a_user_command_says_so(site: dict) -> None:
    idle = site["home"].parent / "idle-home"  # a home with an inventory whose service is not running
    idle.mkdir(mode=0o755)
    shutil.copy2(site["home"] / "inventory.db", idle / "inventory.db")
    command = ("--user", "mallory", "provider", "export", "--passphrase-file", str(site["out"] / "pp"),
               str(site["out"] / "keys.bin"))
    result = _as_mallory(site, "--home", str(idle), *command)
    assert result.returncode == 1
    assert f"management service not reachable at unix:{idle}/run/vmcrypt.sock".encode() in result.stderr, result.stderr
    # a home with no inventory at all says that, not "not reachable" or "login failed"
    empty = site["home"].parent / "empty-home"
    result = _as_mallory(site, "--home", str(empty), *command)
    assert result.returncode == 1
    assert f"there is no inventory in {empty}".encode() in result.stderr, result.stderr
    assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr
