"""Random Number Generator (Part 3, section 16): GetRandom and StirRandom."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import CC
from vtpm.core import Command, Response, command
from vtpm.crypto import MAX_DIGEST
from vtpm.marshal.primitives import U16
from vtpm.marshal.structures import Tpm2b

if TYPE_CHECKING:
    from vtpm.engine import Tpm


@command(CC.GetRandom, params=[("bytesRequested", U16)], response_tpm2b=True)
def get_random(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_GetRandom (Part 3 16.1): random bytes, at most one digest's worth (a larger request gets that)."""
    # The TPM returns at most one digest's worth (TPM2B_DIGEST), as the spec allows.
    memo = cmd.memo  # the count and its size field, kept with a kept command
    if memo is None:
        count = min(cmd.params["bytesRequested"], MAX_DIGEST)
        memo = cmd.memo = (count, count.to_bytes(2, "big"))
    return Response(memo[1] + tpm.random(memo[0]))  # TPM2B_DIGEST


@command(CC.StirRandom, params=[("inData", Tpm2b(128))])
def stir_random(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_StirRandom (Part 3 16.2): accepted and discarded, as the operating system's CSPRNG needs no stirring."""
    # The operating system's CSPRNG needs no stirring; the input is accepted and discarded.
    return Response()
