"""EK Credential Profile templates: every low- and high-range EK can be created, is
deterministic and has the profile's attributes and key size (that the low-range ones are
the very keys tpm2_createek makes, policy included: interop/test_vtpm_ek_tools.py).
"""

from __future__ import annotations

import hashlib

import pytest

from test_vtpm_engine import cmd, pw, rc
from vtpm.constants import CC, RH
from vtpm.ek import EkKind, ek_template
from vtpm.engine import Tpm
from vtpm.marshal.objects import TPMT_PUBLIC
from vtpm.state import SEED_SIZE, TpmState


def create_primary_command(template: bytes, hierarchy: int = RH.ENDORSEMENT) -> bytes:
    body = (4).to_bytes(2, "big") + bytes(4)  # empty TPMS_SENSITIVE_CREATE
    body += len(template).to_bytes(2, "big") + template + b"\x00\x00" + bytes(4)
    return cmd(CC.CreatePrimary, body, handles=(hierarchy,), auth=pw())


def out_public(response: bytes) -> bytes:
    size = int.from_bytes(response[18:20], "big")
    return response[20 : 20 + size]


@pytest.fixture(scope="module")
def tpm() -> Tpm:
    """A TPM with a fixed endorsement seed. The prime search of a 4096-bit EK takes from half a
    second to twenty depending on the seed; a fixed one keeps this lane's time the same every run."""
    state = TpmState.manufacture()
    state.eps = hashlib.sha512(b"vtpm unit tests: endorsement primary seed").digest()[:SEED_SIZE]
    engine = Tpm(state)
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
