"""Clocks and Timers (Part 3, section 29): ReadClock, ClockSet, ClockRateAdjust."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import CC, RC, RH
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.entities.clock import time_info
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U64, OneOf
from vtpm.marshal.structures import TPMS_TIME_INFO

import construct as cs

if TYPE_CHECKING:
    from vtpm.engine import Tpm

MAX_CLOCK = 0xFFFF_0000_0000_0000
RATE_STEP = {1: 10, 2: 100, 3: 1000}  # millionths per FINE/MEDIUM/COARSE adjustment
RATE_LIMIT = 50_000  # at most 5 % off real time
CLOCK_AUTH = handle_spec("auth", Auth.USER, permanent=(RH.OWNER, RH.PLATFORM))


@command(CC.ReadClock)
def read_clock(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_ReadClock (Part 3 29.2): the TPMS_TIME_INFO (time, clock, resets, restarts, safe)."""
    return Response(params=TPMS_TIME_INFO.build(time_info(tpm)))


@command(CC.ClockSet, handles=[CLOCK_AUTH], params=[("newTime", U64)])
def clock_set(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_ClockSet (Part 3 29.3): advance Clock; TPM_RC_VALUE for a time before the current Clock or past its maximum.
    """
    new_time = cmd.params.newTime
    if new_time > MAX_CLOCK or new_time < tpm.clock_now():
        raise TpmError(RC.VALUE, param=1)
    tpm.state.clock_ms = new_time
    tpm.volatile.clock_base_ms = tpm.now_ms() + tpm.volatile.init_time_ms
    tpm.mark_dirty()
    return Response()


@command(CC.ClockRateAdjust, handles=[CLOCK_AUTH], params=[("rateAdjust", OneOf(cs.Int8sb, range(-3, 4), RC.VALUE))])
def clock_rate_adjust(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_ClockRateAdjust (Part 3 29.4): speed Clock up or slow it down by the step asked for, within the allowed
    limit; the time elapsed so far is folded in first, so the new rate applies from now on."""
    adjust = cmd.params.rateAdjust
    if adjust:
        # Fold elapsed time into the clock first so the new rate only applies from now on.
        tpm.state.clock_ms = tpm.clock_now()
        tpm.volatile.clock_base_ms = tpm.now_ms() + tpm.volatile.init_time_ms
        step = RATE_STEP[abs(adjust)] * (1 if adjust > 0 else -1)
        rate = tpm.volatile.clock_rate + step
        tpm.volatile.clock_rate = max(1_000_000 - RATE_LIMIT, min(1_000_000 + RATE_LIMIT, rate))
    return Response()
