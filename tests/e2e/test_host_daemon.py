"""Hosts as running processes: `vmcrypt host run` daemons answer the management service's 6.7 view.

Two real host daemons (one booted from the trusted image, one with its first VIB modified) and a
third host without a TPM; the real management service attests them through `inventory host-attest`
and shows the same in the security report. The daemon's endpoint is tried with malformed lines (not
JSON, a JSON array, an unknown op, an unknown field, a challenge with bad base64, a challenge that is
not an object, an oversize line); a second daemon for the same host; SIGTERM; a restart (a fresh boot
that attests again); a stopped daemon (the host does not answer).
"""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from support.host_daemon import host_command, start_host
from support.trust import image
from support.trust_view import ADMIN, ADMIN_PASSWORD, READER, READER_PASSWORD, TAMPERED_VIB, attested_home
from vmcrypt.trust.host_endpoint import RemoteHost
from vtpm.host_protocol import MAX_LINE

pytestmark = pytest.mark.slow  # two host boots, a restart, a management service and a dozen CLI processes
ADMIN_ENV = {"VMCRYPT_PASSWORD": ADMIN_PASSWORD}


def _exchange(path: Path, payload: bytes) -> dict:
    """Send raw bytes on the host's socket, read its one answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(payload)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return json.loads(answer)


def _attest(vmcrypt_cli, *names: str) -> dict[str, tuple[str, list[str], str | None]]:  # noqa: ANN001
    rows = json.loads(vmcrypt_cli("--user", ADMIN, "inventory", "host-attest", *names, "--json", env=ADMIN_ENV,
                                  check=True).stdout)
    return {r["host"]: (r["status"], r["reasons"], r["version"]) for r in rows}


def test_running_hosts_are_attested_through_the_service(home: Path, vmcrypt_cli) -> None:  # noqa: ANN001
    attested_home(home, attest=False)  # the hosts' TPMs exist; the service trusts their manufacturer
    manifest = home.parent / "image.json"
    manifest.write_text(image().manifest.to_json())
    with start_host(home, "esx-trusted", "--image", str(manifest)) as trusted, \
            start_host(home, "esx-tampered", "--image", str(manifest), "--tamper", "modified-vib"):
        assert "booted 8.0.2" in trusted.log_text()
        run = trusted.socket_path.parent
        assert stat.S_IMODE(run.stat().st_mode) == 0o700
        assert stat.S_IMODE(trusted.socket_path.stat().st_mode) == 0o600
        assert (run / "host.pid").read_text().strip() == str(trusted.proc.pid)

        rows = _attest(vmcrypt_cli)
        assert rows["esx-trusted"] == ("Passed", [], "8.0.2")
        status, reasons, _ = rows["esx-tampered"]
        assert status == "Failed" and any(f"VIB '{TAMPERED_VIB}'" in r for r in reasons), reasons
        assert rows["esx-notpm"][:2] == ("N/A", ["no TPM 2.0"])

        report = json.loads(vmcrypt_cli("--user", READER, "inventory", "security-report", "--json",
                                        env={"VMCRYPT_PASSWORD": READER_PASSWORD}, check=True).stdout)
        by_host = {h["host"]: h for h in report["hosts"]}
        assert {h: r["status"] for h, r in by_host.items()} == {
            "esx-trusted": "Passed", "esx-tampered": "Failed", "esx-notpm": "N/A"}
        assert by_host["esx-tampered"]["reasons"] == reasons

        # one host, one daemon: a second one exits 1 saying so, and the first still answers its boot
        first_boot = RemoteHost(home / "hosts" / "esx-trusted").describe()
        second = subprocess.run(host_command(home, "esx-trusted"), capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert f"host esx-trusted is already running (pid {trusted.proc.pid})" in second.stderr
        assert RemoteHost(home / "hosts" / "esx-trusted").describe() == first_boot

        # SIGTERM: exit 0, the endpoint gone
        trusted.proc.send_signal(signal.SIGTERM)
        assert trusted.proc.wait(30) == 0
        assert not trusted.socket_path.exists() and not (run / "host.pid").exists()

        # a host with a TPM and no daemon does not answer: Failed saying so
        stopped = _attest(vmcrypt_cli, "esx-trusted")["esx-trusted"]
        assert stopped[0] == "Failed" and "the host did not answer" in stopped[1][0]

        # a restart is a reboot: PCRs reset and measured again (the replay would not match otherwise)
        with start_host(home, "esx-trusted", "--image", str(manifest)) as again:
            rebooted = RemoteHost(home / "hosts" / "esx-trusted").describe()
            assert rebooted["booted_at"] > first_boot["booted_at"] and rebooted["pid"] == again.proc.pid
            assert _attest(vmcrypt_cli, "esx-trusted")["esx-trusted"] == ("Passed", [], "8.0.2")
    audit = json.loads(vmcrypt_cli("--user", ADMIN, "inventory", "audit", "--json", env=ADMIN_ENV, check=True).stdout)
    alarms = [e["entity"] for e in audit if e["action"] == "host attestation" and e["outcome"] == "alarm"]
    assert alarms == ["host esx-tampered", "host esx-trusted"]  # the tampered boot, then the stopped host


def test_the_endpoint_refuses_malformed_lines(home: Path) -> None:
    attested_home(home, attest=False)
    with start_host(home, "esx-trusted") as host:
        path = host.socket_path
        for payload, error in (
                (b"this is not json\n", "the request is not JSON"),
                (b"[1, 2]\n", "the request must be a JSON object"),
                (b'{"op": "reboot"}\n', "unknown op 'reboot'"),
                (b'{"op": "ping", "extra": 1}\n', "unknown field(s) extra"),
                (b'{"op": "answer", "challenge": "x"}\n', "challenge must be a JSON object"),
                (json.dumps({"op": "answer", "challenge": {"nonce": "***", "credential_blob": "", "encrypted_secret": "",
                                                             "expires": "2030-01-01T00:00:00+00:00"}}).encode() + b"\n",
                 "the challenge is malformed: nonce"),
                (b'{"op": "attest", "authority": "../x"}\n', "authority must be the name"),
                (b"x" * (MAX_LINE + 10) + b"\n", f"request longer than {MAX_LINE} bytes")):
            answer = _exchange(path, payload)
            assert answer["ok"] is False and error in answer["error"], (payload[:60], answer)
        # after all that, it still answers well-formed requests
        assert _exchange(path, b'{"op": "ping"}\n') == {"ok": True, "host": "esx-trusted", "pid": host.proc.pid}
        identity = _exchange(path, b'{"op": "identity"}\n')
        assert identity["ok"] and identity["ek_certificate"] and identity["ak_public"]
        host.proc.send_signal(signal.SIGTERM)
        assert host.proc.wait(30) == 0
