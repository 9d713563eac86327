"""Inputs the fuzz campaign (scripts/fuzz.py) found crashing a reader or the engine, kept as regression tests.

Each test replays the campaign's reproducer (or the smallest command sequence
that reaches the same state) and checks the documented answer: a TPM response
code for the engine, one of the project's error types with a message for the
file readers.
"""

from __future__ import annotations

import pytest

from vtpm import wire
from vtpm.constants import ALG, CC, RC, RH
from vtpm.engine import Tpm

from support.fuzzing import seeds
from support.fuzzing.frames import AuthEntry, Frame, check_response

@pytest.fixture
def tpm() -> Tpm:
    engine = Tpm()
    assert wire.response_code(engine.execute(0, wire.STARTUP_CLEAR)) == RC.SUCCESS
    return engine


def run(tpm: Tpm, command: bytes) -> bytes:
    response = tpm.execute(0, command)
    assert check_response(command, response) is None, response.hex()
    return response


def describe(response: bytes) -> str:
    return wire.describe_rc(wire.response_code(response))


# ----------------------------------------------------------------------------- the engine


def test_a_symmetric_key_as_signer_is_a_scheme_error(tpm: Tpm) -> None:
    """Quote (Certify, GetTime, NV_Certify ...) with an AES key read a signing scheme it does not have
    (AttributeError: scheme). Campaign reproducer: Quote with the persistent AES key 0x81000004."""
    params = seeds.writer().sized(seeds.sensitive_create()).sized(seeds.aes_key()).b(b"").count(0)
    response = run(tpm, bytes(Frame(CC.CreatePrimary, [RH.OWNER], [AuthEntry()], params).build()[0]))
    handle = int.from_bytes(response[10:14], "big")
    quote = bytes.fromhex("8002000000290000015880000000000000094000000900000100000000001000000001000b03010000")
    assert int.from_bytes(quote[10:14], "big") == handle
    assert describe(run(tpm, quote)) == "TPM_RC_SCHEME parameter 2"
