"""`vtpm socket` started the way libvirt starts swtpm, driven the way QEMU drives it, next to swtpm itself.

The same QEMU-like control client (support.qemu_ctrl) runs against both: the
start-up sequence with the data channel passed by CMD_SET_DATAFD, commands on
that channel, a pause longer than a control request may take, and
CMD_SHUTDOWN, which must be answered and end the process (QEMU 7.2 printed
"Could not cleanly shutdown the TPM: Input/output error" with `vtpm serve`).
A live migration moves PCRs, an NV index, a loaded key, an HMAC session and a
policy session from one process to another with CMD_GET_STATEBLOB /
CMD_SET_STATEBLOB; swtpm's blobs are its own format, so each implementation
migrates to itself. tpm2-tools reach `vtpm socket` on TCP with not-need-init.

The QEMU-like tests also run against a vTPM added to a `vtpm host` (kind
"vtpm-host": the event loop's control channel, support.servers.HostedVtpmProcess),
where CMD_SHUTDOWN stops that vTPM and ends its connections instead of a process.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.qemu_ctrl import QemuControl
from support.servers import (
    HostedVtpmProcess,
    SocketProcess,
    TpmServer,
    require_swtpm,
    start_hosted_vtpm,
    start_swtpm_socket,
    start_vtpm_socket,
    unix_socket_ready,
)
from support.tools import needs_tools, tools
from vtpm import wire
from vtpm.constants import ALG, CC, HT, RH, TPMA_NV
from vtpm.server import protocol
from vtpm.server.sockets import free_port_pair

IMPLEMENTATIONS = ("vtpm", "swtpm", "vtpm-host")
OURS = ("vtpm", "vtpm-host")  # the threaded `vtpm socket` and the event loop of `vtpm host`
SHA256 = ALG.SHA256
KEYEDHASH_HMAC_TEMPLATE = (
    (0x0008).to_bytes(2, "big") + SHA256.to_bytes(2, "big")
    + (0x00040072).to_bytes(4, "big")  # fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | sign
    + wire.tpm2b(b"") + (0x0005).to_bytes(2, "big") + SHA256.to_bytes(2, "big") + wire.tpm2b(b"")
)
NV_INDEX = 0x01500020
NV_ATTRIBUTES = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA
TPM_SE_HMAC, TPM_SE_POLICY = 0x00, 0x01
TPM_RC_RETRY = 0x922


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short directory for Unix sockets (a socket path must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vsk", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def libvirt_args(ctrl: Path, state: Path, log: Path, *extra: str) -> list[str]:
    """libvirt's qemuTPMEmulatorBuildCommand, in its order."""
    return ["--ctrl", f"type=unixio,path={ctrl},mode=0600", "--tpmstate", f"dir={state},mode=0600",
            "--log", f"file={log}", "--terminate", "--tpm2", *extra]


def start(impl: str, base: Path, name: str, *extra: str, state: Path | None = None
          ) -> tuple[SocketProcess | HostedVtpmProcess, Path]:
    """``impl`` ("vtpm" or "swtpm") in libvirt's shape, or a vTPM in a `vtpm host` ("vtpm-host"; a
    ``--migration incoming`` among ``extra`` makes it an incoming add); the server and its control socket."""
    if impl == "swtpm":
        require_swtpm()
    ctrl = base / f"{name}.ctrl"
    state = state or base / f"{name}-state"
    state.mkdir(exist_ok=True)
    if impl == "vtpm-host":
        incoming = any(arg.startswith("incoming") for arg in extra)
        return start_hosted_vtpm(base, name, state, ctrl, incoming=incoming, log=base / f"{name}.log"), ctrl
    starter = start_vtpm_socket if impl == "vtpm" else start_swtpm_socket
    args = libvirt_args(ctrl, state, base / f"{name}.log", *extra)
    return starter(args, base / f"{name}.out", unix_socket_ready(ctrl)), ctrl


def ok(response: bytes, what: str) -> bytes:
    rc = wire.response_code(response)
    assert rc == 0, f"{what}: {wire.describe_rc(rc)}"
    return response


def run(qemu: QemuControl, command: bytes) -> bytes:
    """One command; TPM_RC_RETRY (libtpms runs a self-test of the algorithm first) is sent again."""
    for _ in range(5):
        response = qemu.transact(command)
        if wire.response_code(response) != TPM_RC_RETRY:
            return response
    return response


