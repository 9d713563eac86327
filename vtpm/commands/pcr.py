"""Integrity Collection (PCR) (Part 3, section 22): PCR_Extend, PCR_Event, PCR_Read, PCR_Allocate,
PCR_SetAuthPolicy, PCR_SetAuthValue, PCR_Reset, with the PC Client locality rules of vtpm.entities.pcr."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import construct as cs

from vtpm.constants import CC, HT, RC, RH
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, digest
from vtpm.entities.pcr import (
    ALL_PCRS,
    DRTM_PCR,
    HCRTM_PCR,
    PCR_ATTRIBUTES,
    PCR_GROUP,
    allocation,
    bank_mask,
    counts_update,
    extend,
    extend_plan,
    extend_planned,
    locality_bit,
)
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U32
from vtpm.marshal.structures import (
    TPM2B_DIGEST,
    TPMI_ALG_HASH_NULL,
    TPM2B_EVENT,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
)
from vtpm.state import PCR_COUNT

if TYPE_CHECKING:
    from vtpm.engine import Tpm

MAX_PCR_READ = 8
DRTM_LOCALITY = 4  # digests per PCR_Read answer (TPML_DIGEST holds at most 8)
_RH_NULL = int(RH.NULL)
_U16, _U32 = struct.Struct(">H"), struct.Struct(">I")
_SELECTION_HEAD = struct.Struct(">HB")  # TPMS_PCR_SELECTION: hash, sizeofSelect
_EMPTY = Response()  # no handles, no parameters: one instance serves every such answer (the engine only reads it)


@command(CC.PCR_SetAuthValue, handles=[handle_spec("pcrHandle", Auth.USER, types=[HT.PCR])],
         params=[("auth", TPM2B_DIGEST)])
def pcr_set_auth_value(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PCR_SetAuthValue (Part 3 22.7): set the authValue of a PCR in the authorization group; TPM_RC_VALUE for any
    other PCR."""
    if cmd.handles[0] not in PCR_GROUP:
        raise TpmError(RC.VALUE, handle=1)
    tpm.volatile.pcr_group_auth = cmd.params.auth.rstrip(b"\x00")
    return Response()


