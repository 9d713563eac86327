"""tpm2-tools against `vtpm serve`, over the swtpm and the mssim protocol, in real processes.

Inputs tried for refusal: a wrong NV password (until lockout), an unwritten
index read, garbage and dropped connections on the data and control ports.
(The `vtpm` command line itself, state files and key files: e2e/test_vtpm_cli.py.)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from support.servers import start_vtpm
from support.tools import needs_tools, tools

pytestmark = needs_tools("tpm2_getrandom")


@pytest.fixture(params=["swtpm", "mssim"])
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


def test_tools_drive_the_vtpm(tmp_path: Path, protocol: str) -> None:
    with start_vtpm(["--state", str(tmp_path / "state"), "--startup-clear"], tmp_path / "log", protocol) as tpm:
        random = tools(tpm, "tpm2_getrandom", "--hex", "16").stdout.strip()
        assert len(bytes.fromhex(random)) == 16

        fixed = tools(tpm, "tpm2_getcap", "properties-fixed").stdout
        assert 'value: "VMCR"' in fixed and "TPM2_PT_NV_BUFFER_MAX" in fixed
        assert "sha256" in tools(tpm, "tpm2_getcap", "algorithms").stdout
        pcrs = tools(tpm, "tpm2_getcap", "pcrs").stdout
        assert "sha256: [ 0, 1, 2, 3" in pcrs and "23 ]" in pcrs
        assert "TPM2_CC_PCR_Extend" in tools(tpm, "tpm2_getcap", "commands").stdout

        value = bytes(range(32))
        tools(tpm, "tpm2_pcrextend", f"16:sha256={value.hex()}")
        expected = hashlib.sha256(bytes(32) + value).hexdigest().upper()
        assert f"16: 0x{expected}" in tools(tpm, "tpm2_pcrread", "sha256:16").stdout
        tools(tpm, "tpm2_pcrreset", "16")
        assert f"16: 0x{'0' * 64}" in tools(tpm, "tpm2_pcrread", "sha256:16").stdout

        data = tmp_path / "data.bin"
        data.write_bytes(os.urandom(3000))  # longer than one Hash command: a hash sequence
        out = tools(tpm, "tpm2_hash", "-g", "sha256", "--hex", str(data)).stdout.strip()
        assert out == hashlib.sha256(data.read_bytes()).hexdigest()
        small = tmp_path / "small.bin"
        small.write_bytes(b"hello")
        assert tools(tpm, "tpm2_hash", "-g", "sha384", "--hex", str(small)).stdout.strip() == hashlib.sha384(b"hello").hexdigest()

        tools(tpm, "tpm2_nvdefine", "0x1500016", "-C", "o", "-s", "32", "-a", "ownerread|ownerwrite|authread|authwrite")
        payload = tmp_path / "nv.bin"
        payload.write_bytes(b"vmcrypt nv data")
        tools(tpm, "tpm2_nvwrite", "0x1500016", "-C", "o", "-i", str(payload))
        read = tools(tpm, "tpm2_nvread", "0x1500016", "-C", "o", "-s", "15", "-o", str(tmp_path / "out.bin"))
        assert read.returncode == 0 and (tmp_path / "out.bin").read_bytes() == b"vmcrypt nv data"
        public = tools(tpm, "tpm2_nvreadpublic", "0x1500016").stdout
        assert "written" in public and "size: 32" in public
        assert "0x1500016" in tools(tpm, "tpm2_getcap", "handles-nv-index").stdout

        tools(tpm, "tpm2_nvdefine", "0x1500017", "-C", "o", "-s", "8", "-a", "ownerread|ownerwrite|nt=counter")
        unwritten = tools(tpm, "tpm2_nvread", "0x1500017", "-C", "o", check=False)
        assert unwritten.returncode != 0 and "0x14a" in unwritten.stderr.lower()
        for _ in range(3):
            tools(tpm, "tpm2_nvincrement", "0x1500017", "-C", "o")
        tools(tpm, "tpm2_nvread", "0x1500017", "-C", "o", "-o", str(tmp_path / "counter.bin"))
        assert int.from_bytes((tmp_path / "counter.bin").read_bytes(), "big") == 3

        tools(tpm, "tpm2_nvundefine", "0x1500016", "-C", "o")
        assert "0x1500016" not in tools(tpm, "tpm2_getcap", "handles-nv-index").stdout
        tools(tpm, "tpm2_clear")
        assert tools(tpm, "tpm2_getcap", "handles-nv-index").stdout.strip() == ""


def test_restart_keeps_nv_and_shutdown_state_restores_pcrs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    digest = "ab" * 32
    with start_vtpm(["--state", str(state), "--startup-clear"], tmp_path / "log1") as tpm:
        tools(tpm, "tpm2_nvdefine", "0x1500020", "-C", "o", "-s", "8", "-a", "ownerread|ownerwrite|nt=counter")
        tools(tpm, "tpm2_nvincrement", "0x1500020", "-C", "o")
        tools(tpm, "tpm2_nvincrement", "0x1500020", "-C", "o")
        tools(tpm, "tpm2_nvdefine", "0x1500021", "-C", "o", "-s", "4", "-a", "ownerread|ownerwrite")
        tools(tpm, "tpm2_nvwrite", "0x1500021", "-C", "o", "-i", "-", stdin=b"abcd")
        tools(tpm, "tpm2_pcrextend", f"7:sha256={digest}")
        before = tools(tpm, "tpm2_pcrread", "sha256:7").stdout
        tools(tpm, "tpm2_shutdown")  # Shutdown(STATE)
    with start_vtpm(["--state", str(state)], tmp_path / "log2") as tpm:
        tools(tpm, "tpm2_startup")  # Startup(STATE)
        assert tools(tpm, "tpm2_pcrread", "sha256:7").stdout == before
        tools(tpm, "tpm2_nvread", "0x1500020", "-C", "o", "-o", str(tmp_path / "c.bin"))
        assert int.from_bytes((tmp_path / "c.bin").read_bytes(), "big") == 2
        tools(tpm, "tpm2_nvread", "0x1500021", "-C", "o", "-o", str(tmp_path / "d.bin"))
        assert (tmp_path / "d.bin").read_bytes() == b"abcd"
        tools(tpm, "tpm2_shutdown", "-c")
    with start_vtpm(["--state", str(state), "--startup-clear"], tmp_path / "log3") as tpm:
        # Startup(CLEAR) resets PCRs; NV survives
        assert f"7 : 0x{'0' * 64}" in tools(tpm, "tpm2_pcrread", "sha256:7").stdout
        assert "0x1500021" in tools(tpm, "tpm2_getcap", "handles-nv-index").stdout


def test_wrong_passwords_lead_to_lockout(tmp_path: Path) -> None:
    with start_vtpm(["--state", str(tmp_path / "s"), "--startup-clear"], tmp_path / "log") as tpm:
        tools(tpm, "tpm2_nvdefine", "0x1500030", "-C", "o", "-s", "4", "-p", "right", "-a", "authread|authwrite")
        tools(tpm, "tpm2_nvwrite", "0x1500030", "-C", "0x1500030", "-P", "right", "-i", "-", stdin=b"1234")
        codes = []
        for _ in range(3):
            bad = tools(tpm, "tpm2_nvread", "0x1500030", "-C", "0x1500030", "-P", "wrong", check=False)
            assert bad.returncode != 0
            codes.append(bad.stderr)
        assert all("0x98e" in c.lower() for c in codes), codes  # TPM_RC_AUTH_FAIL, session 1
        locked = tools(tpm, "tpm2_nvread", "0x1500030", "-C", "0x1500030", "-P", "right", check=False)
        assert locked.returncode != 0 and "0x921" in locked.stderr.lower()  # TPM_RC_LOCKOUT
        assert "TPM2_PT_LOCKOUT_COUNTER: 0x3" in tools(tpm, "tpm2_getcap", "properties-variable").stdout
        tools(tpm, "tpm2_dictionarylockout", "--clear-lockout")
        tools(tpm, "tpm2_nvread", "0x1500030", "-C", "0x1500030", "-P", "right", "-o", str(tmp_path / "v"))
        assert (tmp_path / "v").read_bytes() == b"1234"
        # owner auth is not DA-protected: a wrong owner password is TPM_RC_BAD_AUTH and counts nothing
        bad_owner = tools(tpm, "tpm2_nvdefine", "0x1500031", "-C", "o", "-P", "nope", "-s", "4",
                          "-a", "ownerread|ownerwrite", check=False)
        assert "0x9a2" in bad_owner.stderr.lower()
        assert "TPM2_PT_LOCKOUT_COUNTER: 0x0" in tools(tpm, "tpm2_getcap", "properties-variable").stdout


def test_hierarchy_auth_change_and_use(tmp_path: Path) -> None:
    with start_vtpm(["--state", str(tmp_path / "s"), "--startup-clear"], tmp_path / "log") as tpm:
        tools(tpm, "tpm2_changeauth", "-c", "o", "ownerpass")
        tools(tpm, "tpm2_nvdefine", "0x1500040", "-C", "o", "-P", "ownerpass", "-s", "4", "-a", "ownerread|ownerwrite")
        assert tools(tpm, "tpm2_nvdefine", "0x1500041", "-C", "o", "-s", "4", "-a", "ownerread|ownerwrite",
                     check=False).returncode != 0
        assert "TPM2_PT_PERMANENT" in tools(tpm, "tpm2_getcap", "properties-variable").stdout
        tools(tpm, "tpm2_changeauth", "-c", "o", "-p", "ownerpass")
        tools(tpm, "tpm2_nvdefine", "0x1500041", "-C", "o", "-s", "4", "-a", "ownerread|ownerwrite")


def test_server_survives_garbage_and_disconnects(tmp_path: Path) -> None:
    import socket

    with start_vtpm(["--state", str(tmp_path / "s"), "--startup-clear"], tmp_path / "log") as tpm:
        for payload in (b"", b"\x80", b"garbage!" * 3, b"\x80\x01\xff\xff\xff\xff\x00\x00\x01\x7b",
                        b"\x80\x01\x00\x00\x00\x40\x00\x00\x01\x7b\x00"):
            with socket.create_connection(("127.0.0.1", tpm.port), timeout=5) as sock:
                sock.sendall(payload)
        with socket.create_connection(("127.0.0.1", tpm.port + 1), timeout=5) as ctrl:
            ctrl.sendall(b"\x00\x00\x00\xff")  # unknown control command
            assert ctrl.recv(4) == (10).to_bytes(4, "big")  # TPM_BAD_ORDINAL
        assert len(bytes.fromhex(tools(tpm, "tpm2_getrandom", "--hex", "8").stdout.strip())) == 8
        assert tpm.running()
