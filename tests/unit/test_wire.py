"""vtpm.wire: frames equal to what the engine produces and parses, checked byte for byte.

Properties tried: error responses for every response code the engine can send,
commands with any handles, authorization entries and parameters as the engine's
own header and authorization-area parser splits them, password entries against
TPMS_AUTH_COMMAND, PCR bitmaps and selections, NV public areas; response frames
whose size field lies or that are cut short.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtpm import engine, wire
from vtpm.constants import ALG, CC, RC, RH, ST, SU, TPMA_NV
from vtpm.ek import EkKind, ek_template
from vtpm.engine import Tpm
from vtpm.marshal.objects import TPM2B_PUBLIC
from vtpm.marshal.structures import TPML_PCR_SELECTION, TPMS_AUTH_COMMAND, TPMS_AUTH_RESPONSE, TPMS_NV_PUBLIC

from support.imports import closure, import_graph

WIRE = Path(wire.__file__)
u32s = st.integers(0, 2**32 - 1)
short_bytes = st.binary(max_size=64)


def started() -> Tpm:
    tpm = Tpm()
    assert tpm.execute(0, wire.STARTUP_CLEAR) == wire.error_response(RC.SUCCESS)
    return tpm


# ----------------------------------------------------------------------------- error responses


@given(st.integers(0, 0xFFF))
def test_error_response_layout(rc: int) -> None:
    """TPM_ST_NO_SESSIONS, responseSize 10, the code: Part 1 18.6's response header and nothing else."""
    assert wire.error_response(rc) == bytes.fromhex("8001" "0000000a") + rc.to_bytes(4, "big")
    assert wire.parse_response(wire.error_response(rc)) == (ST.NO_SESSIONS, rc, b"")


def test_error_responses_the_engine_sends() -> None:
    fresh = Tpm()
    assert fresh.execute(0, wire.get_random(8)) == wire.error_response(RC.INITIALIZE)
    assert fresh.execute(0, b"\x80\x01") == wire.error_response(RC.COMMAND_SIZE)
    assert fresh.execute(0, wire.build_command(0x1234)) == wire.error_response(RC.COMMAND_CODE)
    tpm = started()
    assert tpm.execute(0, wire.STARTUP_CLEAR) == wire.error_response(RC.INITIALIZE)
    # a format-1 code with its number: parameter 1 of FlushContext names no loaded object
    assert tpm.execute(0, wire.flush_context(0x80000005)) == wire.error_response(RC.VALUE | 0x40 | 0x100)


# ----------------------------------------------------------------------------- commands


def test_known_command_bytes() -> None:
    """Frames from the TPM 2.0 specification's examples and tpm2-tools traces."""
    assert wire.STARTUP_CLEAR == bytes.fromhex("80010000000c000001440000")
    assert wire.startup(SU.STATE) == bytes.fromhex("80010000000c000001440001")
    assert wire.SHUTDOWN_STATE == bytes.fromhex("80010000000c000001450001")
    assert wire.get_random(8) == bytes.fromhex("80010000000c0000017b0008")
    assert wire.build_command(CC.ReadClock) == bytes.fromhex("80010000000a00000181")
    assert wire.PASSWORD_SESSION == bytes.fromhex("40000009" "0000" "01" "0000")
    assert wire.pcr_extend(16, {ALG.SHA1: bytes(20)}) == bytes.fromhex(
        "80020000003500000182" "00000010" "00000009" "40000009000001" "0000" "00000001" "0004" + "00" * 20)


@settings(max_examples=200)
@given(code=u32s, handles=st.lists(u32s, max_size=3),
       entries=st.none() | st.lists(st.tuples(u32s, short_bytes, st.integers(0, 255), short_bytes), max_size=3),
       params=st.binary(max_size=100))
