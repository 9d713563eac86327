"""The state blobs of swtpm's CMD_GET_STATEBLOB / CMD_SET_STATEBLOB, for QEMU's live migration.

- permanent (1): ``TpmState.to_bytes()``: seeds, NV, persistent objects, clock,
  and the PCRs a Shutdown(STATE) saved;
- volatile (2): the running engine's power cycle (``Volatile``): PCRs, loaded
  objects, sessions (and saved-session sequence numbers), hierarchy enables,
  platform auth, the null hierarchy's seed and proof, locks, DA timing and the
  time since _TPM_Init, so the destination continues exactly where the source
  stopped. Versioned JSON with bytes in hex, every field checked on the way in
  (no pickle); a field out of range makes the blob refused, never half-loaded;
- savestate (3): always empty here: what Shutdown(STATE) saves is part of the
  permanent blob.

Times in the volatile blob count from _TPM_Init (``Tpm.now_ms``), so they stay
meaningful in another process whose monotonic clock has another origin.
Hash, HMAC and event sequences in progress cannot be carried (their running
hash state is not exportable) and are left out; the destination answers
TPM_RC_HANDLE for them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import construct as cs

from vtpm.constants import HT, RH, TRANSIENT_FIRST
from vtpm.crypto import HASHES
from vtpm.entities.object_table import MAX_LOADED_OBJECTS
from vtpm.errors import TpmError
from vtpm.objects import LoadedObject, Public, Sensitive
from vtpm.sessions import MAX_ACTIVE_SESSIONS, MAX_LOADED_SESSIONS, AuthSession, SymDef
from vtpm.state import PCR_COUNT, PROOF_SIZE, SEED_SIZE, StateError, TpmState, Volatile

if TYPE_CHECKING:
    from vtpm.engine import Tpm

VOLATILE_FORMAT = "vtpm-volatile"
VOLATILE_VERSION = 1
MAX_BLOB = 512 * 1024  # swtpm refuses state blobs above this size too
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
SHORT_BYTES = 128  # nonces, digests, session keys, auth values


class BlobType(enum.IntEnum):
    """Which state blob CMD_GET/SET_STATEBLOB moves (swtpm's PTM_BLOB_TYPE_* numbers)."""

    PERMANENT = 1
    VOLATILE = 2
    SAVESTATE = 3


class BlobError(ValueError):
    """A state blob that cannot be loaded; the message says which field (never its value)."""


# ----------------------------------------------------------------------------- encode


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _session_doc(session: AuthSession) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for f in dataclasses.fields(AuthSession):
        value = getattr(session, f.name)
        if isinstance(value, SymDef):
            doc[f.name] = dataclasses.asdict(value)
        elif isinstance(value, bytes):
            doc[f.name] = value.hex()
        else:
            doc[f.name] = value
    return doc


def encode_volatile(tpm: Tpm) -> tuple[bytes, int]:
    """The running engine's volatile state as a blob, and how many sequence objects were left out."""
    v = tpm.volatile
    objects: dict[str, Any] = {}
    dropped = 0
    for handle, obj in v.objects.items():
        if not isinstance(obj, LoadedObject):
            dropped += 1
            continue
        objects[str(handle)] = {"public": obj.public.raw.hex(),
                                "sensitive": obj.sensitive.build().hex() if obj.sensitive else "",
                                "hierarchy": obj.hierarchy, "qualified_name": obj.qualified_name.hex()}
    doc = {
        "format": VOLATILE_FORMAT, "version": VOLATILE_VERSION,
        "since_init_ms": tpm.now_ms(),
        "started": v.started,
        "pcrs": {str(bank): [value.hex() for value in values] for bank, values in v.pcrs.items()},
        "pcr_update_counter": v.pcr_update_counter,
        "platform_auth": v.platform_auth.hex(),
        "ph_enable": v.ph_enable, "sh_enable": v.sh_enable, "eh_enable": v.eh_enable, "ph_enable_nv": v.ph_enable_nv,
        "null_proof": v.null_proof.hex(), "null_seed": v.null_seed.hex(),
        "objects": objects,
        "sessions": {str(handle): _session_doc(s) for handle, s in v.sessions.items()},
        "saved_sessions": {str(handle): seq for handle, seq in v.saved_sessions.items()},
        "clock_rate": v.clock_rate,
        "lockout_auth_failed_ms": v.lockout_auth_failed_ms,
        "da_last_decrement_ms": v.da_last_decrement_ms,
        "nv_read_locked": sorted(v.nv_read_locked),
        "nv_write_locked_stclear": sorted(v.nv_write_locked_stclear),
        "self_tested": sorted(v.self_tested),
        "pcr_group_auth": v.pcr_group_auth.hex(),
        "commands_since_startup": v.commands_since_startup,
        "exclusive_audit_session": v.exclusive_audit_session,
        "physical_presence": v.physical_presence,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), dropped


# ----------------------------------------------------------------------------- decode


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise BlobError(what)


def _int(value: Any, top: int, what: str, bottom: int = 0) -> int:
    _need(isinstance(value, int) and not isinstance(value, bool) and bottom <= value <= top, f"{what} is out of range")
    return value


def _bool(value: Any, what: str) -> bool:
    _need(isinstance(value, bool), f"{what} is not true or false")
    return value


def _bytes(value: Any, what: str, most: int = SHORT_BYTES, exact: int | None = None) -> bytes:
    _need(isinstance(value, str) and len(value) <= 2 * most, f"{what} is not a short hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise BlobError(f"{what} is not hex") from None
    _need(exact is None or len(raw) == exact, f"{what} has the wrong size")
    return raw


def _handles(value: Any, what: str) -> dict[int, Any]:
    _need(isinstance(value, dict), f"{what} is not an object")
    out: dict[int, Any] = {}
    for key, item in value.items():
        _need(isinstance(key, str) and key.isdigit() and len(key) <= 10, f"{what}: a handle is not a number")
        out[_int(int(key), U32_MAX, f"{what} handle")] = item
    return out


def _object(handle: int, doc: Any) -> LoadedObject:
    what = f"object {handle:#x}"
    _need(handle >> 24 == HT.TRANSIENT and handle < TRANSIENT_FIRST + MAX_LOADED_OBJECTS, f"{what}: not a transient handle")
    _need(isinstance(doc, dict) and set(doc) == {"public", "sensitive", "hierarchy", "qualified_name"},
          f"{what}: fields missing or unknown")
    hierarchy = _int(doc["hierarchy"], U32_MAX, f"{what} hierarchy")
    _need(hierarchy in (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.NULL), f"{what}: not a hierarchy")
    try:
        public = Public.parse(_bytes(doc["public"], f"{what} public", 4096))
        raw_sensitive = _bytes(doc["sensitive"], f"{what} sensitive", 4096)
        sensitive = Sensitive.parse_tpm2b(raw_sensitive) if raw_sensitive else None
    except (cs.ConstructError, TpmError, ValueError) as exc:
        if isinstance(exc, BlobError):
            raise
        raise BlobError(f"{what}: public or sensitive area does not parse ({type(exc).__name__})") from None
    qualified = _bytes(doc["qualified_name"], f"{what} qualified name", 2 + 64)
    return LoadedObject(public, sensitive, hierarchy, qualified)


_SESSION_HINTS = typing.get_type_hints(AuthSession)


def _session(handle: int, doc: Any) -> AuthSession:
    what = f"session {handle:#x}"
    _need(handle >> 24 in (HT.HMAC_SESSION, HT.POLICY_SESSION), f"{what}: not a session handle")
    names = {f.name for f in dataclasses.fields(AuthSession)}
    _need(isinstance(doc, dict) and set(doc) == names, f"{what}: fields missing or unknown")
    values: dict[str, Any] = {}
    for name in names:
        hint, value, where = _SESSION_HINTS[name], doc[name], f"{what} {name}"
        optional = type(None) in typing.get_args(hint)
        base = next((t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)), hint)
        if value is None and optional:
            values[name] = None
        elif base is SymDef:
            _need(isinstance(value, dict) and set(value) == {"algorithm", "key_bits", "mode"}, f"{where} is damaged")
            values[name] = SymDef(*(_int(value[k], 0xFFFF, where) for k in ("algorithm", "key_bits", "mode")))
        elif base is bytes:
            values[name] = _bytes(value, where)
        elif base is bool:
            values[name] = _bool(value, where)
        elif base is int:
            values[name] = _int(value, U64_MAX, where)
        else:  # a field type this codec does not know: refuse rather than guess
            raise BlobError(f"{where}: unsupported field type")
    session = AuthSession(**values)
    _need(session.handle == handle, f"{what}: its handle field differs")
    _need(session.auth_hash in HASHES, f"{what}: authHash is not a hash algorithm")
    return session


@dataclass
class VolatileBlob:
    """A checked volatile blob, applied to an engine by ``restore``."""

    doc: dict[str, Any]
    objects: dict[int, LoadedObject]
    sessions: dict[int, AuthSession]


def decode_volatile(raw: bytes) -> VolatileBlob:
    """Parse and check a volatile blob; BlobError names the first field that is wrong."""
    _need(len(raw) <= MAX_BLOB, "the volatile blob is too large")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BlobError(f"the volatile blob is not readable ({type(exc).__name__})") from None
    _need(isinstance(doc, dict) and doc.get("format") == VOLATILE_FORMAT, "not a vTPM volatile blob")
    _need(doc.get("version") == VOLATILE_VERSION, f"volatile blob version {doc.get('version')!r} is not supported")
    expected = {"format", "version", "since_init_ms", "started", "pcrs", "pcr_update_counter", "platform_auth",
                "ph_enable", "sh_enable", "eh_enable", "ph_enable_nv", "null_proof", "null_seed", "objects",
                "sessions", "saved_sessions", "clock_rate", "lockout_auth_failed_ms", "da_last_decrement_ms",
                "nv_read_locked", "nv_write_locked_stclear", "self_tested", "pcr_group_auth",
                "commands_since_startup", "exclusive_audit_session", "physical_presence"}
    _need(set(doc) == expected, "the volatile blob has missing or unknown fields")
    objects = {h: _object(h, d) for h, d in _handles(doc["objects"], "objects").items()}
    sessions = {h: _session(h, d) for h, d in _handles(doc["sessions"], "sessions").items()}
    _need(len(objects) <= MAX_LOADED_OBJECTS and len(sessions) <= MAX_LOADED_SESSIONS, "too many loaded entities")
    saved = _handles(doc["saved_sessions"], "saved_sessions")
    _need(len(saved) + len(sessions) <= MAX_ACTIVE_SESSIONS, "too many sessions")
    for handle, sequence in saved.items():
        _need(handle >> 24 in (HT.HMAC_SESSION, HT.POLICY_SESSION) and handle not in sessions,
              "saved_sessions holds a handle that is not a saved session")
        _int(sequence, U64_MAX, "saved session sequence")
    pcrs = _handles(doc["pcrs"], "pcrs")
    for bank, values in pcrs.items():
        _need(bank in HASHES, "pcrs: a bank is not a hash algorithm")
        _need(isinstance(values, list) and len(values) == PCR_COUNT, "pcrs: a bank does not hold 24 PCRs")
        for value in values:
            _bytes(value, "pcrs value", exact=HASHES[bank].size)
    _int(doc["since_init_ms"], U64_MAX, "since_init_ms")
    for name in ("started", "ph_enable", "sh_enable", "eh_enable", "ph_enable_nv", "physical_presence"):
        _bool(doc[name], name)
    for name in ("pcr_update_counter", "commands_since_startup"):
        _int(doc[name], U64_MAX, name)
    _int(doc["clock_rate"], 10_000_000, "clock_rate", bottom=1)
    _int(doc["da_last_decrement_ms"], U64_MAX, "da_last_decrement_ms", bottom=-U64_MAX)
    if doc["lockout_auth_failed_ms"] is not None:
        _int(doc["lockout_auth_failed_ms"], U64_MAX, "lockout_auth_failed_ms", bottom=-U64_MAX)
    if doc["exclusive_audit_session"] is not None:
        _int(doc["exclusive_audit_session"], U32_MAX, "exclusive_audit_session")
    for name in ("nv_read_locked", "nv_write_locked_stclear", "self_tested"):
        _need(isinstance(doc[name], list) and len(doc[name]) <= 4096, f"{name} is not a list")
        for value in doc[name]:
            _int(value, U32_MAX, name)
    _bytes(doc["platform_auth"], "platform_auth", 64)
    _bytes(doc["pcr_group_auth"], "pcr_group_auth", 64)
    _bytes(doc["null_proof"], "null_proof", exact=PROOF_SIZE)
    _bytes(doc["null_seed"], "null_seed", exact=SEED_SIZE)
    return VolatileBlob(doc, objects, sessions)


def restore(tpm: Tpm, blob: VolatileBlob) -> None:
    """Replace the engine's power cycle with the blob's, just after a _TPM_Init (``tpm.power_cycle()``).

    The permanent state must already be the source's: the PCR banks of a started
    TPM have to match its allocation.
    """
    doc = blob.doc
    pcrs = {bank: [bytes.fromhex(v) for v in values] for bank, values in _handles(doc["pcrs"], "pcrs").items()}
    if doc["started"]:
        _need(set(pcrs) == set(tpm.state.pcr_banks), "the PCR banks differ from the permanent state's allocation")
    fresh = tpm.volatile  # just powered on: its times are this process's "now"
    now = fresh.init_time_ms
    tpm.volatile = Volatile(
        init_time_ms=now - doc["since_init_ms"],
        clock_base_ms=now,
        started=doc["started"],
        pcrs=pcrs,
        pcr_update_counter=doc["pcr_update_counter"],
        platform_auth=bytes.fromhex(doc["platform_auth"]),
        ph_enable=doc["ph_enable"], sh_enable=doc["sh_enable"], eh_enable=doc["eh_enable"],
        ph_enable_nv=doc["ph_enable_nv"],
        null_proof=bytes.fromhex(doc["null_proof"]), null_seed=bytes.fromhex(doc["null_seed"]),
        objects=dict(blob.objects),
        sessions=dict(blob.sessions),
        clock_rate=doc["clock_rate"],
        lockout_auth_failed_ms=doc["lockout_auth_failed_ms"],
        da_last_decrement_ms=doc["da_last_decrement_ms"],
        nv_read_locked=set(doc["nv_read_locked"]),
        nv_write_locked_stclear=set(doc["nv_write_locked_stclear"]),
        self_tested=set(doc["self_tested"]),
        pcr_group_auth=bytes.fromhex(doc["pcr_group_auth"]),
        saved_sessions={int(h): s for h, s in doc["saved_sessions"].items()},
        commands_since_startup=doc["commands_since_startup"],
        exclusive_audit_session=doc["exclusive_audit_session"],
        physical_presence=doc["physical_presence"],
    )


def decode_permanent(raw: bytes) -> TpmState:
    """The persistent state from a permanent blob; BlobError if it is over the size limit or unreadable."""
    _need(len(raw) <= MAX_BLOB, "the permanent blob is too large")
    try:
        return TpmState.from_bytes(raw)
    except StateError as exc:
        raise BlobError(str(exc)) from None
