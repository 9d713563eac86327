"""NV storage: define, undefine, read, write, counters, bits, extend, locks (Part 3, section 31).

Index data is written through to persistent state on every change; orderly
indices get the same durability (stronger than the spec requires).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Callable

from vtpm.constants import CC, HT, NT, NV_RESERVED_MASK, RC, RH, TPMA_NV
from vtpm.core import Auth, Command, Entity, Response, command, entity_resolver, handle_spec
from vtpm.crypto import HASHES, digest
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U16, U64
from vtpm.marshal.structures import (
    MAX_NV_BUFFER_SIZE,
    TPM2B_AUTH,
    TPM2B_MAX_NV_BUFFER,
    TPM2B_NAME,
    TPM2B_NV_PUBLIC,
)
from vtpm.state import NvIndex

if TYPE_CHECKING:
    from vtpm.engine import Tpm

MAX_NV_INDEX_SIZE = 2048
MAX_NV_INDICES = 256
NV_MEMORY_BYTES = 128 * 1024
MAX_ORDERLY_COUNT = 0xFF
VALID_KINDS = {NT.ORDINARY, NT.COUNTER, NT.BITS, NT.EXTEND, NT.PIN_FAIL, NT.PIN_PASS}
WRITE_AUTH = TPMA_NV.PPWRITE | TPMA_NV.OWNERWRITE | TPMA_NV.AUTHWRITE | TPMA_NV.POLICYWRITE
READ_AUTH = TPMA_NV.PPREAD | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.POLICYREAD
DYNAMIC = TPMA_NV.WRITTEN | TPMA_NV.WRITELOCKED | TPMA_NV.READLOCKED

PROVISION = (RH.OWNER, RH.PLATFORM)
NV_AUTH = handle_spec("authHandle", Auth.USER, types=[HT.NV_INDEX], permanent=PROVISION)
NV_INDEX = handle_spec("nvIndex", types=[HT.NV_INDEX])


def _index(tpm: Tpm, handle: int) -> NvIndex:
    """The index, if it exists and its hierarchy is enabled (hidden indices are TPM_RC_HANDLE)."""
    index = tpm.state.nv.get(handle)
    if index is None:
        raise TpmError(RC.HANDLE)
    if index.has(TPMA_NV.PLATFORMCREATE):
        if not tpm.volatile.ph_enable_nv:
            raise TpmError(RC.HANDLE)
    elif not tpm.volatile.sh_enable:
        raise TpmError(RC.HANDLE)
    return index


# Commands that count as writes when an index authorizes itself (the others are reads).
WRITE_OPERATIONS = frozenset({CC.NV_Write, CC.NV_Increment, CC.NV_SetBits, CC.NV_Extend, CC.NV_WriteLock})


def _auth_available(index: NvIndex) -> Callable[[int, bool, bool], bool]:
    """May the index's authValue (or authPolicy) authorize this command? (Part 1 19.7)"""

    def available(code: int, policy: bool, admin: bool) -> bool:
        write = code in WRITE_OPERATIONS
        if policy:
            if not index.auth_policy:
                return False
            return admin or index.has(TPMA_NV.POLICYWRITE if write else TPMA_NV.POLICYREAD)
        return index.has(TPMA_NV.AUTHWRITE if write else TPMA_NV.AUTHREAD)

    return available


@entity_resolver(HT.NV_INDEX)
def nv_entity(tpm: Tpm, handle: int) -> Entity:
    index = _index(tpm, handle)
    return Entity(
        index.auth_value,
        da_protected=not index.has(TPMA_NV.NO_DA),
        name=index.name,
        auth_policy=index.auth_policy,
        auth_policy_alg=index.name_alg,
        auth_available=_auth_available(index),
    )


def check_write_access(tpm: Tpm, cmd: Command, auth: int, index: NvIndex) -> None:
    """Write side of Part 3 31.3: lock first, then which hierarchy may write."""
    if index.has(TPMA_NV.WRITELOCKED):
        raise TpmError(RC.NV_LOCKED)
    _check_hierarchy_access(auth, index, TPMA_NV.PPWRITE, TPMA_NV.OWNERWRITE)