def test_build_command_splits_as_the_engine_parses(code, handles, entries, params) -> None:
    sessions = None if entries is None else [wire.auth_entry(*e) for e in entries]
    command = wire.build_command(code, handles, params, sessions)
    tag, size, parsed_code = wire.parse_header(command)
    assert (size, parsed_code) == (len(command), code)
    assert tag == (ST.NO_SESSIONS if sessions is None else ST.SESSIONS)
    offset = wire.HEADER_SIZE
    assert [int.from_bytes(command[i : i + 4], "big") for i in range(offset, offset + 4 * len(handles), 4)] == handles
    offset += 4 * len(handles)
    if entries:
        parsed, offset = engine._parse_sessions(command, offset)
        assert [(s.handle, s.nonce, s.attributes, s.hmac) for s in parsed] == entries
    elif entries == []:
        assert command[offset : offset + 4] == bytes(4)
        offset += 4
    assert command[offset:] == params


@given(password=short_bytes, attributes=st.integers(0, 255), nonce=short_bytes)
def test_password_session_is_tpms_auth_command(password: bytes, attributes: int, nonce: bytes) -> None:
    entry = wire.password_session(password, attributes, nonce)
    assert entry == TPMS_AUTH_COMMAND.build({"sessionHandle": RH.PW, "nonce": nonce,
                                             "sessionAttributes": attributes, "hmac": password})


def test_tag_override_and_empty_authorization_area() -> None:
    assert wire.build_command(CC.GetRandom, params=b"\x00\x08", tag=0x8003)[:2] == b"\x80\x03"
    empty = wire.build_command(CC.GetRandom, params=b"\x00\x08", sessions=b"")
    assert empty[:2] == ST.SESSIONS.to_bytes(2, "big") and empty[10:14] == bytes(4)
    assert wire.response_code(started().execute(0, empty)) == RC.SIZE  # an authorization area holds 9+ bytes


def test_builders_run_on_the_engine() -> None:
    """Every common builder is a command the engine accepts as framed."""
    tpm = started()
    index = 0x01000100
    attributes = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA
    template = ek_template(EkKind.ECC_P256).template
    commands = [
        wire.get_random(16), wire.get_capability(6, 0x100, 8), wire.pcr_read({ALG.SHA256: [0, 16]}),
        wire.pcr_extend(16, [(ALG.SHA256, bytes(32)), (ALG.SHA1, bytes(20))]), wire.pcr_reset(16),
        wire.nv_define_space(index, attributes, 8), wire.nv_write(index, b"12345678", auth_handle=RH.OWNER),
        wire.nv_read(index, 8, auth_handle=RH.OWNER), wire.nv_read_public(index), wire.nv_undefine_space(index),
        wire.create_primary(template, RH.ENDORSEMENT), wire.flush_context(0x80000000),
        wire.pcr_allocate({ALG.SHA256: range(24), ALG.SHA1: ()}), wire.SHUTDOWN_CLEAR,
    ]
    for command in commands:
        response = wire.parse_response(tpm.execute(0, command))
        assert response.ok, (command.hex(), wire.describe_rc(response.rc))


# ----------------------------------------------------------------------------- responses


def test_parse_response_with_sessions_and_handles() -> None:
    tpm = started()
    index = 0x01000101
    tpm.execute(0, wire.nv_define_space(index, TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD, 4, auth=b"pw"))
    assert wire.response_code(tpm.execute(0, wire.nv_write(index, b"data", password=b"pw"))) == RC.SUCCESS
    response = wire.parse_response(tpm.execute(0, wire.nv_read(index, 4, password=b"pw")))
    handles, params, area = response.split()
    assert response.tag == ST.SESSIONS and handles == () and params == wire.tpm2b(b"data")
    assert TPMS_AUTH_RESPONSE.parse(area) == {"nonce": b"", "sessionAttributes": 1, "hmac": b""}
    created = wire.parse_response(tpm.execute(0, wire.create_primary(ek_template(EkKind.ECC_P256).template,
                                                                     RH.ENDORSEMENT)))
    (handle,), params, area = created.split(1)
    assert handle == 0x80000000 and len(area) == 5 and TPM2B_PUBLIC.parse(params).type == ALG.ECC
    public = wire.parse_nv_read_public(wire.parse_response(tpm.execute(0, wire.nv_read_public(index))).parameters())
    expected = wire.nv_public(index, TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD | TPMA_NV.WRITTEN, 4)
    assert public.name == ALG.SHA256.to_bytes(2, "big") + hashlib.sha256(expected).digest()
    assert (public.index, public.size, public.attributes & TPMA_NV.WRITTEN) == (index, 4, TPMA_NV.WRITTEN)


