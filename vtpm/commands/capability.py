"""Capability Commands (Part 3, section 30): GetCapability and TestParms, what this TPM is and can do."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

import construct as cs

from vtpm import ecmath
from vtpm.constants import (
    ALG, CAP, CC, HT, NT, PT, PT_PCR, RC, RH, TPMA_ALGORITHM, TPMA_PERMANENT,
    TPMA_STARTUP_CLEAR,
)
from vtpm.core import COMMANDS, Command, Response, command
from vtpm.crypto import HASHES
from vtpm.entities.audit import audited_commands
from vtpm.entities.nv import MAX_NV_INDICES, nv_handles
from vtpm.entities.pcr import NO_INCREMENT, PCR_ATTRIBUTES, PCR_GROUP, pcr_selection_all
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U8, U32
from vtpm.marshal.structures import (
    MAX_CAP_BUFFER,
    TPML_ALG_PROPERTY,
    TPML_CC,
    TPML_CCA,
    TPML_ECC_CURVE,
    TPML_HANDLE,
    TPML_PCR_SELECTION_OUT,
    TPML_TAGGED_PCR_PROPERTY,
    TPML_TAGGED_TPM_PROPERTY,
)
from vtpm.state import PCR_COUNT

if TYPE_CHECKING:
    from vtpm.engine import Tpm

MANUFACTURER = b"VMCR"
VENDOR_STRINGS = (b"vmcr", b"ypt ", b"vTPM", b"\0\0\0\0")
FIRMWARE_VERSION = (0x00010000, 0x00000000)
SPEC_LEVEL, SPEC_REVISION, SPEC_DAY, SPEC_YEAR = 0, 164, 75, 2021
A = TPMA_ALGORITHM
MAX_CAP_CC = 254  # TPM_CCs in one GetCapability answer
ALGORITHMS: dict[int, int] = {
    ALG.RSA: A.ASYMMETRIC | A.OBJECT,
    ALG.SHA1: A.HASH,
    ALG.HMAC: A.HASH | A.SIGNING,
    ALG.AES: A.SYMMETRIC,
    ALG.MGF1: A.HASH | A.METHOD,
    ALG.KEYEDHASH: A.HASH | A.OBJECT | A.SIGNING | A.ENCRYPTING,
    ALG.XOR: A.SYMMETRIC | A.HASH,
    ALG.SHA256: A.HASH,
    ALG.SHA384: A.HASH,
    ALG.SHA512: A.HASH,
    ALG.NULL: 0,
    ALG.RSASSA: A.ASYMMETRIC | A.SIGNING,
    ALG.RSAES: A.ASYMMETRIC | A.ENCRYPTING,
    ALG.RSAPSS: A.ASYMMETRIC | A.SIGNING,
    ALG.OAEP: A.ASYMMETRIC | A.ENCRYPTING | A.METHOD,
    ALG.ECDSA: A.ASYMMETRIC | A.SIGNING | A.METHOD,
    ALG.ECDH: A.ASYMMETRIC | A.METHOD,
    ALG.ECDAA: A.ASYMMETRIC | A.SIGNING,
    ALG.SM2: A.ASYMMETRIC | A.SIGNING | A.ENCRYPTING,
    ALG.ECSCHNORR: A.ASYMMETRIC | A.SIGNING,
    ALG.ECMQV: A.ASYMMETRIC | A.METHOD,
    ALG.KDF1_SP800_56A: A.HASH | A.METHOD,
    ALG.KDF1_SP800_108: A.HASH | A.METHOD,
    ALG.ECC: A.ASYMMETRIC | A.OBJECT,
    ALG.SYMCIPHER: A.OBJECT | A.SYMMETRIC,
    ALG.CTR: A.SYMMETRIC | A.ENCRYPTING,
    ALG.OFB: A.SYMMETRIC | A.ENCRYPTING,
    ALG.CBC: A.SYMMETRIC | A.ENCRYPTING,
    ALG.CFB: A.SYMMETRIC | A.ENCRYPTING,
    ALG.ECB: A.SYMMETRIC | A.ENCRYPTING,
}
ECC_CURVES = tuple(sorted(ecmath.CURVES))  # the curves libtpms 0.9 implements: NIST P-192..P-521, BN, SM2
AES_KEY_BITS = (128, 192, 256)
RSA_KEY_BITS = (1024, 2048, 3072, 4096)
PERMANENT_HANDLES = (RH.OWNER, RH.NULL, RH.PW, RH.LOCKOUT, RH.ENDORSEMENT, RH.PLATFORM, RH.PLATFORM_NV)


# TPMA_CC as the reference implementation (and libtpms) declares it for each command (Part 2 9.9 and
# the commands' tables in Part 3): which may write NV, which may flush much of the TPM's state, which
# flush a transient handle they were given, and which return a handle.
NV_COMMANDS = frozenset({
    CC.NV_UndefineSpaceSpecial, CC.EvictControl, CC.HierarchyControl, CC.NV_UndefineSpace, CC.ChangeEPS,
    CC.ChangePPS, CC.Clear, CC.ClearControl, CC.ClockSet, CC.HierarchyChangeAuth, CC.NV_DefineSpace,
    CC.PCR_Allocate, CC.PCR_SetAuthPolicy, CC.PP_Commands, CC.SetPrimaryPolicy, CC.NV_GlobalWriteLock,
    CC.GetCommandAuditDigest, CC.NV_Increment, CC.NV_SetBits, CC.NV_Extend, CC.NV_Write, CC.NV_WriteLock,
    CC.DictionaryAttackLockReset, CC.DictionaryAttackParameters, CC.NV_ChangeAuth, CC.PCR_Event,
    CC.PCR_Reset, CC.SetAlgorithmSet, CC.SetCommandCodeAuditStatus, CC.FieldUpgradeData,
    CC.IncrementalSelfTest, CC.SelfTest, CC.Startup, CC.Shutdown, CC.StirRandom, CC.NV_ReadLock,
    CC.PCR_Extend, CC.EventSequenceComplete,
})
EXTENSIVE = frozenset({CC.HierarchyControl, CC.ChangeEPS, CC.ChangePPS, CC.Clear})
FLUSHING = frozenset({CC.SequenceComplete, CC.EventSequenceComplete})
RESPONSE_HANDLE = frozenset({
    CC.CreatePrimary, CC.Load, CC.HMAC_Start, CC.ContextLoad, CC.LoadExternal, CC.StartAuthSession,
    CC.HashSequenceStart, CC.CreateLoaded,
})


def command_attributes(code: int) -> int:
    """TPMA_CC of an implemented command: commandIndex, nv, extensive, flushed, cHandles, rHandle."""
    spec = COMMANDS[code]
    value = code & 0xFFFF
    if code in NV_COMMANDS:
        value |= 1 << 22
    if code in EXTENSIVE:
        value |= 1 << 23
    if code in FLUSHING:
        value |= 1 << 24
    value |= (len(spec.handles) & 0x7) << 25
    if code in RESPONSE_HANDLE:
        value |= 1 << 28
    return value


def tpm_properties(tpm: Tpm) -> dict[int, int]:
    """The TPM_PT values of this TPM (fixed and variable), as TPM_CAP_TPM_PROPERTIES reports them."""
    state, volatile = tpm.state, tpm.volatile
    permanent = 0
    if state.owner.auth:
        permanent |= TPMA_PERMANENT.OWNER_AUTH_SET
    if state.endorsement.auth:
        permanent |= TPMA_PERMANENT.ENDORSEMENT_AUTH_SET
    if state.lockout.auth:
        permanent |= TPMA_PERMANENT.LOCKOUT_AUTH_SET
    if state.disable_clear:
        permanent |= TPMA_PERMANENT.DISABLE_CLEAR
    if tpm.dictionary_attack.in_lockout():
        permanent |= TPMA_PERMANENT.IN_LOCKOUT
    permanent |= TPMA_PERMANENT.TPM_GENERATED_EPS
    startup = 0
    for flag, on in ((TPMA_STARTUP_CLEAR.PH_ENABLE, volatile.ph_enable), (TPMA_STARTUP_CLEAR.SH_ENABLE, volatile.sh_enable),
                     (TPMA_STARTUP_CLEAR.EH_ENABLE, volatile.eh_enable), (TPMA_STARTUP_CLEAR.PH_ENABLE_NV, volatile.ph_enable_nv)):
        if on:
            startup |= flag
    if state.last_startup_orderly:
        startup |= TPMA_STARTUP_CLEAR.ORDERLY
    counters = sum(1 for i in state.nv.values() if i.kind == NT.COUNTER)
    loaded = len(volatile.objects)
    return {
        PT.FAMILY_INDICATOR: int.from_bytes(b"2.0\0", "big"),
        PT.LEVEL: SPEC_LEVEL,
        PT.REVISION: SPEC_REVISION,
        PT.DAY_OF_YEAR: SPEC_DAY,
        PT.YEAR: SPEC_YEAR,
        PT.MANUFACTURER: int.from_bytes(MANUFACTURER, "big"),
        PT.VENDOR_STRING_1: int.from_bytes(VENDOR_STRINGS[0], "big"),
        PT.VENDOR_STRING_2: int.from_bytes(VENDOR_STRINGS[1], "big"),
        PT.VENDOR_STRING_3: int.from_bytes(VENDOR_STRINGS[2], "big"),
        PT.VENDOR_STRING_4: int.from_bytes(VENDOR_STRINGS[3], "big"),
        PT.VENDOR_TPM_TYPE: 1,
        PT.FIRMWARE_VERSION_1: FIRMWARE_VERSION[0],
        PT.FIRMWARE_VERSION_2: FIRMWARE_VERSION[1],
        PT.INPUT_BUFFER: 1024,
        PT.HR_TRANSIENT_MIN: 3,
        PT.HR_PERSISTENT_MIN: 7,
        PT.HR_LOADED_MIN: 3,
        PT.ACTIVE_SESSIONS_MAX: 64,
        PT.PCR_COUNT: PCR_COUNT,
        PT.PCR_SELECT_MIN: 3,
        PT.CONTEXT_GAP_MAX: 0xFFFF,
        PT.NV_COUNTERS_MAX: 0,
        PT.NV_INDEX_MAX: 2048,
        PT.MEMORY: 0x6,
        PT.CLOCK_UPDATE: 1 << 22,
        PT.CONTEXT_HASH: ALG.SHA256,
        PT.CONTEXT_SYM: ALG.AES,
        PT.CONTEXT_SYM_SIZE: 256,
        PT.ORDERLY_COUNT: 0xFF,
        PT.MAX_COMMAND_SIZE: 4096,
        PT.MAX_RESPONSE_SIZE: 4096,
        PT.MAX_DIGEST: 64,
        PT.MAX_OBJECT_CONTEXT: 2048,
        PT.MAX_SESSION_CONTEXT: 256,
        PT.PS_FAMILY_INDICATOR: 1,
        PT.PS_LEVEL: 0,
        PT.PS_REVISION: 0x105,
        PT.PS_DAY_OF_YEAR: 0,
        PT.PS_YEAR: 0,
        PT.SPLIT_MAX: 128,
        PT.TOTAL_COMMANDS: len(COMMANDS),
        PT.LIBRARY_COMMANDS: len(COMMANDS),
        PT.VENDOR_COMMANDS: 0,
        PT.NV_BUFFER_MAX: 1024,
        PT.MODES: 0,
        PT.MAX_CAP_BUFFER: MAX_CAP_BUFFER,
        PT.PERMANENT: permanent,
        PT.STARTUP_CLEAR: startup,
        PT.HR_NV_INDEX: len(state.nv),
        PT.HR_LOADED: loaded,
        PT.HR_LOADED_AVAIL: max(0, 3 - loaded),
        PT.HR_ACTIVE: 0,
        PT.HR_ACTIVE_AVAIL: 64,
        PT.HR_TRANSIENT_AVAIL: max(0, 3 - loaded),
        PT.HR_PERSISTENT: 0,
        PT.HR_PERSISTENT_AVAIL: 7,
        PT.NV_COUNTERS: counters,
        PT.NV_COUNTERS_AVAIL: max(0, MAX_NV_INDICES - len(state.nv)),
        PT.ALGORITHM_SET: state.algorithm_set,
        PT.LOADED_CURVES: len(ECC_CURVES),
        PT.LOCKOUT_COUNTER: state.failed_tries,
        PT.MAX_AUTH_FAIL: state.max_tries,
        PT.LOCKOUT_INTERVAL: state.recovery_time,
        PT.LOCKOUT_RECOVERY: state.lockout_recovery,
        PT.NV_WRITE_RECOVERY: 0,
        PT.AUDIT_COUNTER_0: state.audit_counter >> 32,
        PT.AUDIT_COUNTER_1: state.audit_counter & 0xFFFF_FFFF,
    }


def pcr_properties() -> dict[int, int]:
    """The TPM_PT_PCR values: for each property the bitmap of the PCRs that have it (saved, resettable and extendable by
    locality, in the authorization and policy groups)."""
    def bitmap(predicate: Callable[[int], bool]) -> int:
        return sum(1 << i for i in range(PCR_COUNT) if predicate(i))

    props = {PT_PCR.SAVE: bitmap(lambda i: PCR_ATTRIBUTES[i].save)}
    for locality in range(5):
        props[PT_PCR.EXTEND_L0 + 2 * locality] = bitmap(lambda i: bool(PCR_ATTRIBUTES[i].extend_localities >> locality & 1))
        props[PT_PCR.RESET_L0 + 2 * locality] = bitmap(lambda i: bool(PCR_ATTRIBUTES[i].reset_localities >> locality & 1))
    props[PT_PCR.NO_INCREMENT] = bitmap(lambda i: i in NO_INCREMENT)
    props[PT_PCR.DRTM_RESET] = bitmap(lambda i: 17 <= i <= 22)
    props[PT_PCR.POLICY] = bitmap(lambda i: i in PCR_GROUP)
    props[PT_PCR.AUTH] = bitmap(lambda i: i in PCR_GROUP)
    return props


def handles_of_type(tpm: Tpm, kind: int) -> list[int]:
    """The handles of type ``kind`` in use (PCRs, NV indices, permanent handles, loaded and saved sessions, loaded and
    persistent objects), sorted, as TPM_CAP_HANDLES lists them."""
    if kind == HT.PCR:
        return list(range(PCR_COUNT))
    if kind == HT.NV_INDEX:
        return nv_handles(tpm)
    if kind == HT.PERMANENT:
        return sorted(PERMANENT_HANDLES)
    if kind == HT.TRANSIENT:
        return sorted(tpm.volatile.objects)
    if kind == HT.HMAC_SESSION:  # TPM_HT_LOADED_SESSION: every loaded session, HMAC or policy
        return sorted(tpm.volatile.sessions, key=_session_order)
    if kind == HT.POLICY_SESSION:  # TPM_HT_SAVED_SESSION: the sessions whose context is saved
        return sorted(tpm.volatile.saved_sessions, key=_session_order)
    if kind == HT.PERSISTENT:
        return sorted(getattr(tpm.state, "persistent", {}) or {})
    return []


def _session_order(handle: int) -> tuple[int, int]:
    return handle & 0xFFFFFF, handle >> 24


def _page(items: list[int], start: int, count: int, limit: int) -> tuple[list[int], bool]:
    selected = [item for item in items if item >= start]
    take = min(count, limit)
    return selected[:take], len(selected) > take


@command(CC.GetCapability, params=[("capability", U32), ("property", U32), ("propertyCount", U32)])
def get_capability(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_GetCapability (Part 3 30.2): one page of algorithms, handles, commands, PP or audited commands, TPM or PCR
    properties, PCR allocation or ECC curves, with moreData when the page stops early."""
    cap, prop, count = cmd.params.capability, cmd.params.property, cmd.params.propertyCount
    if cap == CAP.ALGS:
        algs, more = _page(sorted(ALGORITHMS), prop, count, 127)
        body = TPML_ALG_PROPERTY.build([{"alg": a, "algProperties": ALGORITHMS[a]} for a in algs])
    elif cap == CAP.HANDLES:
        kind = prop >> 24
        if kind not in (HT.PCR, HT.NV_INDEX, HT.HMAC_SESSION, HT.POLICY_SESSION, HT.PERMANENT, HT.TRANSIENT, HT.PERSISTENT):
            raise TpmError(RC.HANDLE, param=2)
        listed = handles_of_type(tpm, kind)
        if kind not in (HT.HMAC_SESSION, HT.POLICY_SESSION):
            listed = [h for h in listed if h >> 24 == kind]
        handles, more = _page(listed, prop if kind not in (HT.HMAC_SESSION, HT.POLICY_SESSION) else 0, count, 254)
        body = TPML_HANDLE.build(handles)
    elif cap == CAP.COMMANDS:
        codes, more = _page(sorted(COMMANDS), prop, count, 254)
        body = TPML_CCA.build([command_attributes(c) for c in codes])
    elif cap in (CAP.PP_COMMANDS, CAP.AUDIT_COMMANDS):
        listed = tpm.state.pp_commands if cap == CAP.PP_COMMANDS else audited_commands(tpm)
        codes, more = _page(sorted(c for c in listed if c in COMMANDS), prop, count, MAX_CAP_CC)
        body = TPML_CC.build(codes)
    elif cap == CAP.PCRS:
        if prop != 0:
            raise TpmError(RC.VALUE, param=2)

        body, more = TPML_PCR_SELECTION_OUT.build(pcr_selection_all(tpm)), False
    elif cap == CAP.TPM_PROPERTIES:
        table = tpm_properties(tpm)
        keys, more = _page(sorted(table), prop, count, 127)
        if prop < 0x200:  # fixed and variable properties are separate groups
            more = more and any(k < 0x200 for k in sorted(table) if k >= prop and k not in keys) or more
        body = TPML_TAGGED_TPM_PROPERTY.build([{"property": k, "value": table[k]} for k in keys])
    elif cap == CAP.PCR_PROPERTIES:
        table = pcr_properties()
        keys, more = _page(sorted(table), prop, count, 127)
        body = TPML_TAGGED_PCR_PROPERTY.build(
            [{"tag": k, "pcrSelect": table[k].to_bytes(3, "little")} for k in keys]
        )
    elif cap == CAP.ECC_CURVES:
        curves, more = _page(list(ECC_CURVES), prop, count, 508)
        body = TPML_ECC_CURVE.build(curves)
    else:
        raise TpmError(RC.VALUE, param=1)
    return Response(params=U8.build(int(more)) + U32.build(cap) + body)