def pcr_values(qemu: QemuControl) -> bytes:
    """PCR_Read of sha256 PCRs 0, 10, 16 and sha1 PCR 16 (the response after the update counter)."""
    response = ok(qemu.transact(wire.pcr_read([(SHA256, [0, 10, 16]), (ALG.SHA1, [16])])), "PCR_Read")
    return response[14:]


def hmac_with(qemu: QemuControl, key: int, session: bytes) -> bytes:
    command = wire.build_command(CC.HMAC, [key], wire.tpm2b(b"migrated data") + SHA256.to_bytes(2, "big"), session)
    response = ok(run(qemu, command), "HMAC")
    return response[16 : 16 + int.from_bytes(response[14:16], "big")]  # after the parameter size: outHMAC


def session_handle(response: bytes) -> int:
    return int.from_bytes(ok(response, "StartAuthSession")[10:14], "big")


def policy_digest(qemu: QemuControl, session: int) -> bytes:
    response = ok(qemu.transact(wire.build_command(CC.PolicyGetDigest, [session])), "PolicyGetDigest")
    return response[12 : 12 + int.from_bytes(response[10:12], "big")]


# ----------------------------------------------------------------------------- QEMU's control sequence


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_qemu_sequence_then_shutdown_is_answered_and_ends_the_process(impl: str, sockets: Path) -> None:
    server, ctrl = start(impl, sockets, "tpm")
    with server, QemuControl.unix(str(ctrl)) as qemu:
        qemu.startup_sequence()
        caps = qemu.get_capability()
        needed = (protocol.CAP_INIT | protocol.CAP_SHUTDOWN | protocol.CAP_GET_TPMESTABLISHED | protocol.CAP_SET_LOCALITY
                  | protocol.CAP_RESET_TPMESTABLISHED | protocol.CAP_SET_DATAFD | protocol.CAP_STOP
                  | protocol.CAP_SET_BUFFERSIZE | protocol.CAP_GET_STATEBLOB | protocol.CAP_SET_STATEBLOB)
        assert caps & needed == needed  # what QEMU checks, plus migration (else QEMU blocks it)
        ok(qemu.transact(wire.STARTUP_CLEAR), "Startup")
        ok(qemu.transact(wire.pcr_extend(10, {SHA256: hashlib.sha256(b"ima").digest()})), "PCR_Extend")
        assert len(ok(qemu.transact(wire.get_random(16)), "GetRandom")) == 10 + 2 + 16
        time.sleep(0.8)  # the guest runs: longer than the 500 ms a control request may take
        assert qemu.set_locality(0) == 0  # QEMU sends the 4-byte union again when the locality changes
        assert qemu.shutdown() == 0
        assert server.wait(15) == 0, server.log_text()
    assert not ctrl.exists()  # the control socket is removed on the way out


@pytest.mark.parametrize("impl", ("vtpm", "swtpm"))  # --terminate: a process of its own
def test_terminate_ends_the_process_when_qemu_goes_away(impl: str, sockets: Path) -> None:
    server, ctrl = start(impl, sockets, "tpm")
    with server:
        qemu = QemuControl.unix(str(ctrl))
        qemu.startup_sequence()
        ok(qemu.transact(wire.STARTUP_CLEAR), "Startup")
        qemu.close()  # QEMU killed: both of its connections close
        assert server.wait(15) == 0, server.log_text()


def test_a_data_command_before_cmd_init_gets_an_error_answer(sockets: Path) -> None:
    """QEMU probes the data channel before CMD_INIT and accepts any well-formed error (a hosted vTPM is
    powered from the start, as `--flags not-need-init`: tpm2-tools on its TCP pair send no CMD_INIT)."""
    server, ctrl = start("vtpm", sockets, "tpm")
    with server, QemuControl.unix(str(ctrl)) as qemu:
        qemu.set_data_fd()
        answer = qemu.transact(wire.build_command(CC.ReadClock))
        assert len(answer) == 10 and wire.response_code(answer) != 0
        assert qemu.result(protocol.Ctrl.GET_TPMESTABLISHED) == protocol.TPM_BAD_ORDINAL  # not running: 4 bytes
        assert qemu.init() == 0
        assert qemu.get_tpm_established() == (0, 0)
        assert qemu.shutdown() == 0


# ----------------------------------------------------------------------------- live migration


