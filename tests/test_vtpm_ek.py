"""EK Credential Profile templates: every low- and high-range EK can be created, is
deterministic, has the profile's policy and attributes, and the low-range ones are the very
keys tpm2_createek makes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from test_vtpm_engine import cmd, pw, rc
from support.tpm_helpers import TpmConnection
from vtpm.constants import CC, RH
from vtpm.ek import EK_TEMPLATES, POLICY_A_SHA256, EkKind, ek_template
from vtpm.engine import Tpm
from vtpm.marshal.objects import TPMT_PUBLIC
from vtpm.state import TpmState
from support.servers import start_vtpm
from support.tools import needs_tools


def create_primary_command(template: bytes, hierarchy: int = RH.ENDORSEMENT) -> bytes:
    body = (4).to_bytes(2, "big") + bytes(4)  # empty TPMS_SENSITIVE_CREATE
    body += len(template).to_bytes(2, "big") + template + b"\x00\x00" + bytes(4)
    return cmd(CC.CreatePrimary, body, handles=(hierarchy,), auth=pw())


def out_public(response: bytes) -> bytes:
    size = int.from_bytes(response[18:20], "big")
    return response[20 : 20 + size]


@pytest.fixture(scope="module")
def tpm() -> Tpm:
    engine = Tpm(TpmState.manufacture())
    assert rc(engine.execute(0, cmd(CC.Startup, b"\x00\x00"))) == 0
    return engine


@pytest.mark.parametrize("kind", list(EkKind))
def test_every_template_creates_a_deterministic_ek(tpm: Tpm, kind: EkKind) -> None:
    template = ek_template(kind)
    publics = []
    for _ in range(2):
        response = tpm.execute(0, create_primary_command(template.template))
        assert rc(response) == 0, hex(rc(response))
        handle = int.from_bytes(response[10:14], "big")
        publics.append(out_public(response))
        assert rc(tpm.execute(0, cmd(CC.FlushContext, handle.to_bytes(4, "big")))) == 0
    assert publics[0] == publics[1]
    area = TPMT_PUBLIC.parse(publics[0])
    assert bool(area.objectAttributes & 0x40) == template.high_range  # userWithAuth only in the high range
    if template.is_rsa:
        assert len(area.unique) * 8 == area.parameters.keyBits
    else:
        assert len(area.unique.x) == {EkKind.ECC_P256: 32, EkKind.ECC_P384: 48, EkKind.ECC_P521: 66}[kind]
    assert template.cert_index in (0x01C00002, 0x01C0000A, 0x01C00016, 0x01C00018, 0x01C0001C, 0x01C0001E)


@needs_tools("tpm2_createek")
def test_low_range_templates_match_tpm2_createek(tmp_path: Path) -> None:
    with start_vtpm(["--state", str(tmp_path / "s"), "--startup-clear"], tmp_path / "log") as server:
        for kind, tool_alg in ((EkKind.RSA2048, "rsa"), (EkKind.ECC_P256, "ecc")):
            subprocess.run(["tpm2_createek", "-c", f"{tool_alg}.ctx", "-G", tool_alg, "-u", f"{tool_alg}.pub"],
                           env=server.tools_env(), cwd=tmp_path, check=True, capture_output=True)
            subprocess.run(["tpm2_flushcontext", "-t"], env=server.tools_env(), cwd=tmp_path, capture_output=True)
            tools_public = (tmp_path / f"{tool_alg}.pub").read_bytes()[2:]
            conn = TpmConnection(server.port)
            try:
                response = conn.transact(create_primary_command(ek_template(kind).template))
            finally:
                conn.close()
            assert rc(response) == 0
            assert out_public(response) == tools_public
            assert POLICY_A_SHA256 in tools_public
    assert len(EK_TEMPLATES) == 6
