"""TPM time and Clock as TPMS_TIME_INFO: what ReadClock, attestations and PolicyCounterTimer report."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vtpm.engine import Tpm


def time_info(tpm: Tpm) -> dict[str, object]:
    """The TPMS_TIME_INFO of now: time (ms since _TPM_Init), Clock, resetCount, restartCount and safe."""
    state = tpm.state
    return {
        "time": tpm.now_ms(),
        "clockInfo": {
            "clock": tpm.clock_now(),
            "resetCount": state.reset_count,
            "restartCount": state.restart_count,
            "safe": int(state.clock_safe),
        },
    }
