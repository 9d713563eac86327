"""TpmClient over every transport, against a real served TPM, with results checked independently.

Transports: the engine in-process, our server's swtpm protocol over TCP and a
Unix socket and its mssim protocol (each in a thread, as tests/test_vtpm_transport.py
runs them), and the reference swtpm over TCP. On each: NV data written in chunks
reads back equal, PCR values follow the hash chain computed here with hashlib,
random bytes come in the number asked, and refused commands surface as
TpmCommandError carrying the TPM's response code. The control channel and the
mssim platform port are driven too, and vmcrypt's suspend/resume over the socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket as socket_module
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.servers import require_swtpm, start_swtpm

from vmcrypt.errors import VmError
from vmcrypt.suspend import resume_tpm_state, save_tpm_state
from vtpm import wire
from vtpm.client import TpmClient, TpmCommandError
from vtpm.constants import ALG, CAP, PT, RC, RH, TPMA_NV
from vtpm.ek import EkKind, ek_template
from vtpm.engine import Tpm
from vtpm.objects import Public
from vtpm.server.device import TpmDevice
from vtpm.server.sockets import MssimServer, SwtpmServer, free_port_pair
from vtpm.transport import InProcessTransport, MssimTransport, SocketTransport, SwtpmControl, TransportError

TRANSPORTS = ("in-process", "swtpm-tcp", "swtpm-unix", "mssim", "swtpm")
NV_INDEX = 0x01000321
NV_ATTRIBUTES = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA
HASHES = {ALG.SHA1: hashlib.sha1, ALG.SHA256: hashlib.sha256, ALG.SHA384: hashlib.sha384, ALG.SHA512: hashlib.sha512}


@contextlib.contextmanager
def served(server_class: type, **where: object) -> Iterator[tuple[TpmDevice, Any]]:
    """A fresh vTPM served by ``server_class`` (SwtpmServer or MssimServer) in this process's threads."""
    device = TpmDevice(Tpm())
    server = server_class(device, **where).start()
    try:
        yield device, server
    finally:
        server.close()


@pytest.fixture(params=TRANSPORTS)
def client(request, tmp_path: Path) -> Iterator[TpmClient]:
    """A started TPM behind the transport named by the parameter."""
    kind = request.param
    if kind == "in-process":
        tpm = TpmClient(Tpm())
        tpm.startup()
        yield tpm
        return
    if kind == "swtpm":
        require_swtpm()
        server = start_swtpm(tmp_path / "swtpm")  # started with Startup(CLEAR)
        try:
            with TpmClient.swtpm_tcp(server.port) as tpm:
                yield tpm
        finally:
            server.stop()
        return
    port, path = free_port_pair(), str(tmp_path / "vtpm.sock")
    if kind == "swtpm-tcp":
        server, where, connect = SwtpmServer, {"port": port}, lambda: TpmClient.swtpm_tcp(port)
    elif kind == "swtpm-unix":
        server, where, connect = SwtpmServer, {"unix_path": path}, lambda: TpmClient.swtpm_unix(path)
    else:
        server, where, connect = MssimServer, {"port": port}, lambda: TpmClient.mssim(port)
    with served(server, **where), connect() as tpm:
        tpm.startup()
        yield tpm


def extend(alg: int, old: bytes, digest: bytes) -> bytes:
    return HASHES[alg](old + digest).digest()