def check_read_access(tpm: Tpm, cmd: Command, auth: int, index: NvIndex) -> None:
    """Read side: lock, hierarchy, then the index must have been written."""
    if index.has(TPMA_NV.READLOCKED):
        raise TpmError(RC.NV_LOCKED)
    _check_hierarchy_access(auth, index, TPMA_NV.PPREAD, TPMA_NV.OWNERREAD)
    if not index.has(TPMA_NV.WRITTEN):
        raise TpmError(RC.NV_UNINITIALIZED)


def _check_hierarchy_access(auth: int, index: NvIndex, pp: int, owner: int) -> None:
    # An index authorizing itself was already checked (AUTHREAD/AUTHWRITE or the POLICY bits)
    # when its session was verified: TPM_RC_AUTH_UNAVAILABLE otherwise.
    if auth == RH.PLATFORM:
        allowed = index.attributes & pp
    elif auth == RH.OWNER:
        allowed = index.attributes & owner
    else:
        allowed = auth == index.index
    if not allowed:
        raise TpmError(RC.NV_AUTHORIZATION)


def _set_written(tpm: Tpm, index: NvIndex, data: bytes) -> None:
    index.data = data
    index.attributes |= TPMA_NV.WRITTEN
    tpm.mark_dirty()


def _require_kind(index: NvIndex, *kinds: int) -> None:
    if index.kind not in kinds:
        raise TpmError(RC.ATTRIBUTES, handle=2)


# ----------------------------------------------------------------------------- define / undefine


@command(
    CC.NV_DefineSpace,
    handles=[handle_spec("authHandle", Auth.USER, permanent=PROVISION)],
    params=[("auth", TPM2B_AUTH), ("publicInfo", TPM2B_NV_PUBLIC)],
)
def nv_define_space(tpm: Tpm, cmd: Command) -> Response:
    public = cmd.params.publicInfo
    attributes, name_alg, size = public.attributes, public.nameAlg, public.dataSize
    kind = (attributes >> 4) & 0xF
    if public.nvIndex >> 24 != HT.NV_INDEX:
        raise TpmError(RC.VALUE, param=2)
    if attributes & NV_RESERVED_MASK:
        raise TpmError(RC.RESERVED_BITS, param=2)
    if len(cmd.params.auth) > HASHES[name_alg].size:
        raise TpmError(RC.SIZE, param=1)
    platform = cmd.handles[0] == RH.PLATFORM
    if platform and not tpm.volatile.ph_enable_nv:
        raise TpmError(RC.HIERARCHY, handle=1)
    if bool(attributes & TPMA_NV.PLATFORMCREATE) != platform:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if kind not in VALID_KINDS:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if attributes & DYNAMIC:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if not attributes & WRITE_AUTH or not attributes & READ_AUTH:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if attributes & TPMA_NV.POLICY_DELETE and not platform:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if kind != NT.ORDINARY and attributes & TPMA_NV.WRITEALL:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if kind in (NT.COUNTER, NT.PIN_FAIL, NT.PIN_PASS) and attributes & TPMA_NV.CLEAR_STCLEAR:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if kind in (NT.COUNTER, NT.BITS, NT.PIN_FAIL, NT.PIN_PASS):
        if size != 8:
            raise TpmError(RC.SIZE, param=2)
    elif kind == NT.EXTEND:
        if size != HASHES[name_alg].size:
            raise TpmError(RC.SIZE, param=2)
    elif size > MAX_NV_INDEX_SIZE:
        raise TpmError(RC.SIZE, param=2)
    if public.authPolicy and len(public.authPolicy) != HASHES[name_alg].size:
        raise TpmError(RC.SIZE, param=2)
    nv = tpm.state.nv
    if public.nvIndex in nv:
        raise TpmError(RC.NV_DEFINED)
    used = sum(index.data_size for index in nv.values())
    if len(nv) >= MAX_NV_INDICES or used + size > NV_MEMORY_BYTES:
        raise TpmError(RC.NV_SPACE)
    nv[public.nvIndex] = NvIndex(
        index=public.nvIndex,
        name_alg=name_alg,
        attributes=attributes,
        auth_policy=public.authPolicy,
        data_size=size,
        auth_value=cmd.params.auth.rstrip(b"\x00"),
    )
    tpm.mark_dirty()
    return Response()