def prepare_source(qemu: QemuControl) -> dict[str, object]:
    """Guest activity on the source: PCRs, an NV index, a loaded HMAC key, an HMAC and a policy session."""
    qemu.startup_sequence()
    ok(qemu.transact(wire.STARTUP_CLEAR), "Startup")
    ok(qemu.transact(wire.pcr_extend(16, {SHA256: hashlib.sha256(b"before migration").digest(),
                                          ALG.SHA1: hashlib.sha1(b"x").digest()})), "PCR_Extend")
    ok(qemu.transact(wire.nv_define_space(NV_INDEX, NV_ATTRIBUTES, 16)), "NV_DefineSpace")
    ok(qemu.transact(wire.nv_write(NV_INDEX, b"written on src")), "NV_Write")
    created = ok(qemu.transact(wire.create_primary(KEYEDHASH_HMAC_TEMPLATE, RH.OWNER, user_auth=b"key")), "CreatePrimary")
    key = int.from_bytes(created[10:14], "big")
    hmac_session = session_handle(qemu.transact(wire.build_command(
        CC.StartAuthSession, [RH.NULL, RH.NULL],
        wire.tpm2b(bytes(range(32))) + wire.tpm2b(b"") + bytes([TPM_SE_HMAC]) + ALG.NULL.to_bytes(2, "big")
        + SHA256.to_bytes(2, "big"))))
    policy = session_handle(qemu.transact(wire.build_command(
        CC.StartAuthSession, [RH.NULL, RH.NULL],
        wire.tpm2b(bytes(range(32))) + wire.tpm2b(b"") + bytes([TPM_SE_POLICY]) + ALG.NULL.to_bytes(2, "big")
        + SHA256.to_bytes(2, "big"))))
    ok(qemu.transact(wire.build_command(CC.PolicyCommandCode, [policy], int(CC.Unseal).to_bytes(4, "big"))),
       "PolicyCommandCode")
    return {"key": key, "hmac_session": hmac_session, "policy": policy, "pcrs": pcr_values(qemu),
            "mac": hmac_with(qemu, key, wire.password_session(b"key")), "digest": policy_digest(qemu, policy)}


def check_destination(qemu: QemuControl, before: dict[str, object]) -> None:
    assert pcr_values(qemu) == before["pcrs"]
    read = ok(qemu.transact(wire.nv_read(NV_INDEX, 14)), "NV_Read")
    assert b"written on src" in read
    key = int(before["key"])  # type: ignore[call-overload]
    assert hmac_with(qemu, key, wire.password_session(b"key")) == before["mac"]
    # The HMAC session is still there and usable: an empty HMAC is right for an unbound, unsalted session
    # only if the key's authValue is empty, so a wrong one must be refused (TPM_RC_AUTH_FAIL) ...
    session = wire.auth_entry(int(before["hmac_session"]), bytes(range(32, 64)))  # type: ignore[call-overload]
    refused = run(qemu, wire.build_command(CC.HMAC, [key], wire.tpm2b(b"x") + SHA256.to_bytes(2, "big"), session))
    assert wire.response_code(refused) & 0xBF == 0x8E  # TPM_RC_AUTH_FAIL / BAD_AUTH for session 1, not HANDLE
    handles = ok(qemu.transact(wire.get_capability(1, HT.HMAC_SESSION << 24, 8)), "GetCapability(handles)")
    assert int(before["hmac_session"]).to_bytes(4, "big") in handles  # type: ignore[call-overload]
    policy = int(before["policy"])  # type: ignore[call-overload]
    assert policy_digest(qemu, policy) == before["digest"]
    ok(qemu.transact(wire.build_command(CC.PolicyAuthValue, [policy])), "PolicyAuthValue on the migrated session")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_live_migration_moves_pcrs_nv_objects_and_sessions(impl: str, sockets: Path) -> None:
    source, src_ctrl = start(impl, sockets, "src")
    target, dst_ctrl = start(impl, sockets, "dst")
    with source, target, QemuControl.unix(str(src_ctrl)) as src, QemuControl.unix(str(dst_ctrl)) as dst:
        before = prepare_source(src)
        # the incoming QEMU: data channel and buffer size, no CMD_INIT until the state is in
        dst.set_data_fd()
        assert dst.get_capability() >> 32 == 0
        assert dst.stop() == 0 and dst.set_buffer_size(3968)[0] == 0
        blobs = src.get_state_blobs()  # pre_save on the paused source: the TPM is still running
        assert blobs[1][1] and blobs[2][1]
        dst.set_state_blobs(blobs)  # post_load: STOP, SET_STATEBLOB x3, INIT(delete volatile)
        assert dst.set_locality(0) == 0
        check_destination(dst, before)
        assert src.shutdown() == 0 and dst.shutdown() == 0
        assert source.wait(15) == 0 and target.wait(15) == 0


