"""NV indices: lookup, who may read or write them, their entity resolver, and what
Startup, Shutdown, Clear and GetCapability do with them. The NV commands are in
vtpm.commands.nv.

Index data is written through to persistent state on every change; orderly
indices get the same durability (stronger than the spec requires).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from vtpm.constants import CC, HT, NT, RC, RH, TPMA_NV
from vtpm.core import Command, Entity, entity_resolver, remember_entity
from vtpm.crypto import digest
from vtpm.errors import TpmError
from vtpm.state import NvIndex

if TYPE_CHECKING:
    from vtpm.engine import Tpm

MAX_NV_INDICES = 256

# The attribute bits as plain ints: every NV command tests several, and IntFlag arithmetic is slow.
_PLATFORMCREATE = int(TPMA_NV.PLATFORMCREATE)
_NO_DA = int(TPMA_NV.NO_DA)
_WRITTEN = int(TPMA_NV.WRITTEN)
_READLOCKED = int(TPMA_NV.READLOCKED)
_WRITELOCKED = int(TPMA_NV.WRITELOCKED)
_AUTHREAD, _AUTHWRITE = int(TPMA_NV.AUTHREAD), int(TPMA_NV.AUTHWRITE)
_POLICYREAD, _POLICYWRITE = int(TPMA_NV.POLICYREAD), int(TPMA_NV.POLICYWRITE)
_PPREAD, _PPWRITE = int(TPMA_NV.PPREAD), int(TPMA_NV.PPWRITE)
_OWNERREAD, _OWNERWRITE = int(TPMA_NV.OWNERREAD), int(TPMA_NV.OWNERWRITE)
_RH_PLATFORM, _RH_OWNER = int(RH.PLATFORM), int(RH.OWNER)


@functools.lru_cache(maxsize=1024)
def _index_name(handle: int, name_alg: int, attributes: int, auth_policy: bytes, data_size: int) -> bytes:
    """NvIndex.name, remembered by the fields of the public area: resolving an index for every
    command need neither hash it nor lay it out."""
    public = NvIndex(handle, name_alg, attributes, auth_policy, data_size).public_bytes()
    return name_alg.to_bytes(2, "big") + digest(name_alg, public)


def index_name(index: NvIndex) -> bytes:
    """The Name of an NV index: nameAlg || H(its TPMS_NV_PUBLIC)."""
    return _index_name(index.index, index.name_alg, index.attributes, index.auth_policy, index.data_size)


def nv_index(tpm: Tpm, handle: int) -> NvIndex:
    """The index, if it exists and its hierarchy is enabled (hidden indices are TPM_RC_HANDLE)."""
    index = tpm.state.nv.get(handle)
    if index is None:
        raise TpmError(RC.HANDLE)
    if int(index.attributes) & _PLATFORMCREATE:
        if not tpm.volatile.ph_enable_nv:
            raise TpmError(RC.HANDLE)
    elif not tpm.volatile.sh_enable:
        raise TpmError(RC.HANDLE)
    return index


# Commands that count as writes when an index authorizes itself (the others are reads).
WRITE_OPERATIONS = frozenset({CC.NV_Write, CC.NV_Increment, CC.NV_SetBits, CC.NV_Extend, CC.NV_WriteLock})


PIN_KINDS = (NT.PIN_FAIL, NT.PIN_PASS)


def pin_values(index: NvIndex) -> tuple[int, int]:
    """(pinCount, pinLimit) of a written PIN index (TPMS_NV_PIN_COUNTER_PARAMETERS)."""
    data = index.data.ljust(8, b"\x00")
    return int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")


def _auth_available(index: NvIndex) -> Callable[[int, bool, bool], bool]:
    """May the index's authValue (or authPolicy) authorize this command? (Part 1 19.7)"""

    def available(code: int, policy: bool, admin: bool) -> bool:
        write = code in WRITE_OPERATIONS
        attributes = int(index.attributes)
        if policy:
            if not index.auth_policy:
                return False
            return admin or bool(attributes & (_POLICYWRITE if write else _POLICYREAD))
        if index.kind in PIN_KINDS and not write:
            # A PIN index's authValue reads only once written, and only while pinCount < pinLimit.
            if not attributes & _WRITTEN:
                return False
            count, limit = pin_values(index)
            return count < limit
        return bool(attributes & (_AUTHWRITE if write else _AUTHREAD))

    return available


def _pin_counter(tpm: Tpm, index: NvIndex) -> Callable[[bool], None] | None:
    """After the authValue of a written PIN index was tried (Part 1 19.7.2 / Part 2 13.6): a PIN Fail
    index counts failures and starts again at a success; a PIN Pass index counts successes."""
    if index.kind not in PIN_KINDS:
        return None

    def used(success: bool) -> None:
        if not index.has(TPMA_NV.WRITTEN):
            return
        count, limit = pin_values(index)
        if index.kind == NT.PIN_FAIL:
            count = 0 if success else count + 1
        elif success:
            count += 1
        else:
            return
        index.data = (count & 0xFFFF_FFFF).to_bytes(4, "big") + limit.to_bytes(4, "big")
        tpm.mark_dirty()

    return used


