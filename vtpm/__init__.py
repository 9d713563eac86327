"""vtpm: a TPM 2.0 in Python, its state stores, and servers that speak swtpm's and the simulator's protocols.

The public surface, importable as ``from vtpm import ...``:

- the TPM: ``Tpm`` (executes command buffers), ``TpmState`` (everything it persists),
  ``TpmError``, ``StateError``; constants ``ALG``, ``CC``, ``RC``;
- state stores: ``StateStore`` (the protocol), ``PlainStateStore`` (a 0600 file),
  ``JournaledStore`` (crash-safe, append-only journal), ``StateStoreError``;
- clients and transports: ``TpmClient`` (typed commands over any transport),
  ``TpmCommandError``, ``InProcessTransport``, ``SocketTransport``,
  ``MssimTransport``, ``SwtpmControl``, ``TransportError``;
- servers: ``TpmDevice`` (a TPM behind swtpm's control protocol), ``SocketServer``
  (``vtpm socket``'s swtpm-compatible server), ``VtpmHost`` (many vTPMs in one
  process) and ``HostClient`` (its control client), ``free_port_pair`` (choose ports);
- the TCG event log: ``EventLog``, ``parse_event_log``, ``replay``, ``EventLogError``,
  ``EventLogWriter``; the IMA list: ``parse_ima_log``, ``replay_ima``, ``ImaLogWriter``,
  ``ImaLogError``; a verifier's quote checks: ``parse_quote``, ``verify_signature``,
  ``QuoteError``, and ``make_credential`` (MakeCredential without a TPM).

Names are imported on first use (PEP 562), so ``import vtpm`` stays cheap for
the command-line tools that need one submodule only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "Tpm": "vtpm.engine",
    "TpmState": "vtpm.state",
    "StateError": "vtpm.state",
    "TpmError": "vtpm.errors",
    "ALG": "vtpm.constants",
    "CC": "vtpm.constants",
    "RC": "vtpm.constants",
    "StateStore": "vtpm.storage",
    "PlainStateStore": "vtpm.storage",
    "JournaledStore": "vtpm.journal_store",
    "StateStoreError": "vtpm.journal_store",
    "TpmClient": "vtpm.client",
    "TpmCommandError": "vtpm.client",
    "InProcessTransport": "vtpm.transport",
    "SocketTransport": "vtpm.transport",
    "MssimTransport": "vtpm.transport",
    "SwtpmControl": "vtpm.transport",
    "TransportError": "vtpm.transport",
    "TpmDevice": "vtpm.server.device",
    "SocketServer": "vtpm.server.swtpm_socket",
    "VtpmHost": "vtpm.host",
    "HostClient": "vtpm.host_protocol",
    "free_port_pair": "vtpm.server.sockets",
    "EventLog": "vtpm.eventlog",
    "EventLogError": "vtpm.eventlog",
    "parse_event_log": "vtpm.eventlog",
    "replay": "vtpm.eventlog",
    "EventLogWriter": "vtpm.eventlog",
    "parse_ima_log": "vtpm.ima",
    "replay_ima": "vtpm.ima",
    "ImaLogWriter": "vtpm.ima",
    "ImaLogError": "vtpm.ima",
    "parse_quote": "vtpm.quote",
    "verify_signature": "vtpm.quote",
    "QuoteError": "vtpm.quote",
    "make_credential": "vtpm.credential",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from vtpm.client import TpmClient, TpmCommandError
    from vtpm.constants import ALG, CC, RC
    from vtpm.engine import Tpm
    from vtpm.errors import TpmError
    from vtpm.credential import make_credential
    from vtpm.eventlog import EventLog, EventLogError, EventLogWriter, parse_event_log, replay
    from vtpm.ima import ImaLogError, ImaLogWriter, parse_ima_log, replay_ima
    from vtpm.quote import QuoteError, parse_quote, verify_signature
    from vtpm.host import VtpmHost
    from vtpm.host_protocol import HostClient
    from vtpm.journal_store import JournaledStore, StateStoreError
    from vtpm.server.device import TpmDevice
    from vtpm.server.sockets import free_port_pair
    from vtpm.server.swtpm_socket import SocketServer
    from vtpm.state import StateError, TpmState
    from vtpm.storage import PlainStateStore, StateStore
    from vtpm.transport import InProcessTransport, MssimTransport, SocketTransport, SwtpmControl, TransportError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vtpm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
