"""A served TPM: the engine plus what a platform adds (power, locality, established flag, state blobs).

Transports call into a ``TpmDevice`` from many connections; the device lock
makes commands run one at a time, as on a real TPM.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from vtpm import wire
from vtpm.constants import CC, RC
from vtpm.engine import Tpm
from vtpm.server import state_blobs
from vtpm.server.state_blobs import BlobError, BlobType, VolatileBlob
from vtpm.server.state_lock import GuardedStore

log = logging.getLogger(__name__)

BUFFER_MIN, BUFFER_MAX = 1024, 4096
FAILURE_RESPONSE = wire.error_response(RC.FAILURE)
_CODE = struct.Struct(">I")  # commandCode, at offset 6 of the header


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
    #: where the engine's saves go, with the state's lock (None: the caller persists by itself)
    storage: GuardedStore | None = None
    #: send Shutdown(CLEAR) before a reset or the end when the OS did not (swtpm's default)
    auto_shutdown: bool = True
    pending_volatile: VolatileBlob | None = None  # CMD_SET_STATEBLOB(volatile): the next CMD_INIT resumes it
    lock: threading.RLock = field(default_factory=threading.RLock)

    def execute(self, command: bytes, locality: int | None = None) -> bytes:
        """Run one command at ``locality`` (default: the device's) under the device lock; the response.

        A stopped device answers TPM_RC_FAILURE; so does one whose state lock went to another server
        (it then shuts down, as swtpm does); a command over the buffer size gets TPM_RC_COMMAND_SIZE."""
        with self.lock:
            if not self.running:
                return FAILURE_RESPONSE
            if self.storage is not None and not self.storage.ensure_locked():
                self.shutdown()  # another server owns the state now (swtpm ends in this case too)
                return FAILURE_RESPONSE
            if len(command) > self.buffer_size:
                return wire.error_response(RC.COMMAND_SIZE)
            try:
                self.last_command = _CODE.unpack_from(command, 6)[0]
            except struct.error:  # shorter than a header: the engine answers TPM_RC_COMMAND_SIZE
                pass
            return self.tpm.execute(self.locality if locality is None else locality, command)

    def _orderly_stop(self) -> None:
        """Send Shutdown(CLEAR) if the OS did not, so stopping is never counted as a crash."""
        if (self.auto_shutdown and self.running and self.last_command != CC.Shutdown
                and self.tpm.volatile.started):
            self.tpm.execute(0, wire.SHUTDOWN_CLEAR)

    def init(self, delete_volatile: bool = False) -> None:
        """_TPM_Init: power-cycle the TPM; it waits for Startup again, or resumes a migrated power cycle.

        Raises BlobError when a volatile blob set by CMD_SET_STATEBLOB does not
        fit the permanent state; the TPM then stays stopped.
        """
        with self.lock:
            self._orderly_stop()
            self.running = False
            self.tpm.power_cycle()
            pending, self.pending_volatile = self.pending_volatile, None
            if pending is not None:
                state_blobs.restore(self.tpm, pending)
            self.running = True
            self.last_command = 0

    def stop(self) -> None:
        """CMD_STOP: send Shutdown(CLEAR) if the OS did not, then refuse commands until the next init."""
        with self.lock:
            self._orderly_stop()
            self.running = False

    def shutdown(self) -> None:
        """The platform is going away: stop and let the server end."""
        self.stop()
        if self.on_terminate:
            self.on_terminate()

    def store_volatile(self) -> None:
        """CMD_STORE_VOLATILE: save the persistent state now (the volatile state travels as a state blob)."""
        with self.lock:
            self.tpm.flush_state()

    def set_buffer_size(self, requested: int) -> int:
        """CMD_SET_BUFFERSIZE: clamp ``requested`` to 1024..4096 and use it (0 only asks); the size in force."""
        with self.lock:
            if requested:
                self.buffer_size = max(BUFFER_MIN, min(BUFFER_MAX, requested))
            return self.buffer_size

    # ------------------------------------------------------------------ live migration

    def lock_storage(self, retries: int) -> bool:
        """CMD_LOCK_STORAGE: take the state's lock, trying for ``retries`` × 10 ms."""
        with self.lock:
            return self.storage is None or self.storage.ensure_locked(retries)

    def get_state_blob(self, kind: BlobType) -> bytes:
        """CMD_GET_STATEBLOB on a running TPM; after the last blob (savestate) the lock goes to the target."""
        with self.lock:
            if kind == BlobType.PERMANENT:
                # the clock as of now, without a write: the paused VM waits for this blob
                state, clock = self.tpm.state, self.tpm.state.clock_ms
                state.clock_ms = self.tpm.clock_now()
                try:
                    return state.to_bytes()
                finally:
                    state.clock_ms = clock
            if kind == BlobType.VOLATILE:
                blob, dropped = state_blobs.encode_volatile(self.tpm)
                if dropped:
                    log.warning("%d hash/HMAC sequence(s) in progress are not part of the volatile blob", dropped)
                return blob
            if self.storage is not None:
                self.storage.release()
            return b""

    def set_state_blob(self, kind: BlobType, raw: bytes) -> None:
        """CMD_SET_STATEBLOB on a stopped TPM; BlobError if the blob is refused (nothing changes then)."""
        with self.lock:
            if kind == BlobType.PERMANENT:
                state = state_blobs.decode_permanent(raw)
                self.tpm.state = state
                self.tpm.power_cycle()
                self.pending_volatile = None
                self.tpm.flush_state()
            elif kind == BlobType.VOLATILE:
                self.pending_volatile = state_blobs.decode_volatile(raw)
            elif raw:
                raise BlobError("a savestate blob must be empty: Shutdown(STATE) data is in the permanent blob")