# ----------------------------------------------------------------------------- TestParms


SYM_MODES = {ALG.CFB}  # storage keys' symmetric definitions use CFB
RSA_SCHEMES = {ALG.RSASSA, ALG.RSAPSS, ALG.RSAES, ALG.OAEP, ALG.NULL}
ECC_SCHEMES = {ALG.ECDSA, ALG.ECDH, ALG.ECDAA, ALG.SM2, ALG.ECSCHNORR, ALG.ECMQV, ALG.NULL}
KDF_SCHEMES = {ALG.NULL, ALG.KDF1_SP800_56A, ALG.KDF1_SP800_108}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)

    def u16(self) -> int:
        raw = self.stream.read(2)
        if len(raw) != 2:
            raise TpmError(RC.INSUFFICIENT, param=1)
        return int.from_bytes(raw, "big")

    def u32(self) -> int:
        return self.u16() << 16 | self.u16()

    def done(self) -> bool:
        return self.stream.tell() == len(self.stream.getbuffer())


def _hash(alg: int, allow_null: bool = False) -> None:
    if alg not in HASHES and not (allow_null and alg == ALG.NULL):
        raise TpmError(RC.HASH, param=1)


def _symmetric(reader: _Reader, allow_null: bool) -> None:
    alg = reader.u16()
    if alg == ALG.NULL:
        if not allow_null:
            raise TpmError(RC.SYMMETRIC, param=1)
        return
    if alg != ALG.AES:
        raise TpmError(RC.SYMMETRIC, param=1)
    if reader.u16() not in AES_KEY_BITS:
        raise TpmError(RC.KEY_SIZE, param=1)
    if reader.u16() not in SYM_MODES | {ALG.CTR, ALG.OFB, ALG.CBC, ALG.ECB, ALG.NULL}:
        raise TpmError(RC.MODE, param=1)