def _remove(tpm: Tpm, index: NvIndex) -> None:
    if index.kind == NT.COUNTER and index.has(TPMA_NV.WRITTEN):
        tpm.state.max_nv_counter = max(tpm.state.max_nv_counter, int.from_bytes(index.data, "big"))
    del tpm.state.nv[index.index]
    tpm.mark_dirty()


@command(CC.NV_UndefineSpace, handles=[handle_spec("authHandle", Auth.USER, permanent=PROVISION), NV_INDEX])
def nv_undefine_space(tpm: Tpm, cmd: Command) -> Response:
    index = _index(tpm, cmd.handles[1])
    if index.has(TPMA_NV.PLATFORMCREATE) != (cmd.handles[0] == RH.PLATFORM):
        raise TpmError(RC.NV_AUTHORIZATION)
    if index.has(TPMA_NV.POLICY_DELETE):
        raise TpmError(RC.ATTRIBUTES, handle=2)
    _remove(tpm, index)
    return Response()


@command(
    CC.NV_UndefineSpaceSpecial,
    handles=[handle_spec("nvIndex", Auth.ADMIN, types=[HT.NV_INDEX]),
             handle_spec("platform", Auth.USER, permanent=[RH.PLATFORM])],
)
def nv_undefine_space_special(tpm: Tpm, cmd: Command) -> Response:
    index = _index(tpm, cmd.handles[0])
    if not index.has(TPMA_NV.POLICY_DELETE):
        raise TpmError(RC.ATTRIBUTES, handle=1)
    _remove(tpm, index)
    return Response()


@command(CC.NV_ReadPublic, handles=[NV_INDEX], response_tpm2b=True)
def nv_read_public(tpm: Tpm, cmd: Command) -> Response:
    index = _index(tpm, cmd.handles[0])
    public = {
        "nvIndex": index.index,
        "nameAlg": index.name_alg,
        "attributes": index.attributes,
        "authPolicy": index.auth_policy,
        "dataSize": index.data_size,
    }
    return Response(params=TPM2B_NV_PUBLIC.build(public) + TPM2B_NAME.build(index.name))


# ----------------------------------------------------------------------------- write side


@command(CC.NV_Write, handles=[NV_AUTH, NV_INDEX], params=[("data", TPM2B_MAX_NV_BUFFER), ("offset", U16)])
def nv_write(tpm: Tpm, cmd: Command) -> Response:
    index = _index(tpm, cmd.handles[1])
    check_write_access(tpm, cmd, cmd.handles[0], index)
    if index.kind != NT.ORDINARY:
        raise TpmError(RC.ATTRIBUTES)
    data, offset = cmd.params.data, cmd.params.offset
    if offset > index.data_size:
        raise TpmError(RC.VALUE, param=2)
    if offset + len(data) > index.data_size:
        raise TpmError(RC.NV_RANGE)
    if index.has(TPMA_NV.WRITEALL) and len(data) != index.data_size:
        raise TpmError(RC.NV_RANGE)
    current = bytearray(index.data if index.has(TPMA_NV.WRITTEN) else b"\xff" * index.data_size)
    current[offset : offset + len(data)] = data
    _set_written(tpm, index, bytes(current))
    return Response()


@command(CC.NV_Increment, handles=[NV_AUTH, NV_INDEX])
def nv_increment(tpm: Tpm, cmd: Command) -> Response:
    index = _index(tpm, cmd.handles[1])
    check_write_access(tpm, cmd, cmd.handles[0], index)
    _require_kind(index, NT.COUNTER)
    if index.has(TPMA_NV.WRITTEN):
        value = int.from_bytes(index.data, "big")
    else:
        value = tpm.state.max_nv_counter  # a new counter starts above every counter ever deleted
    if value == 0xFFFF_FFFF_FFFF_FFFF:
        raise TpmError(RC.NV_RANGE)
    _set_written(tpm, index, (value + 1).to_bytes(8, "big"))
    return Response()


@command(CC.NV_Extend, handles=[NV_AUTH, NV_INDEX], params=[("data", TPM2B_MAX_NV_BUFFER)])
def nv_extend(tpm: Tpm, cmd: Command) -> Response:
    index = _index(tpm, cmd.handles[1])
    check_write_access(tpm, cmd, cmd.handles[0], index)
    _require_kind(index, NT.EXTEND)
    current = index.data if index.has(TPMA_NV.WRITTEN) else bytes(index.data_size)
    _set_written(tpm, index, digest(index.name_alg, current, cmd.params.data))
    return Response()


