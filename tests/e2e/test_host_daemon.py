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
import os
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


def test_a_running_host_attests_to_the_trust_authority_through_its_daemon(tmp_path: Path) -> None:
    from support.trust import manufacturer
    from support.trust_services import start_trust_services
    from vmcrypt.trust.agent import agent_for
    from vmcrypt.trust.workload import NOT_TRUSTED, AuthorityIdentity, HostNotTrusted, agent_dir, check_attested

    workload, ta_home = tmp_path / "workload", tmp_path / "ta"
    workload.mkdir(mode=0o700)
    manifest = tmp_path / "image.json"
    manifest.write_text(image().manifest.to_json())

    def vmcrypt(home: Path, *args: str, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VMCRYPT_")}
        env["VMCRYPT_PASSWORD"] = ADMIN_PASSWORD
        command = [*host_command(home, "x")[:5], *(["--user", user] if user else []), *args]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert not check or done.returncode == 0, (args, done.stderr)
        return done

    with start_host(workload, "esx-good", "--image", str(manifest)), \
            start_host(workload, "esx-bad", "--image", str(manifest), "--tamper", "modified-vib"):
        (tmp_path / "manufacturer.pem").write_bytes(manufacturer(workload).certificate_pem())
        vmcrypt(workload, "trust", "export-hosts", "--cluster", "wl", "--out", str(tmp_path / "hosts.json"))
        vmcrypt(ta_home, "inventory", "init", "--admin", "ta-admin")
        vmcrypt(ta_home, "trust", "enable", "--name", "ta1")
        vmcrypt(ta_home, "trust", "admin-add", "ta-admin")
        vmcrypt(ta_home, "trust", "import-hosts", str(tmp_path / "hosts.json"), user="ta-admin")
        vmcrypt(ta_home, "trust", "import-image", str(manifest), user="ta-admin")
        vmcrypt(ta_home, "trust", "add-manufacturer-ca", str(tmp_path / "manufacturer.pem"), user="ta-admin")
        with start_trust_services(ta_home) as services:
            vmcrypt(ta_home, "trust", "export-identity", "--attestation-url", services.attestation_url,
                    "--key-provider-url", services.key_provider_url, "--out", str(tmp_path / "ta1.json"))
            vmcrypt(workload, "trust", "import-identity", str(tmp_path / "ta1.json"))
            identity = AuthorityIdentity.load(workload, "ta1")

            good = json.loads(vmcrypt(workload, "trust", "attest-host", "esx-good", "--authority", "ta1",
                                      "--json").stdout)
            assert (good["host"], good["authority"]) == ("esx-good", "ta1")
            claims = check_attested(identity, "esx-good")  # the management plane's placement rule
            assert (claims.host, claims.cluster, claims.version) == ("esx-good", "wl", "8.0.2")
            assert stat.S_IMODE((agent_dir(workload, "esx-good") / "token.jwt").stat().st_mode) == 0o600

            # the key path's agent renews through the running host: a missing token is attested again
            token_file = agent_dir(workload, "esx-good") / "token.jwt"
            first_token = token_file.read_text()
            token_file.unlink()
            renewed = agent_for(workload, "esx-good", identity).token()
            assert renewed != first_token and token_file.read_text() == renewed
            assert identity.token_verifier().verify(renewed).host == "esx-good"

            bad = vmcrypt(workload, "trust", "attest-host", "esx-bad", "--authority", "ta1", check=False)
            assert bad.returncode == 1 and "attestation refused" in bad.stderr and TAMPERED_VIB in bad.stderr
            assert not (agent_dir(workload, "esx-bad") / "token.jwt").exists()
            with pytest.raises(HostNotTrusted, match=NOT_TRUSTED + ".*" + TAMPERED_VIB):
                check_attested(identity, "esx-bad")

            unknown = vmcrypt(workload, "trust", "attest-host", "esx-good", "--authority", "nope", check=False)
            assert unknown.returncode == 1 and "no Trust Authority 'nope'" in unknown.stderr
    stopped = vmcrypt(workload, "trust", "attest-host", "esx-good", "--authority", "ta1", check=False)
    assert stopped.returncode == 1 and "host esx-good is not running" in stopped.stderr
    token_file.unlink()  # and without a running host there is nothing to renew with
    with pytest.raises(Exception, match="holds no attestation token"):
        agent_for(workload, "esx-good", identity).token()