def test_nv_define_write_read_undefine(client: TpmClient) -> None:
    data = os.urandom(1500)  # two NV_Write and two NV_Read commands
    client.nv_define(NV_INDEX, NV_ATTRIBUTES, len(data), auth_handle=RH.OWNER)
    assert client.nv_read_public(NV_INDEX) == len(data)
    with pytest.raises(TpmCommandError) as unwritten:
        client.nv_read(NV_INDEX, 8)
    assert unwritten.value.rc == RC.NV_UNINITIALIZED
    client.nv_write(NV_INDEX, data, auth_handle=RH.OWNER)
    assert client.nv_read(NV_INDEX, len(data)) == data
    assert client.nv_read(NV_INDEX, 100, offset=1000) == data[1000:1100]
    public = client.nv_public(NV_INDEX)
    assert (public.index, public.size, public.attributes) == (NV_INDEX, len(data), NV_ATTRIBUTES | TPMA_NV.WRITTEN)
    assert public.name == ALG.SHA256.to_bytes(2, "big") + hashlib.sha256(
        wire.nv_public(NV_INDEX, NV_ATTRIBUTES | TPMA_NV.WRITTEN, len(data))).digest()
    with pytest.raises(TpmCommandError) as defined:
        client.nv_define(NV_INDEX, NV_ATTRIBUTES, 8, auth_handle=RH.OWNER)
    assert defined.value.rc == RC.NV_DEFINED
    client.nv_undefine(NV_INDEX, auth_handle=RH.OWNER)
    with pytest.raises(TpmCommandError) as gone:
        client.nv_read_public(NV_INDEX)
    assert gone.value.rc == RC.HANDLE | 0x100 and gone.value.command == "NV_ReadPublic"
    assert "TPM_RC_HANDLE handle 1" in str(gone.value)


def test_pcr_extend_follows_the_hash_chain(client: TpmClient) -> None:
    banks = [alg for alg in client.pcr_banks() if alg in HASHES]
    assert ALG.SHA256 in banks
    before = client.pcr_read({alg: [16, 23] for alg in banks})
    expected = {alg: dict(values) for alg, values in before.items()}
    for step in range(3):
        digests = {alg: HASHES[alg](b"event %d" % step).digest() for alg in banks}
        client.pcr_extend(16, digests)
        for alg, digest in digests.items():
            expected[alg][16] = extend(alg, expected[alg][16], digest)
    assert client.pcr_read({alg: [16, 23] for alg in banks}) == expected
    client.pcr_reset(16)
    assert client.pcr_read({ALG.SHA256: [16]}) == {ALG.SHA256: {16: bytes(32)}}
    every = client.pcr_read([(ALG.SHA256, range(24))])[ALG.SHA256]  # three PCR_Read commands (8 digests each)
    assert sorted(every) == list(range(24)) and every[16] == bytes(32)
    with pytest.raises(TpmCommandError) as refused:
        client.pcr_extend(16, {ALG.SHA256: bytes(32)}, password=b"not the PCR's")
    assert refused.value.rc == RC.BAD_AUTH | 0x800 | 0x100


def test_random_capabilities_and_objects(client: TpmClient) -> None:
    random = client.get_random(200)  # more than one GetRandom answers
    assert len(random) == 200 and random != client.get_random(200)
    properties = client.tpm_properties(PT.FAMILY_INDICATOR, 3)
    assert properties[PT.FAMILY_INDICATOR] == int.from_bytes(b"2.0\0", "big")
    more, data = client.get_capability(CAP.TPM_PROPERTIES, PT.FAMILY_INDICATOR, 1)
    assert data[:4] == (1).to_bytes(4, "big") and isinstance(more, bool)
    handle, public = client.create_primary(RH.ENDORSEMENT, ek_template(EkKind.ECC_P256).template)
    assert handle >> 24 == 0x80 and Public.parse(public).type == ALG.ECC
    client.flush(handle)
    with pytest.raises(TpmCommandError) as flushed:
        client.flush(handle)
    assert flushed.value.rc == RC.HANDLE | 0x40 | 0x100  # parameter 1 names an object no longer loaded
    with pytest.raises(TpmCommandError) as again:
        client.startup()
    assert again.value.rc == RC.INITIALIZE


def test_transact_passes_exact_bytes(client: TpmClient) -> None:
    response = client.transact(wire.get_random(8))
    assert len(response) == 20 and response[:10] == bytes.fromhex("80010000001400000000")
    assert response[10:12] == (8).to_bytes(2, "big")
    assert client.transact(wire.build_command(0x1234)) == wire.error_response(RC.COMMAND_CODE)
    assert client.transact(wire.build_command(0x17B, params=b"\x00\x08\x00")) == wire.error_response(RC.SIZE)