def _scheme(reader: _Reader, allowed: set[int]) -> None:
    scheme = reader.u16()
    if scheme not in allowed:
        raise TpmError(RC.SCHEME, param=1)
    if scheme != ALG.NULL:
        _hash(reader.u16())
    if scheme == ALG.ECDAA:
        reader.u16()  # TPMS_SCHEME_ECDAA: hashAlg and the commit count


@command(CC.TestParms, params=[("raw", cs.GreedyBytes)])
def test_parms(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_TestParms (Part 3 30.3): whether a TPMT_PUBLIC_PARMS is one this TPM supports; the error names the first
    part that is not."""
    reader = _Reader(cmd.params.raw)
    kind = reader.u16()
    if kind == ALG.RSA:
        _symmetric(reader, allow_null=True)
        _scheme(reader, RSA_SCHEMES)
        if reader.u16() not in RSA_KEY_BITS:
            raise TpmError(RC.VALUE, param=1)
        exponent = reader.u32()
        if exponent not in (0, 65537) and (exponent < 3 or exponent % 2 == 0):
            raise TpmError(RC.VALUE, param=1)
    elif kind == ALG.ECC:
        _symmetric(reader, allow_null=True)
        _scheme(reader, ECC_SCHEMES)
        if reader.u16() not in ECC_CURVES:
            raise TpmError(RC.CURVE, param=1)
        _scheme(reader, KDF_SCHEMES)
    elif kind == ALG.KEYEDHASH:
        scheme = reader.u16()
        if scheme == ALG.HMAC:
            _hash(reader.u16())
        elif scheme == ALG.XOR:
            _hash(reader.u16())
            if reader.u16() not in KDF_SCHEMES:
                raise TpmError(RC.KDF, param=1)
        elif scheme != ALG.NULL:
            raise TpmError(RC.SCHEME, param=1)
    elif kind == ALG.SYMCIPHER:
        _symmetric(reader, allow_null=False)
    else:
        raise TpmError(RC.TYPE, param=1)
    if not reader.done():
        raise TpmError(RC.SIZE)
    return Response()