@given(st.binary(max_size=40))
def test_malformed_responses_are_refused(data: bytes) -> None:
    if len(data) >= 10 and int.from_bytes(data[2:6], "big") == len(data):
        assert wire.parse_response(data).body == data[10:]
    else:
        with pytest.raises(wire.WireError):
            wire.parse_response(data)
    assert wire.response_code(data) == (int.from_bytes(data[6:10], "big") if len(data) >= 10 else -1)


def test_split_refuses_a_parameter_size_that_lies() -> None:
    lying = wire.Response(ST.SESSIONS, 0, (100).to_bytes(4, "big") + b"short")
    with pytest.raises(wire.WireError):
        lying.split()
    with pytest.raises(wire.WireError):
        wire.Response(ST.NO_SESSIONS, 0, b"\x80").split(1)


@pytest.mark.parametrize("rc, text", [
    (0x000, "TPM_RC_SUCCESS"), (0x100, "TPM_RC_INITIALIZE"), (0x1C4, "TPM_RC_VALUE parameter 1"),
    (0x184, "TPM_RC_VALUE handle 1"), (0x28B, "TPM_RC_HANDLE handle 2"), (0x9A2, "TPM_RC_BAD_AUTH session 1"),
    (0x922, "TPM_RC_RETRY"), (0x08E, "TPM_RC_AUTH_FAIL"), (0x17F, "0x17f"), (0x3FF, "0x0bf parameter 3"),
])
def test_describe_rc(rc: int, text: str) -> None:
    assert wire.describe_rc(rc) == text


# ----------------------------------------------------------------------------- PCR selections, NV public


@given(st.sets(st.integers(0, 23)))
def test_pcr_bitmap_round_trip(pcrs: set[int]) -> None:
    assert wire.pcrs_in(wire.pcr_bitmap(pcrs)) == sorted(pcrs)


@given(st.lists(st.tuples(st.sampled_from([ALG.SHA1, ALG.SHA256, ALG.SHA384, ALG.SHA512]),
                          st.sets(st.integers(0, 23))), max_size=4))
def test_pcr_selection_parses_as_tpml_pcr_selection(selections) -> None:
    built = wire.pcr_selection(selections)
    assert [(s.hash, wire.pcrs_in(s.pcrSelect)) for s in TPML_PCR_SELECTION.parse(built)] == \
        [(alg, sorted(pcrs)) for alg, pcrs in selections]
    assert wire.PCR_SELECTION_OUT.parse(built) == TPML_PCR_SELECTION.parse(built)


@given(index=st.integers(0x01000000, 0x01FFFFFF), attributes=u32s, size=st.integers(0, 0xFFFF),
       policy=st.binary(max_size=64))
def test_nv_public_round_trip(index: int, attributes: int, size: int, policy: bytes) -> None:
    public = TPMS_NV_PUBLIC.parse(wire.nv_public(index, attributes, size, ALG.SHA384, policy))
    assert (public.nvIndex, public.nameAlg, public.attributes, public.authPolicy, public.dataSize) == \
        (index, ALG.SHA384, attributes, policy, size)


# ----------------------------------------------------------------------------- what wire depends on


def test_wire_imports_no_engine() -> None:
    """Framing must not need the engine: only vtpm.constants, vtpm.marshal, construct and the stdlib."""
    modules = set()
    for node in ast.walk(ast.parse(WIRE.read_text())):
        if isinstance(node, ast.ImportFrom):
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    project = {m for m in modules if m.split(".")[0] == "vtpm"}
    assert all(m == "vtpm.constants" or m.startswith("vtpm.marshal.") for m in project), project
    loaded = closure(import_graph(["vtpm"]), ["vtpm.wire", "vtpm.transport", "vtpm.client"])
    assert not {m for m in loaded if m.startswith(("vtpm.engine", "vtpm.commands", "vtpm.entities"))}, loaded