@pytest.mark.parametrize("impl", OURS)
def test_migration_on_shared_storage_hands_the_lock_over(impl: str, sockets: Path) -> None:
    """Source and target on one state directory: the target (``--migration incoming``, or an incoming add
    in a second host) starts while the source holds the lock, takes it with the state, and the source
    writes nothing after handing it over."""
    state = sockets / "shared"
    source, src_ctrl = start(impl, sockets, "src", state=state)
    target, dst_ctrl = start(impl, sockets, "dst", "--migration", "incoming,release-lock-outgoing", state=state)
    with source, target, QemuControl.unix(str(src_ctrl)) as src, QemuControl.unix(str(dst_ctrl)) as dst:
        prepare_source(src)
        dst.set_data_fd()
        assert dst.stop() == 0
        assert dst.lock_storage(retries=0) == protocol.TPM_FAIL  # the source still holds it
        blobs = src.get_state_blobs()
        dst.set_state_blobs(blobs)
        assert dst.lock_storage(retries=0) == 0
        assert src.lock_storage(retries=0) == protocol.TPM_FAIL  # the target has it now
        ok(dst.transact(wire.nv_write(NV_INDEX, b"written on dst")), "NV_Write on the target")
        assert src.shutdown() == 0  # the source's Shutdown(CLEAR) and final save must not reach the file
        assert source.wait(15) == 0
        if impl == "vtpm":
            assert "the state belongs to the migration target" in (sockets / "src.log").read_text()
        assert dst.shutdown() == 0 and target.wait(15) == 0
    again, ctrl = start(impl, sockets, "again", state=state)
    with again, QemuControl.unix(str(ctrl)) as qemu:
        qemu.startup_sequence()
        ok(qemu.transact(wire.STARTUP_CLEAR), "Startup")
        assert b"written on dst" in ok(qemu.transact(wire.nv_read(NV_INDEX, 14)), "NV_Read")
        assert qemu.shutdown() == 0


@pytest.mark.parametrize("impl", OURS)
def test_a_damaged_volatile_blob_is_refused_and_init_starts_clean(impl: str, sockets: Path) -> None:
    source, src_ctrl = start(impl, sockets, "src")
    target, dst_ctrl = start(impl, sockets, "dst")
    with source, target, QemuControl.unix(str(src_ctrl)) as src, QemuControl.unix(str(dst_ctrl)) as dst:
        prepare_source(src)
        blobs = src.get_state_blobs()
        dst.set_data_fd()
        assert dst.stop() == 0
        assert dst.set_state_blob(1, blobs[1][1]) == 0
        damaged = blobs[2][1].replace(b'"started":true', b'"started":"yes"')
        assert damaged != blobs[2][1]
        assert dst.set_state_blob(2, damaged) == protocol.TPM_BAD_PARAMETER
        assert dst.set_state_blob(3, b"not empty") == protocol.TPM_BAD_PARAMETER
        assert dst.set_state_blob(2, b"x" * 100, flags=protocol.STATE_FLAG_ENCRYPTED) == protocol.TPM_FAIL
        assert dst.init() == 0  # no volatile state was taken: a plain _TPM_Init
        assert wire.response_code(dst.transact(wire.pcr_read([(SHA256, [16])]))) == 0x100  # TPM_RC_INITIALIZE
        assert dst.shutdown() == 0 and src.shutdown() == 0