@settings(max_examples=15, deadline=None)
@given(events=st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_pcr_chain_property_in_process(events: list[bytes]) -> None:
    tpm = TpmClient(Tpm())
    tpm.startup()
    value = bytes(48)
    for event in events:
        digest = hashlib.sha384(event).digest()
        tpm.pcr_extend(23, [(ALG.SHA384, digest)])
        value = extend(ALG.SHA384, value, digest)
    assert tpm.pcr_read({ALG.SHA384: [23]})[ALG.SHA384][23] == value


# ----------------------------------------------------------------------------- the existing in-process API


def test_in_process_client_keeps_its_api() -> None:
    engine = Tpm()
    tpm = TpmClient(engine)
    assert tpm.tpm is engine and isinstance(tpm.transport, InProcessTransport)
    tpm.startup()
    tpm.pcr_allocate([ALG.SHA256])
    tpm.nv_define(0x01C00002, TPMA_NV.PPWRITE | TPMA_NV.PPREAD | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD
                  | TPMA_NV.NO_DA | TPMA_NV.PLATFORMCREATE | TPMA_NV.WRITEDEFINE, 4)
    tpm.nv_write(0x01C00002, b"cert")
    assert tpm.nv_read(0x01C00002, tpm.nv_read_public(0x01C00002)) == b"cert"
    tpm.shutdown()
    engine.power_cycle()
    tpm.startup()
    assert tpm.pcr_banks() == [ALG.SHA256]  # the allocation took effect at _TPM_Init
    with pytest.raises(TpmCommandError):
        tpm.nv_undefine(0x01C00002, auth_handle=RH.OWNER)  # platformCreate: not the owner's to delete


# ----------------------------------------------------------------------------- control channels


def test_swtpm_control_channel_over_tcp_and_unix(tmp_path: Path) -> None:
    port = free_port_pair()
    path = str(tmp_path / "vtpm.sock")
    with served(SwtpmServer, port=port, unix_path=path) as (device, server):
        for control, connect in ((SwtpmControl(port=port + 1), lambda: SocketTransport.tcp(port)),
                                 (SwtpmControl(path=path + ".ctrl"), lambda: SocketTransport.unix(path))):
            assert control.capabilities() & 0x1  # CMD_INIT
            with TpmClient(connect()) as tpm:
                assert control.init() == 0
                tpm.startup()
                assert control.set_locality(3) == 0 and device.locality == 3
                assert control.set_locality(9) == 0x3D  # TPM_BAD_LOCALITY
                assert control.stop() == 0
                with pytest.raises(TpmCommandError) as stopped:
                    tpm.get_random(8)
                assert stopped.value.rc == RC.FAILURE
        assert SwtpmControl(port=port + 1).shutdown() == 0
        assert server.terminated.wait(5)
    with pytest.raises(ValueError):
        SwtpmControl()


def test_swtpm_control_channel_of_the_reference(tmp_path: Path) -> None:
    require_swtpm()
    server = start_swtpm(tmp_path / "swtpm")
    try:
        control = SwtpmControl(port=server.port + 1)
        with TpmClient.swtpm_tcp(server.port) as tpm:
            tpm.pcr_extend(16, {ALG.SHA256: bytes(32)})
            assert control.init() == 0  # _TPM_Init: Startup again, PCR 16 back to zero
            with pytest.raises(TpmCommandError) as uninitialized:
                tpm.get_random(8)
            assert uninitialized.value.rc == RC.INITIALIZE
            tpm.startup()
            assert tpm.pcr_read({ALG.SHA256: [16]})[ALG.SHA256][16] == bytes(32)
        assert control.shutdown() == 0
        assert server.proc.wait(10) == 0
    finally:
        server.stop()


def test_mssim_platform_power() -> None:
    port = free_port_pair()
    with served(MssimServer, port=port):
        transport = MssimTransport(port)
        with TpmClient(transport) as tpm:
            transport.power_on()
            tpm.startup()
            transport.power_off()
            with pytest.raises(TpmCommandError) as off:
                tpm.get_random(8)
            assert off.value.rc == RC.FAILURE
            transport.power_on()
            tpm.startup()
            assert len(tpm.get_random(8)) == 8


def test_transport_errors() -> None:
    port = free_port_pair()
    with pytest.raises(TransportError):
        TpmClient.swtpm_tcp(port)
    with pytest.raises(TransportError):
        SwtpmControl(port=port).init()


# ----------------------------------------------------------------------------- vmcrypt suspend/resume


def test_suspend_and_resume_commands_over_the_socket(tmp_path: Path) -> None:
    port = free_port_pair()
    with served(SwtpmServer, port=port):
        assert save_tpm_state(port) is False  # never started: nothing to save
        with TpmClient.swtpm_tcp(port) as tpm:
            tpm.startup()
            tpm.pcr_extend(7, {ALG.SHA256: bytes(range(32))})
            value = tpm.pcr_read({ALG.SHA256: [7]})
        assert save_tpm_state(port) is True
        SwtpmControl(port=port + 1).init()
        resume_tpm_state(port, tmp_path / "vm.vmx")
        with TpmClient.swtpm_tcp(port) as tpm:
            assert tpm.pcr_read({ALG.SHA256: [7]}) == value  # Startup(STATE) kept the PCR
        with pytest.raises(VmError, match=r"refused Startup\(STATE\) \(response code 0x100\)"):
            resume_tpm_state(port, tmp_path / "vm.vmx")  # already started
    with pytest.raises(VmError, match="did not answer"):
        save_tpm_state(port)


def test_pipelined_and_split_commands_on_the_data_channel() -> None:
    """Two commands in one write get two answers in order; a command split across writes (header cut in
    the middle, body late) is answered once it is whole; an oversize size ends only that connection."""
    device = TpmDevice(Tpm())
    device.execute(wire.STARTUP_CLEAR)
    port = free_port_pair()
    server = SwtpmServer(device, port=port).start()
    try:
        def answers(sock: socket_module.socket, count: int) -> list[bytes]:
            out, buffer = [], b""
            while len(out) < count:
                while len(buffer) < 10 or len(buffer) < int.from_bytes(buffer[2:6], "big"):
                    chunk = sock.recv(4096)
                    assert chunk, "the server closed the connection"
                    buffer += chunk
                size = int.from_bytes(buffer[2:6], "big")
                out.append(buffer[:size])
                buffer = buffer[size:]
            return out

        with socket_module.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(wire.get_random(8) + wire.get_random(16))
            first, second = answers(sock, 2)
            assert wire.response_code(first) == wire.response_code(second) == 0
            assert int.from_bytes(first[10:12], "big") == 8 and int.from_bytes(second[10:12], "big") == 16

            command = wire.get_random(4)
            for piece in (command[:3], command[3:10], command[10:]):
                sock.sendall(piece)
                time.sleep(0.05)
            (split,) = answers(sock, 1)
            assert wire.response_code(split) == 0 and int.from_bytes(split[10:12], "big") == 4

            sock.sendall(b"\x80\x01" + (1 << 20).to_bytes(4, "big") + (0x17B).to_bytes(4, "big"))
            (refused,) = answers(sock, 1)
            assert wire.response_code(refused) == RC.COMMAND_SIZE
            assert sock.recv(10) == b""  # dropped: the stream is out of step
        with socket_module.create_connection(("127.0.0.1", port), timeout=10) as again:
            again.sendall(wire.get_random(2))
            assert wire.response_code(answers(again, 1)[0]) == 0  # the server itself is fine
    finally:
        server.close()