@command(CC.NV_SetBits, handles=[NV_AUTH, NV_INDEX], params=[("bits", U64)])
def nv_set_bits(tpm: Tpm, cmd: Command) -> Response:
    index = _index(tpm, cmd.handles[1])
    check_write_access(tpm, cmd, cmd.handles[0], index)
    _require_kind(index, NT.BITS)
    current = int.from_bytes(index.data, "big") if index.has(TPMA_NV.WRITTEN) else 0
    _set_written(tpm, index, (current | cmd.params.bits).to_bytes(8, "big"))
    return Response()


@command(CC.NV_WriteLock, handles=[NV_AUTH, NV_INDEX])
def nv_write_lock(tpm: Tpm, cmd: Command) -> Response:
    index = _index(tpm, cmd.handles[1])
    try:
        check_write_access(tpm, cmd, cmd.handles[0], index)
    except TpmError as exc:
        if exc.rc == RC.NV_LOCKED:
            return Response()  # already locked: nothing to do
        raise
    if not index.attributes & (TPMA_NV.WRITEDEFINE | TPMA_NV.WRITE_STCLEAR):
        raise TpmError(RC.ATTRIBUTES, handle=2)
    index.attributes |= TPMA_NV.WRITELOCKED
    tpm.mark_dirty()
    return Response()


@command(CC.NV_GlobalWriteLock, handles=[handle_spec("authHandle", Auth.USER, permanent=PROVISION)])
def nv_global_write_lock(tpm: Tpm, cmd: Command) -> Response:
    for index in tpm.state.nv.values():
        if index.has(TPMA_NV.GLOBALLOCK):
            index.attributes |= TPMA_NV.WRITELOCKED
    tpm.state.nv_global_locked = True
    tpm.mark_dirty()
    return Response()


@command(
    CC.NV_ChangeAuth,
    handles=[handle_spec("nvIndex", Auth.ADMIN, types=[HT.NV_INDEX])],
    params=[("newAuth", TPM2B_AUTH)],
)
def nv_change_auth(tpm: Tpm, cmd: Command) -> Response:
    index = _index(tpm, cmd.handles[0])
    if len(cmd.params.newAuth) > HASHES[index.name_alg].size:
        raise TpmError(RC.SIZE, param=1)
    index.auth_value = cmd.params.newAuth.rstrip(b"\x00")
    tpm.mark_dirty()
    return Response()


# ----------------------------------------------------------------------------- read side


@command(CC.NV_Read, handles=[NV_AUTH, NV_INDEX], params=[("size", U16), ("offset", U16)], response_tpm2b=True)
def nv_read(tpm: Tpm, cmd: Command) -> Response:
    index = _index(tpm, cmd.handles[1])
    check_read_access(tpm, cmd, cmd.handles[0], index)
    size, offset = cmd.params.size, cmd.params.offset
    if offset > index.data_size:
        raise TpmError(RC.VALUE, param=2)
    if size > MAX_NV_BUFFER_SIZE:
        raise TpmError(RC.VALUE, param=1)
    if offset + size > index.data_size:
        raise TpmError(RC.NV_RANGE)
    return Response(params=TPM2B_MAX_NV_BUFFER.build(index.data[offset : offset + size]))


@command(CC.NV_ReadLock, handles=[NV_AUTH, NV_INDEX])
def nv_read_lock(tpm: Tpm, cmd: Command) -> Response:
    index = _index(tpm, cmd.handles[1])
    try:
        check_read_access(tpm, cmd, cmd.handles[0], index)
    except TpmError as exc:
        if exc.rc == RC.NV_LOCKED:
            return Response()  # already locked
        if exc.rc != RC.NV_UNINITIALIZED:  # an unwritten index may still be read-locked
            raise
    if not index.has(TPMA_NV.READ_STCLEAR):
        raise TpmError(RC.ATTRIBUTES, handle=2)
    index.attributes |= TPMA_NV.READLOCKED
    tpm.mark_dirty()
    return Response()


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
        _remove(tpm, index)


def nv_handles(tpm: Tpm) -> list[int]:
    return sorted(
        i.index for i in tpm.state.nv.values() if not (i.has(TPMA_NV.PLATFORMCREATE) and not tpm.volatile.ph_enable_nv)
    )