@pytest.mark.parametrize("impl", OURS)
def test_state_blob_data_may_take_longer_than_a_control_request(impl: str, sockets: Path) -> None:
    """A blob's bytes may trickle in over a slow migration stream: each read gets 10 s, not the 500 ms a
    control request has (the header itself still comes in one write, as QEMU sends it)."""
    source, src_ctrl = start(impl, sockets, "src")
    target, dst_ctrl = start(impl, sockets, "dst")
    with source, target, QemuControl.unix(str(src_ctrl)) as src, QemuControl.unix(str(dst_ctrl)) as dst:
        src.startup_sequence()
        ok(src.transact(wire.STARTUP_CLEAR), "Startup")
        ok(src.transact(wire.pcr_extend(16, {SHA256: hashlib.sha256(b"slow").digest()})), "PCR_Extend")
        pcrs = pcr_values(src)
        blobs = src.get_state_blobs()
        dst.set_data_fd()
        assert dst.stop() == 0
        blob = blobs[1][1]
        dst.ctrlcmd(protocol.Ctrl.SET_STATEBLOB, (0).to_bytes(4, "big") + (1).to_bytes(4, "big")
                    + len(blob).to_bytes(4, "big"), answer=0)
        for part in (blob[:100], blob[100:-1], blob[-1:]):
            time.sleep(0.7)
            dst.sock.sendall(part)
        assert int.from_bytes(dst.sock.recv(4), "big") == 0
        assert dst.set_state_blob(2, blobs[2][1]) == 0
        assert dst.init(1) == 0
        assert pcr_values(dst) == pcrs
        assert dst.shutdown() == 0 and src.shutdown() == 0


# ----------------------------------------------------------------------------- tpm2-tools on TCP


@needs_tools("tpm2_getrandom")
def test_tpm2_tools_against_vtpm_socket_on_tcp(tmp_path: Path) -> None:
    port = free_port_pair()
    args = ["--tpm2", "--tpmstate", f"dir={tmp_path / 'state'}", "--server", f"type=tcp,port={port}",
            "--ctrl", f"type=tcp,port={port + 1}", "--flags", "not-need-init"]

    def ready() -> bool:
        return "serving on" in (tmp_path / "out.log").read_text(errors="replace")

    with start_vtpm_socket(args, tmp_path / "out.log", ready) as process:
        server = TpmServer("vtpm socket", process.proc, process.log_path, port=port)
        tools(server, "tpm2_startup", "-c")
        assert len(bytes.fromhex(tools(server, "tpm2_getrandom", "--hex", "8").stdout.strip())) == 8
        tools(server, "tpm2_pcrextend", f"16:sha256={'11' * 32}")
        expected = hashlib.sha256(bytes(32) + bytes([0x11]) * 32).hexdigest().upper()
        assert f"16: 0x{expected}" in tools(server, "tpm2_pcrread", "sha256:16").stdout
        tools(server, "tpm2_shutdown", "-c")


def _journal_records(state: Path) -> bytes:
    """The journal's record area (block 0 is its header)."""
    return (state / "tpm2-state.journal").read_bytes()[4096:].rstrip(b"\0")


def test_vtpm_socket_journals_and_a_migration_target_keeps_its_writes_through_sigkill(sockets: Path) -> None:
    """Changes are journal records (no full rewrite per command); after the lock handover the source's
    journal is left alone and the target writes the arrived state whole, then journals; a SIGKILL of
    the target loses none of its acknowledged writes."""
    state = sockets / "shared"
    source, src_ctrl = start("vtpm", sockets, "src", state=state)
    target, dst_ctrl = start("vtpm", sockets, "dst", "--migration", "incoming,release-lock-outgoing", state=state)
    with source, target, QemuControl.unix(str(src_ctrl)) as src, QemuControl.unix(str(dst_ctrl)) as dst:
        prepare_source(src)
        base = (state / "tpm2-state.json").read_bytes()
        ok(src.transact(wire.nv_write(NV_INDEX, b"written on src")), "NV_Write on the source")
        assert (state / "tpm2-state.json").read_bytes() == base  # journaled: the full state was not rewritten
        assert _journal_records(state)
        dst.set_data_fd()
        assert dst.stop() == 0
        blobs = src.get_state_blobs()  # the last blob hands the lock over
        dst.set_state_blobs(blobs)
        records = _journal_records(state)
        assert records == b""  # the target wrote the state whole and started a journal of its own
        ok(dst.transact(wire.nv_write(NV_INDEX, b"written on dst")), "NV_Write on the target")
        mine = _journal_records(state)
        assert mine
        assert src.shutdown() == 0 and source.wait(15) == 0  # the source's final save is dropped
        assert _journal_records(state) == mine
        target.proc.kill()
        target.proc.wait(15)
    again, ctrl = start("vtpm", sockets, "again", state=state)
    with again, QemuControl.unix(str(ctrl)) as qemu:
        qemu.startup_sequence()
        ok(qemu.transact(wire.STARTUP_CLEAR), "Startup")
        assert b"written on dst" in ok(qemu.transact(wire.nv_read(NV_INDEX, 14)), "NV_Read")
        assert qemu.shutdown() == 0
