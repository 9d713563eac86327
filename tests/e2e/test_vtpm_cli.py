"""The `vtpm` command line in real processes: serving and stopping, a state encrypted with a
key file, refusals, help.

Inputs tried for refusal: a wrong key file, a plain state where a key file is
needed, a flipped byte in the encrypted state, a truncated state, garbage JSON
state, a key file of the wrong size, an unknown option, no state at all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.servers import start_vtpm
from support.tools import needs_tools, tools

CTRL_SHUTDOWN = 0x03


def _vtpm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcrypt.vtpm_command", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
@needs_tools("tpm2_nvdefine")
def test_encrypted_state_with_key_file(tmp_path: Path) -> None:
    key = tmp_path / "state.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    state = tmp_path / "state"
    with start_vtpm(["--state", str(state), "--key-file", str(key), "--startup-clear"], tmp_path / "log") as tpm:
        tools(tpm, "tpm2_nvdefine", "0x1500050", "-C", "o", "-s", "16", "-a", "ownerread|ownerwrite")
        tools(tpm, "tpm2_nvwrite", "0x1500050", "-C", "o", "-i", "-", stdin=b"SECRET-NV-MARKER")
    stored = state / "tpm2-state.vmc"
    blob = stored.read_bytes()
    # A field name of the plain state ('"nv"' with its quotes) must not show; the bare two
    # bytes "nv" would turn up in random ciphertext about once per 64 KiB, so they prove nothing.
    assert blob.startswith(b"VMCRYPTC") and b"SECRET-NV-MARKER" not in blob and b'"nv"' not in blob
    assert not (state / "tpm2-state.json").exists()
    assert stored.stat().st_mode & 0o777 == 0o600

    info = _vtpm("info", "--state", str(state), "--key-file", str(key), "--json")
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert [i["index"] for i in doc["nv_indices"]] == ["0x01500050"]
    assert "SECRET-NV-MARKER" not in info.stdout and "eps" not in info.stdout

    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    refused = _vtpm("serve", "--state", str(state), "--key-file", str(wrong), "--port", "1")
    assert refused.returncode == 1 and "wrong key" in refused.stderr and str(stored) in refused.stderr
    assert stored.read_bytes() == blob

    plain = _vtpm("serve", "--state", str(state), "--port", "1")
    assert plain.returncode == 1 and "--key-file" in plain.stderr

    damaged = bytearray(blob)
    damaged[len(damaged) // 2] ^= 0x10
    stored.write_bytes(bytes(damaged))
    refused = _vtpm("serve", "--state", str(state), "--key-file", str(key), "--port", "1")
    assert refused.returncode == 1 and "integrity check failed" in refused.stderr
    assert stored.read_bytes() == bytes(damaged)

    stored.write_bytes(blob[:-7])
    refused = _vtpm("serve", "--state", str(state), "--key-file", str(key), "--port", "1")
    assert refused.returncode == 1 and "truncated" in refused.stderr


@pytest.mark.parametrize("content", [b"{not json", b'{"format": "vtpm-state", "version": 99}', b""])
def test_corrupt_plain_state_is_refused(tmp_path: Path, content: bytes) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "tpm2-state.json").write_bytes(content)
    result = _vtpm("serve", "--state", str(state), "--port", "1")
    assert result.returncode == 1 and "tpm2-state.json" in result.stderr
    assert (state / "tpm2-state.json").read_bytes() == content


def test_bad_key_file(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"too short")
    result = _vtpm("serve", "--state", str(tmp_path / "s"), "--key-file", str(key), "--port", "1")
    assert result.returncode == 1 and "32 bytes or 64 hex digits" in result.stderr
    assert not (tmp_path / "s").exists()


def test_usage_and_help() -> None:
    assert _vtpm("--help").returncode == 0
    assert "--startup-clear" in _vtpm("serve", "--help").stdout
    assert _vtpm("serve", "--bogus").returncode == 2
    missing = _vtpm("serve", "--port", "1")
    assert missing.returncode == 2 and "--state" in missing.stderr


def test_start_stops_cleanly_and_reports_port(tmp_path: Path) -> None:
    server = start_vtpm(["--state", str(tmp_path / "s")], tmp_path / "log")
    assert server.stop() == 0
    assert "stopped, state saved" in server.log_text()


def test_ctrl_shutdown_ends_the_server_process(tmp_path: Path) -> None:
    with start_vtpm(["--state", str(tmp_path / "s"), "--startup-clear"], tmp_path / "log") as server:
        with socket.create_connection(("127.0.0.1", server.port + 1)) as c:
            c.sendall(CTRL_SHUTDOWN.to_bytes(4, "big"))  # as QEMU sends at exit
            assert c.recv(4, socket.MSG_WAITALL) == bytes(4)
        assert server.proc.wait(10) == 0
        assert "stopped, state saved" in server.log_text()
