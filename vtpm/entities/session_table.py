"""The loaded-session table's side of handle lookup: an HMAC or policy session handle
names an entity with no authValue of its own (sessions themselves are vtpm.sessions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import HT, RC
from vtpm.core import Entity, entity_resolver
from vtpm.errors import TpmError

if TYPE_CHECKING:
    from vtpm.engine import Tpm


def _session_entity(tpm: Tpm, handle: int) -> Entity:
    if handle not in tpm.volatile.sessions:
        raise TpmError(RC.REFERENCE_H0)
    return Entity(b"", da_protected=False)


entity_resolver(HT.HMAC_SESSION)(_session_entity)
entity_resolver(HT.POLICY_SESSION)(_session_entity)
