"""Hierarchies and the other permanent handles (Part 1, section 13).

One table says, for each hierarchy handle, where the TPM keeps its proof, its
seed, its enable flag, its authValue and its authPolicy; every question about
a hierarchy is answered from it. The permanent handles resolve to entities
here; the commands that change hierarchies are in vtpm.commands.hierarchy.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from vtpm.constants import HT, RC, RH
from vtpm.core import Entity, entity_resolver, remember_entity
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U32, OneOf
from vtpm.state import PROOF_SIZE, SEED_SIZE, Hierarchy

if TYPE_CHECKING:
    from vtpm.engine import Tpm


@dataclass(frozen=True)
class HierarchyRow:
    """Where one hierarchy keeps its values: attribute paths from the Tpm, "" where it has none.

    ``stored`` is its state.Hierarchy record (authPolicy and its hash; the authValue too,
    except the platform's, which is volatile). A hierarchy without ``enabled`` is always enabled.
    """

    proof: str = ""
    seed: str = ""
    enabled: str = ""
    auth: str = ""
    stored: str = ""


HIERARCHIES: dict[int, HierarchyRow] = {
    RH.OWNER: HierarchyRow(
        proof="state.sh_proof", seed="state.sps", enabled="volatile.sh_enable",
        auth="state.owner.auth", stored="state.owner"),
    RH.ENDORSEMENT: HierarchyRow(
        proof="state.eh_proof", seed="state.eps", enabled="volatile.eh_enable",
        auth="state.endorsement.auth", stored="state.endorsement"),
    RH.PLATFORM: HierarchyRow(
        proof="state.ph_proof", seed="state.pps", enabled="volatile.ph_enable",
        auth="volatile.platform_auth", stored="state.platform_policy"),
    RH.NULL: HierarchyRow(proof="volatile.null_proof", seed="volatile.null_seed"),
    RH.LOCKOUT: HierarchyRow(auth="state.lockout.auth", stored="state.lockout"),
    RH.PLATFORM_NV: HierarchyRow(enabled="volatile.ph_enable_nv"),  # no hierarchy, but enabled like one
}

# The hierarchies an object can belong to (TPMI_RH_HIERARCHY with TPM_RH_NULL allowed).
OBJECT_HIERARCHIES = (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.NULL)
TPMI_RH_HIERARCHY_NULL = OneOf(U32, OBJECT_HIERARCHIES, RC.VALUE)


def _path(hierarchy: int, column: str) -> str:
    path: str = getattr(HIERARCHIES[hierarchy], column)
    if not path:
        raise KeyError(hierarchy)
    return path


_GETTERS: dict[str, attrgetter] = {}


def _read(tpm: Tpm, path: str) -> Any:
    getter = _GETTERS.get(path)
    if getter is None:  # one attrgetter per path of the table, made once
        getter = _GETTERS[path] = attrgetter(path)
    return getter(tpm)


def _write(tpm: Tpm, path: str, value: Any) -> None:
    owner, _, name = path.rpartition(".")
    setattr(attrgetter(owner)(tpm), name, value)


def hierarchy_proof(tpm: Tpm, hierarchy: int) -> bytes:
    """The secret that keys the hierarchy's tickets and contexts (the null proof for TPM_RH_NULL)."""
    value: bytes = _read(tpm, _path(hierarchy, "proof"))
    return value


def hierarchy_seed(tpm: Tpm, hierarchy: int) -> bytes:
    """The seed primary objects of the hierarchy are derived from."""
    value: bytes = _read(tpm, _path(hierarchy, "seed"))
    return value


def hierarchy_enabled(tpm: Tpm, handle: int) -> bool:
    """Whether the hierarchy of ``handle`` is enabled; handles without an enable flag always are."""
    row = HIERARCHIES.get(handle)
    if row is None or not row.enabled:
        return True
    enabled: bool = _read(tpm, row.enabled)
    return enabled


def set_enabled(tpm: Tpm, handle: int, enable: bool) -> None:
    """Set the enable flag (phEnable, shEnable, ehEnable, phEnableNV) of the hierarchy ``handle``."""
    _write(tpm, _path(handle, "enabled"), enable)


def stored_hierarchy(tpm: Tpm, handle: int) -> Hierarchy:
    """The hierarchy's persistent record: its authPolicy (and, but for the platform, its authValue)."""
    stored: Hierarchy = _read(tpm, _path(handle, "stored"))
    return stored


def set_auth(tpm: Tpm, handle: int, auth: bytes) -> None:
    """Set the authValue of the hierarchy ``handle``."""
    _write(tpm, _path(handle, "auth"), auth)


def renew(tpm: Tpm, hierarchy: int) -> None:
    """A new seed and proof, and no authValue or authPolicy: every key of the hierarchy changes."""
    _write(tpm, _path(hierarchy, "seed"), secrets.token_bytes(SEED_SIZE))
    _write(tpm, _path(hierarchy, "proof"), secrets.token_bytes(PROOF_SIZE))
    _write(tpm, _path(hierarchy, "stored"), Hierarchy())


_LOCKOUT = int(RH.LOCKOUT)  # a plain int: an enum member costs a class attribute lookup per command
_NO_AUTH = Entity(b"", da_protected=False)  # immutable, so one instance serves every handle without an authValue


def _getter(path: str) -> attrgetter | None:
    return attrgetter(path) if path else None


def _auth_getter(row: HierarchyRow) -> attrgetter | None:
    """The authValue's getter from the stored record when it lives there (all but the platform's)."""
    if row.auth and row.stored and row.auth == row.stored + ".auth":
        return attrgetter("auth")
    return _getter(row.auth)


# Per permanent handle of the table: getters of its enable flag, authValue (from the Tpm, or from the
# stored record when it lives there: one attribute instead of a path) and stored record, made once.
_ENTITY_GETTERS = {handle: (_getter(row.enabled), _auth_getter(row), _getter(row.stored),
                            bool(row.auth) and row.auth == row.stored + ".auth")
                   for handle, row in HIERARCHIES.items()}


@entity_resolver(HT.PERMANENT)
def permanent_entity(tpm: Tpm, handle: int) -> Entity:
    """The entity of a permanent handle: a hierarchy's authValue and policy (TPM_RC_HIERARCHY when it is disabled), no
    authorization for the other permanent handles."""
    getters = _ENTITY_GETTERS.get(handle)
    if getters is None:  # not a hierarchy: always enabled, no authValue
        return _NO_AUTH
    enabled, auth, stored, in_record = getters
    if enabled is not None and not enabled(tpm):
        raise TpmError(RC.HIERARCHY)
    if auth is None or stored is None:
        return _NO_AUTH
    record = stored(tpm)
    value = auth(record if in_record else tpm)
    hit = tpm.entity_cache.get(handle)
    if hit is not None:  # cached_entity's check, written out: every owner-authorized command passes here
        kept = hit[0]
        if kept[0] is value and kept[1] is record.policy and kept[2] is record.policy_alg:
            return hit[1]
    parts = (value, record.policy, record.policy_alg)
    lockout = handle == _LOCKOUT  # only lockoutAuth is protected against dictionary attacks
    return remember_entity(tpm, handle, parts, Entity(value, da_protected=lockout, is_lockout=lockout,
                                                      auth_policy=record.policy, auth_policy_alg=record.policy_alg))
