"""Testing (Part 3, section 10): SelfTest, IncrementalSelfTest, GetTestResult."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import CC, RC
from vtpm.core import Command, Response, command
from vtpm.crypto import HASHES
from vtpm.marshal.primitives import U8, U16
from vtpm.marshal.structures import counted

if TYPE_CHECKING:
    from vtpm.engine import Tpm


@command(CC.SelfTest, params=[("fullTest", U8)])
def self_test(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_SelfTest (Part 3 10.2): marks every algorithm tested; there is nothing to test in software."""
    tpm.volatile.self_tested.update(HASHES)
    return Response()


TPML_ALG = counted(U16, 64)


@command(CC.IncrementalSelfTest, params=[("toTest", TPML_ALG)])
def incremental_self_test(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_IncrementalSelfTest (Part 3 10.3): an empty toDoList, as everything is tested."""
    # Every algorithm is tested at power-on, so nothing remains to be tested.
    return Response(params=(0).to_bytes(4, "big"))


@command(CC.GetTestResult, response_tpm2b=True)
def get_test_result(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_GetTestResult (Part 3 10.4): no outData and TPM_RC_SUCCESS."""
    return Response(params=(0).to_bytes(2, "big") + RC.SUCCESS.to_bytes(4, "big"))