@command(
    CC.PCR_SetAuthPolicy,
    handles=[handle_spec("authHandle", Auth.USER, permanent=[RH.PLATFORM])],
    params=[("authPolicy", TPM2B_DIGEST), ("hashAlg", TPMI_ALG_HASH_NULL), ("pcrNum", U32)],
)
def pcr_set_auth_policy(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PCR_SetAuthPolicy (Part 3 22.6): set the authPolicy of a PCR in the policy group, with platform
    authorization."""
    p = cmd.params
    if p.pcrNum not in PCR_GROUP:
        raise TpmError(RC.VALUE, param=3)
    if len(p.authPolicy) != (HASHES[p.hashAlg].size if p.hashAlg in HASHES else 0):
        raise TpmError(RC.SIZE, param=1)
    group = tpm.state.pcr_group_policy
    group.policy, group.policy_alg = p.authPolicy, p.hashAlg
    tpm.mark_dirty()
    return Response()


def _selected(select: bytes) -> list[int]:
    """The PCR numbers whose bits are set in a pcrSelect bitmap (bit i of byte i // 8), in order."""
    mask = int.from_bytes(select, "little") & ALL_PCRS
    selected = []
    while mask:
        low = mask & -mask
        selected.append(low.bit_length() - 1)
        mask ^= low
    return selected


PCR_HANDLE = handle_spec("pcrHandle", Auth.USER, types=[HT.PCR], permanent=[RH.NULL])


def _digests_in_kept_layout(cmd: Command, kept: Command) -> bool:
    """PCR_Extend of new digests in the layout of a kept one (``CommandSpec.reparse``): with the same
    length, count and hash algorithms, the readers would parse kept's structure with these digests
    (each digest's size follows from its algorithm, and kept's parse used up exactly its bytes). The
    parameters are then built directly and kept's plan serves, as it names banks, not digests."""
    raw, old = cmd.raw_params, kept.raw_params
    if len(raw) != len(old) or raw[:4] != old[:4]:  # TPML_DIGEST_VALUES.count
        return False
    entries = cs.ListContainer()
    pos = 4
    for entry in kept.params["digests"]:
        start = pos + 2
        pos = start + len(entry["digest"])
        if raw[start - 2:start] != old[start - 2:start]:  # TPMT_HA.hashAlg
            return False
        entries.append(cs.Container(hashAlg=entry["hashAlg"], digest=raw[start:pos]))
    cmd.params = cs.Container(digests=entries)
    cmd.memo = kept.memo
    return True


@command(CC.PCR_Extend, handles=[PCR_HANDLE], params=[("digests", TPML_DIGEST_VALUES)],
         reparse=_digests_in_kept_layout)
def pcr_extend(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PCR_Extend (Part 3 22.2): extend a PCR in each bank named by a digest; TPM_RH_NULL extends nothing."""
    handle = cmd.handles[0]
    if handle == _RH_NULL:
        return Response()
    # item access: a Container's attribute access is a Python-level __getattr__ per field
    digests = cmd.params["digests"]
    plan = cmd.memo  # kept with a kept command: what the extend does under the allocation it was made for
    state = tpm.state
    if (plan is None or plan[0] is not tpm.volatile.pcrs or plan[1] is not state.pcr_banks
            or plan[2] is not state.pcr_partial):  # pcr.plan_current, inline
        plan = cmd.memo = extend_plan(tpm, handle, [entry["hashAlg"] for entry in digests])
    extend_planned(tpm, handle, plan, digests)
    return _EMPTY


@command(CC.PCR_Event, handles=[PCR_HANDLE], params=[("eventData", TPM2B_EVENT)])
def pcr_event(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PCR_Event (Part 3 22.3): hash eventData with every hash algorithm implemented, extend the PCR with those
    digests (unless TPM_RH_NULL) and return them."""
    data = cmd.params.eventData
    digests = [(alg, digest(alg, data)) for alg in sorted(HASHES)]
    if cmd.handles[0] != RH.NULL:
        extend(tpm, cmd.handles[0], digests)
    out = TPML_DIGEST_VALUES.build([{"hashAlg": alg, "digest": value} for alg, value in digests])
    return Response(params=out)


@command(CC.PCR_Reset, handles=[handle_spec("pcrHandle", Auth.USER, types=[HT.PCR])])
def pcr_reset(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PCR_Reset (Part 3 22.8): reset a PCR that the current locality may reset; TPM_RC_LOCALITY otherwise."""
    index = cmd.handles[0]
    attributes = PCR_ATTRIBUTES[index]
    if not attributes.reset_localities:
        raise TpmError(RC.LOCALITY)
    if not attributes.reset_localities & locality_bit(tpm.locality) or tpm.locality == DRTM_LOCALITY:
        # A TPM with DRTM resets the DRTM PCRs only through the DRTM sequence, never from locality 4.
        raise TpmError(RC.LOCALITY)
    for bank, values in tpm.volatile.pcrs.items():
        values[index] = bytes(HASHES[bank].size)
    if counts_update(index):
        tpm.volatile.pcr_update_counter += 1
    return Response()


@command(CC.PCR_Read, params=[("pcrSelectionIn", TPML_PCR_SELECTION)])
def pcr_read(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PCR_Read (Part 3 22.4): the values of the PCRs selected in allocated banks, the selection actually read and
    the update counter."""
    volatile, state = tpm.volatile, tpm.state
    pcrs = volatile.pcrs
    memo = cmd.memo  # what the selection reads, for these PCR banks and this allocation
    if memo is None or memo[0] is not pcrs or memo[1] is not state.pcr_banks or memo[2] is not state.pcr_partial:
        memo = cmd.memo = (pcrs, state.pcr_banks, state.pcr_partial, *_read_plan(tpm, cmd.params["pcrSelectionIn"]))
    picks = memo[4]
    # pcrUpdateCounter, then TPML_PCR_SELECTION (what was read) and the TPML_DIGEST of the values
    if len(picks) == 1:
        values, index, prefix = picks[0]
        return Response(_U32.pack(volatile.pcr_update_counter) + memo[3] + prefix + values[index])
    return Response(_U32.pack(volatile.pcr_update_counter) + memo[3]
                    + b"".join([prefix + values[index] for values, index, prefix in picks]))


def _read_plan(tpm: Tpm, selections: list) -> tuple[bytes, list[tuple[list[bytes], int, bytes]]]:
    """What PCR_Read answers for ``selections`` whatever the PCR values: the TPML_PCR_SELECTION of the PCRs
    read and the TPML_DIGEST count, and which value goes where (bank's list, PCR number, size prefix)."""
    pcrs = tpm.volatile.pcrs
    layout = _U32.pack(len(selections))
    picks: list[tuple[list[bytes], int, bytes]] = []
    for selection in selections:
        alg, select = selection["hash"], selection["pcrSelect"]
        bank = pcrs.get(alg)
        # the selected PCRs that are allocated, lowest first, until the answer holds MAX_PCR_READ digests
        wanted = int.from_bytes(select, "little") & bank_mask(tpm, alg) if bank is not None else 0
        out = 0
        while wanted and len(picks) < MAX_PCR_READ:
            low = wanted & -wanted
            out |= low
            index = low.bit_length() - 1
            picks.append((bank, index, _U16.pack(len(bank[index]))))
            wanted ^= low
        layout += _SELECTION_HEAD.pack(alg, len(select)) + out.to_bytes(len(select), "little")
    return layout + _U32.pack(len(picks)), picks


@command(
    CC.PCR_Allocate,
    handles=[handle_spec("authHandle", Auth.USER, permanent=[RH.PLATFORM])],
    params=[("pcrAllocation", TPML_PCR_SELECTION)],
)
def pcr_allocate(tpm: Tpm, cmd: Command) -> Response:
    """The allocation after the next TPM Reset (Part 3 22.5): each bank named gets the PCRs selected
    (none, some or all), the banks not named keep their current allocation; some bank must keep the
    H-CRTM PCR (0) and some the DRTM PCR (17)."""
    masks = allocation(tpm)
    for selection in cmd.params.pcrAllocation:
        masks[selection.hash] = sum(1 << i for i in _selected(bytes(selection.pcrSelect)))
    if not any(mask >> HCRTM_PCR & 1 for mask in masks.values()) or \
            not any(mask >> DRTM_PCR & 1 for mask in masks.values()):
        raise TpmError(RC.PCR)
    tpm.state.pcr_banks_pending = sorted(bank for bank, mask in masks.items() if mask)
    tpm.state.pcr_partial_pending = [[bank, mask] for bank, mask in masks.items() if mask and mask != ALL_PCRS]
    tpm.mark_dirty()
    size_needed = sum(HASHES[bank].size * bin(mask).count("1") for bank, mask in masks.items())
    size_available = sum(HASHES[bank].size for bank in HASHES) * PCR_COUNT
    body = b"\x01" + U32.build(PCR_COUNT) + U32.build(size_needed) + U32.build(size_available)
    return Response(params=body)