@entity_resolver(HT.NV_INDEX)
def nv_entity(tpm: Tpm, handle: int) -> Entity:
    """The authorization entity of an NV index: its authValue and authPolicy, with its read and write rules for
    authorizations that are allowed."""
    index = nv_index(tpm, handle)
    hit = tpm.entity_cache.get(handle)
    if hit is not None:  # cached_entity's check, written out: every NV command resolves its index here
        kept = hit[0]    # (docs/architecture.md: what calling it costs)
        if (kept[0] is index and kept[1] is index.auth_value and kept[2] is index.attributes
                and kept[3] is index.auth_policy and kept[4] is index.name_alg and kept[5] is index.data_size):
            return hit[1]
    # what the entity holds by value, and the index its callbacks read
    parts = (index, index.auth_value, index.attributes, index.auth_policy, index.name_alg, index.data_size)
    return remember_entity(tpm, handle, parts, Entity(
        index.auth_value,
        da_protected=not int(index.attributes) & _NO_DA,
        name=index_name(index),
        auth_policy=index.auth_policy,
        auth_policy_alg=index.name_alg,
        auth_available=_auth_available(index),
        auth_used=_pin_counter(tpm, index),
    ))


def check_write_access(tpm: Tpm, cmd: Command, auth: int, index: NvIndex) -> None:
    """Write side of Part 3 31.3: lock first, then which hierarchy may write."""
    if int(index.attributes) & _WRITELOCKED:
        raise TpmError(RC.NV_LOCKED)
    _check_hierarchy_access(auth, index, _PPWRITE, _OWNERWRITE)


def check_read_access(tpm: Tpm, cmd: Command, auth: int, index: NvIndex) -> None:
    """Read side: lock, hierarchy, then the index must have been written."""
    attributes = int(index.attributes)
    if attributes & _READLOCKED:
        raise TpmError(RC.NV_LOCKED)
    _check_hierarchy_access(auth, index, _PPREAD, _OWNERREAD)
    if not attributes & _WRITTEN:
        raise TpmError(RC.NV_UNINITIALIZED)


def _check_hierarchy_access(auth: int, index: NvIndex, pp: int, owner: int) -> None:
    # An index authorizing itself was already checked (AUTHREAD/AUTHWRITE or the POLICY bits)
    # when its session was verified: TPM_RC_AUTH_UNAVAILABLE otherwise.
    if auth == _RH_PLATFORM:
        allowed = int(index.attributes) & pp
    elif auth == _RH_OWNER:
        allowed = int(index.attributes) & owner
    else:
        allowed = auth == index.index
    if not allowed:
        raise TpmError(RC.NV_AUTHORIZATION)


def remove_index(tpm: Tpm, index: NvIndex) -> None:
    """Delete an NV index, remembering a written counter's value so no later counter starts below it."""
    if index.kind == NT.COUNTER and index.has(TPMA_NV.WRITTEN):
        tpm.state.max_nv_counter = max(tpm.state.max_nv_counter, int.from_bytes(index.data, "big"))
    del tpm.state.nv[index.index]
    tpm.mark_dirty()


# ----------------------------------------------------------------------------- lifecycle hooks


def startup_clear_nv(tpm: Tpm) -> None:
    """TPM Reset/Restart: read locks end, CLEAR_STCLEAR data is forgotten, write locks lapse."""
    for index in tpm.state.nv.values():
        attributes = index.attributes & ~TPMA_NV.READLOCKED
        if index.kind != NT.COUNTER and attributes & TPMA_NV.CLEAR_STCLEAR:
            attributes &= ~TPMA_NV.WRITTEN
        if not attributes & TPMA_NV.WRITTEN or not attributes & TPMA_NV.WRITEDEFINE:
            attributes &= ~TPMA_NV.WRITELOCKED
        index.attributes = attributes
    tpm.mark_dirty()


def shutdown_nv(tpm: Tpm) -> None:
    """Orderly shutdown: index data is already written through; nothing is pending."""


def clear_owner_indices(tpm: Tpm) -> None:
    """TPM2_Clear deletes every index the owner created."""
    for index in [i for i in tpm.state.nv.values() if not i.has(TPMA_NV.PLATFORMCREATE)]:
        remove_index(tpm, index)


def nv_handles(tpm: Tpm) -> list[int]:
    """The defined NV indices visible now (platform indices hidden while phEnableNV is clear), sorted."""
    return sorted(
        i.index for i in tpm.state.nv.values() if not (i.has(TPMA_NV.PLATFORMCREATE) and not tpm.volatile.ph_enable_nv)
    )
