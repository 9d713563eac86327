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
    tpm.volatile.self_tested.update(HASHES)
    return Response()


TPML_ALG = counted(U16, 64)


@command(CC.IncrementalSelfTest, params=[("toTest", TPML_ALG)])
def incremental_self_test(tpm: Tpm, cmd: Command) -> Response:
    # Every algorithm is tested at power-on, so nothing remains to be tested.
    return Response(params=(0).to_bytes(4, "big"))


@command(CC.GetTestResult, response_tpm2b=True)
def get_test_result(tpm: Tpm, cmd: Command) -> Response:
    return Response(params=(0).to_bytes(2, "big") + RC.SUCCESS.to_bytes(4, "big"))
