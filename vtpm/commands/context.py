"""FlushContext (Part 3, 28.4): free a transient object or session."""

from __future__ import annotations

from vtpm.constants import CC, HT, RC
from vtpm.engine import Command, Response, Tpm, command
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U32


@command(CC.FlushContext, params=[("flushHandle", U32)])
def flush_context(tpm: Tpm, cmd: Command) -> Response:
    handle = cmd.params.flushHandle
    kind = handle >> 24
    if kind == HT.TRANSIENT:
        if tpm.volatile.objects.pop(handle, None) is None:
            raise TpmError(RC.HANDLE, param=1)
        return Response()
    if kind in (HT.HMAC_SESSION, HT.POLICY_SESSION):
        sessions = getattr(tpm.volatile, "sessions", {})
        if sessions.pop(handle, None) is None:
            raise TpmError(RC.HANDLE, param=1)
        return Response()
    raise TpmError(RC.VALUE, param=1)
