"""Non-volatile Storage (Part 3, section 31): define, undefine, read, write, counters,
bits, extend, locks, and NV_Certify. The indices themselves are in vtpm.entities.nv.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import CC, HT, NT, NV_RESERVED_MASK, RC, RH, ST, TPMA_NV
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, digest
from vtpm.entities.attestation import optional_signer, signed_attestation
from vtpm.entities.nv import MAX_NV_INDICES, check_read_access, check_write_access, nv_index, remove_index
from vtpm.errors import TpmError
from vtpm.marshal.objects import TPMT_ASYM_SCHEME
from vtpm.marshal.primitives import U16, U64
from vtpm.marshal.structures import (
    MAX_NV_BUFFER_SIZE,
    TPM2B_AUTH,
    TPM2B_DATA,
    TPM2B_MAX_NV_BUFFER,
    TPM2B_NAME,
    TPM2B_NV_PUBLIC,
)
from vtpm.state import NvIndex

if TYPE_CHECKING:
    from vtpm.engine import Tpm

MAX_NV_INDEX_SIZE = 2048
NV_MEMORY_BYTES = 128 * 1024
MAX_ORDERLY_COUNT = 0xFF
VALID_KINDS = {NT.ORDINARY, NT.COUNTER, NT.BITS, NT.EXTEND, NT.PIN_FAIL, NT.PIN_PASS}
WRITE_AUTH = TPMA_NV.PPWRITE | TPMA_NV.OWNERWRITE | TPMA_NV.AUTHWRITE | TPMA_NV.POLICYWRITE
READ_AUTH = TPMA_NV.PPREAD | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.POLICYREAD
DYNAMIC = TPMA_NV.WRITTEN | TPMA_NV.WRITELOCKED | TPMA_NV.READLOCKED

PROVISION = (RH.OWNER, RH.PLATFORM)
NV_AUTH = handle_spec("authHandle", Auth.USER, types=[HT.NV_INDEX], permanent=PROVISION)
NV_INDEX = handle_spec("nvIndex", types=[HT.NV_INDEX])
_WRITTEN, _WRITEALL = int(TPMA_NV.WRITTEN), int(TPMA_NV.WRITEALL)
_NOT_WRITABLE = frozenset({int(NT.COUNTER), int(NT.BITS), int(NT.EXTEND)})


def _set_written(tpm: Tpm, index: NvIndex, data: bytes) -> None:
    index.data = data
    attributes = index.attributes
    if not attributes & _WRITTEN:  # set once: the same attributes object keeps the index's entity cached
        index.attributes = int(attributes) | _WRITTEN  # a plain int: IntFlag arithmetic is slow
    tpm.mark_nv_dirty(index.index)


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
    """Define an index, with the checks of Part 3 31.3 in the reference implementation's order."""
    public = cmd.params.publicInfo
    attributes, name_alg, size = public.attributes, public.nameAlg, public.dataSize
    kind = (attributes >> 4) & 0xF
    if public.nvIndex >> 24 != HT.NV_INDEX:
        raise TpmError(RC.VALUE, param=2)
    if attributes & NV_RESERVED_MASK:
        raise TpmError(RC.RESERVED_BITS, param=2)
    if public.authPolicy and len(public.authPolicy) != HASHES[name_alg].size:
        raise TpmError(RC.SIZE, param=2)
    if len(cmd.params.auth.rstrip(b"\x00")) > HASHES[name_alg].size:
        raise TpmError(RC.SIZE, param=1)
    platform = cmd.handles[0] == RH.PLATFORM
    if platform and not tpm.volatile.ph_enable_nv:
        raise TpmError(RC.HIERARCHY, handle=1)
    if kind not in VALID_KINDS:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if kind == NT.ORDINARY:
        if size > MAX_NV_INDEX_SIZE:
            raise TpmError(RC.SIZE, param=2)
    elif kind == NT.EXTEND:
        if size != HASHES[name_alg].size:
            raise TpmError(RC.SIZE, param=2)
    elif size != 8:  # counter, bits and PIN indices hold a UINT64
        raise TpmError(RC.SIZE, param=2)
    if kind == NT.COUNTER and attributes & TPMA_NV.CLEAR_STCLEAR:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if kind == NT.PIN_FAIL and not attributes & TPMA_NV.NO_DA:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if kind in (NT.PIN_FAIL, NT.PIN_PASS) and attributes & (TPMA_NV.AUTHWRITE | TPMA_NV.GLOBALLOCK
                                                           | TPMA_NV.WRITEDEFINE):
        raise TpmError(RC.ATTRIBUTES, param=2)  # the authValue of a PIN index never writes it
    if attributes & DYNAMIC:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if not attributes & READ_AUTH or not attributes & WRITE_AUTH:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if attributes & TPMA_NV.CLEAR_STCLEAR and attributes & TPMA_NV.WRITEDEFINE:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if bool(attributes & TPMA_NV.PLATFORMCREATE) != platform:  # the creator must be able to delete it
        raise TpmError(RC.ATTRIBUTES, handle=1)
    if attributes & TPMA_NV.POLICY_DELETE and not platform:
        raise TpmError(RC.ATTRIBUTES, param=2)
    if size > MAX_NV_BUFFER_SIZE and attributes & TPMA_NV.WRITEALL:
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


