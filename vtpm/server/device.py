"""A served TPM: the engine plus what a platform adds (power, locality, established flag).

Transports call into a ``TpmDevice`` from many connections; the device lock
makes commands run one at a time, as on a real TPM.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from vtpm import wire
from vtpm.constants import CC, RC
from vtpm.engine import Tpm

log = logging.getLogger(__name__)

BUFFER_MIN, BUFFER_MAX = 1024, 4096
FAILURE_RESPONSE = wire.error_response(RC.FAILURE)


@dataclass
class TpmDevice:
    """One vTPM as a platform sees it."""

    tpm: Tpm
    name: str = "vtpm"
    running: bool = True
    locality: int = 0
    established: bool = False
    buffer_size: int = BUFFER_MAX
    last_command: int = 0
    on_terminate: Callable[[], None] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)

    def execute(self, command: bytes, locality: int | None = None) -> bytes:
        with self.lock:
            if not self.running:
                return FAILURE_RESPONSE
            if len(command) > self.buffer_size:
                return wire.error_response(RC.COMMAND_SIZE)
            if len(command) >= wire.HEADER_SIZE:
                self.last_command = wire.parse_header(command)[2]
            return self.tpm.execute(self.locality if locality is None else locality, command)

    def _orderly_stop(self) -> None:
        """Send Shutdown(CLEAR) if the OS did not, so stopping is never counted as a crash."""
        if self.running and self.last_command != CC.Shutdown and self.tpm.volatile.started:
            self.tpm.execute(0, wire.SHUTDOWN_CLEAR)

    def init(self, delete_volatile: bool = False) -> None:
        """_TPM_Init: power-cycle the TPM; it waits for Startup again."""
        with self.lock:
            self._orderly_stop()
            self.tpm.power_cycle()
            self.running = True
            self.last_command = 0

    def stop(self) -> None:
        with self.lock:
            self._orderly_stop()
            self.running = False

    def shutdown(self) -> None:
        """The platform is going away: stop and let the server end."""
        self.stop()
        if self.on_terminate:
            self.on_terminate()

    def store_volatile(self) -> None:
        with self.lock:
            self.tpm.flush_state()

    def set_buffer_size(self, requested: int) -> int:
        with self.lock:
            if requested:
                self.buffer_size = max(BUFFER_MIN, min(BUFFER_MAX, requested))
            return self.buffer_size