@command(CC.NV_UndefineSpace, handles=[handle_spec("authHandle", Auth.USER, permanent=PROVISION), NV_INDEX])
def nv_undefine_space(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_NV_UndefineSpace (Part 3 31.4): remove an index with owner or platform authorization; TPM_RC_ATTRIBUTES for
    a POLICY_DELETE index."""
    index = nv_index(tpm, cmd.handles[1])
    if index.has(TPMA_NV.POLICY_DELETE):
        raise TpmError(RC.ATTRIBUTES, handle=2)
    # The owner deletes only what the owner defined; the platform may delete either kind (Part 3 31.4).
    if cmd.handles[0] == RH.OWNER and index.has(TPMA_NV.PLATFORMCREATE):
        raise TpmError(RC.NV_AUTHORIZATION)
    remove_index(tpm, index)
    return Response()


@command(
    CC.NV_UndefineSpaceSpecial,
    handles=[handle_spec("nvIndex", Auth.ADMIN, types=[HT.NV_INDEX]),
             handle_spec("platform", Auth.USER, permanent=[RH.PLATFORM])],
)
def nv_undefine_space_special(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_NV_UndefineSpaceSpecial (Part 3 31.5): remove a POLICY_DELETE index with its policy and platform
    authorization."""
    index = nv_index(tpm, cmd.handles[0])
    if not index.has(TPMA_NV.POLICY_DELETE):
        raise TpmError(RC.ATTRIBUTES, handle=1)
    remove_index(tpm, index)
    return Response()


@command(CC.NV_ReadPublic, handles=[NV_INDEX], response_tpm2b=True)
def nv_read_public(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_NV_ReadPublic (Part 3 31.6): the index's TPMS_NV_PUBLIC and Name."""
    index = nv_index(tpm, cmd.handles[0])
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
    """TPM2_NV_Write (Part 3 31.7): write data at an offset of an ordinary index."""
    handles = cmd.handles
    # The engine resolved the index a moment ago (nv_entity: it exists, its hierarchy is enabled) and
    # checking the authorization changes neither: the index itself, as NV_Read takes it.
    index = tpm.state.nv[handles[1]]
    check_write_access(tpm, cmd, handles[0], index)
    if index.kind in _NOT_WRITABLE:  # ordinary and PIN indices take NV_Write
        raise TpmError(RC.ATTRIBUTES)
    attributes = int(index.attributes)
    params = cmd.params
    data, offset = params["data"], params["offset"]  # item access: no Python-level __getattr__
    size = index.data_size
    if offset > size:
        raise TpmError(RC.VALUE, param=2)
    if offset + len(data) > size:
        raise TpmError(RC.NV_RANGE)
    if attributes & _WRITEALL and len(data) != size:
        raise TpmError(RC.NV_RANGE)
    if offset == 0 and len(data) == size:  # the whole index: nothing of the old data is kept
        _set_written(tpm, index, bytes(data))
        return Response()
    current = bytearray(index.data if attributes & _WRITTEN else b"\xff" * size)
    current[offset : offset + len(data)] = data
    _set_written(tpm, index, bytes(current))
    return Response()


@command(CC.NV_Increment, handles=[NV_AUTH, NV_INDEX])
def nv_increment(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_NV_Increment (Part 3 31.8): add one to a counter index."""
    index = nv_index(tpm, cmd.handles[1])
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
    """TPM2_NV_Extend (Part 3 31.9): extend an extend index with data under its nameAlg."""
    index = nv_index(tpm, cmd.handles[1])
    check_write_access(tpm, cmd, cmd.handles[0], index)
    _require_kind(index, NT.EXTEND)
    current = index.data if index.has(TPMA_NV.WRITTEN) else bytes(index.data_size)
    _set_written(tpm, index, digest(index.name_alg, current, cmd.params.data))
    return Response()


@command(CC.NV_SetBits, handles=[NV_AUTH, NV_INDEX], params=[("bits", U64)])
def nv_set_bits(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_NV_SetBits (Part 3 31.10): OR bits into a bit-field index."""
    index = nv_index(tpm, cmd.handles[1])
    check_write_access(tpm, cmd, cmd.handles[0], index)
    _require_kind(index, NT.BITS)
    current = int.from_bytes(index.data, "big") if index.has(TPMA_NV.WRITTEN) else 0
    _set_written(tpm, index, (current | cmd.params.bits).to_bytes(8, "big"))
    return Response()


@command(CC.NV_WriteLock, handles=[NV_AUTH, NV_INDEX])
def nv_write_lock(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_NV_WriteLock (Part 3 31.11): lock an index with WRITEDEFINE or WRITE_STCLEAR against writes."""
    index = nv_index(tpm, cmd.handles[1])
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
    """TPM2_NV_GlobalWriteLock (Part 3 31.12): lock every GLOBALLOCK index against writes until the next
    TPM2_Startup(CLEAR)."""
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
    """TPM2_NV_ChangeAuth (Part 3 31.15): set an index's authValue (ADMIN role: a policy session); TPM_RC_SIZE for a
    value longer than its nameAlg's digest."""
    index = nv_index(tpm, cmd.handles[0])
    if len(cmd.params.newAuth) > HASHES[index.name_alg].size:
        raise TpmError(RC.SIZE, param=1)
    index.auth_value = cmd.params.newAuth.rstrip(b"\x00")
    tpm.mark_dirty()
    return Response()


# ----------------------------------------------------------------------------- read side


@command(CC.NV_Read, handles=[NV_AUTH, NV_INDEX], params=[("size", U16), ("offset", U16)], response_tpm2b=True)
def nv_read(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_NV_Read (Part 3 31.13): read size bytes at an offset of a written index."""
    handles = cmd.handles
    # The engine resolved the index a moment ago (nv_entity: it exists, its hierarchy is enabled) and
    # checking the password changes neither: the index itself, without nv_index's checks again.
    index = tpm.state.nv[handles[1]]
    memo = cmd.memo  # a kept command's answer, while the index, its data and its attributes are those objects
    if memo is not None and memo[0] is index and memo[1] is index.data and memo[2] is index.attributes:
        return Response(memo[3])
    check_read_access(tpm, cmd, handles[0], index)
    params = cmd.params
    size, offset = params["size"], params["offset"]  # item access: no Python-level __getattr__
    data_size = index.data_size
    if offset > data_size:
        raise TpmError(RC.VALUE, param=2)
    if size > MAX_NV_BUFFER_SIZE:
        raise TpmError(RC.VALUE, param=1)
    if offset + size > data_size:
        raise TpmError(RC.NV_RANGE)
    data = index.data[offset : offset + size]  # at most MAX_NV_BUFFER_SIZE: a TPM2B_MAX_NV_BUFFER
    out = len(data).to_bytes(2, "big") + data
    # the answer depends on nothing else: the handles and parameters are the command's, the data size
    # and name are fixed for an index object, data and attributes are replaced, never changed in place
    cmd.memo = (index, index.data, index.attributes, out)
    return Response(out)


@command(CC.NV_ReadLock, handles=[NV_AUTH, NV_INDEX])
def nv_read_lock(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_NV_ReadLock (Part 3 31.14): lock a READ_STCLEAR index against reads until the next TPM2_Startup(CLEAR)."""
    index = nv_index(tpm, cmd.handles[1])
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


# ----------------------------------------------------------------------------- certify


@command(CC.NV_Certify,
         handles=[handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL]),
                  handle_spec("authHandle", Auth.USER, types=[HT.NV_INDEX], permanent=(RH.OWNER, RH.PLATFORM)),
                  handle_spec("nvIndex", types=[HT.NV_INDEX])],
         params=[("qualifyingData", TPM2B_DATA), ("inScheme", TPMT_ASYM_SCHEME), ("size", U16), ("offset", U16)],
         response_tpm2b=True)
def nv_certify(tpm: Tpm, cmd: Command) -> Response:
    """Sign the contents of an NV index the caller may read (Part 3 31.16)."""
    key = optional_signer(tpm, cmd.handles[0], 1)
    index = nv_index(tpm, cmd.handles[2])
    check_read_access(tpm, cmd, cmd.handles[1], index)
    p = cmd.params
    if p.offset > index.data_size or p.size > index.data_size - p.offset:
        raise TpmError(RC.NV_RANGE)
    info = {"indexName": index.name, "offset": p.offset, "nvContents": index.data[p.offset : p.offset + p.size]}
    return Response(params=signed_attestation(tpm, key, p.inScheme, 2, ST.ATTEST_NV, p.qualifyingData, info))
