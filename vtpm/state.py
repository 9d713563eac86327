"""What a TPM remembers: persistent state (NV) and the volatile state of one power cycle.

Persistent state is serialized explicitly (versioned JSON, bytes as hex; no
pickle) and leaves the engine through the persistence callback: seeds,
proofs, hierarchy auth and policies, NV indices, clock, dictionary-attack
counters, PCR allocation and, after Shutdown(STATE), the saved PCRs.
"""

from __future__ import annotations

import binascii
import json
import operator
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from typing import Any

import construct as cs

from vtpm.constants import ALG, CC, RH, TPMA_NV
from vtpm.crypto import HASHES, digest, digest_size
from vtpm.errors import TpmError
from vtpm.marshal.objects import TPM2B_SENSITIVE, TPMT_PUBLIC
from vtpm.marshal.primitives import parse_exact

STATE_FORMAT = "vtpm-state"
STATE_VERSION = 1
SEED_SIZE = 64
PROOF_SIZE = 64
PCR_COUNT = 24
# A freshly manufactured TPM has every bank active, as swtpm/libtpms does (see DESIGN.md).
DEFAULT_BANKS = (ALG.SHA1, ALG.SHA256, ALG.SHA384, ALG.SHA512)


class StateError(ValueError):
    """Serialized TPM state that cannot be loaded."""


@dataclass
class NvIndex:
    """A defined NV index: its public area, auth value and data."""

    index: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    data_size: int
    auth_value: bytes = b""
    data: bytes = b""

    def public_bytes(self) -> bytes:
        """The marshalled TPMS_NV_PUBLIC (what the index's Name is computed over)."""
        return (
            self.index.to_bytes(4, "big")
            + self.name_alg.to_bytes(2, "big")
            + self.attributes.to_bytes(4, "big")
            + len(self.auth_policy).to_bytes(2, "big")
            + self.auth_policy
            + self.data_size.to_bytes(2, "big")
        )

    @property
    def name(self) -> bytes:
        """The index's Name: nameAlg followed by the digest of its public area."""
        return self.name_alg.to_bytes(2, "big") + digest(self.name_alg, self.public_bytes())

    def has(self, flag: TPMA_NV) -> bool:
        """Whether the attribute ``flag`` is set."""
        return bool(self.attributes & flag)

    @property
    def kind(self) -> int:
        """TPM_NT: ordinary, counter, bits or extend (bits 4-7 of the attributes)."""
        return (self.attributes >> 4) & 0xF


@dataclass
class Hierarchy:
    """One hierarchy's authorization: its auth value and its policy."""

    auth: bytes = b""
    policy: bytes = b""
    policy_alg: int = ALG.NULL


@dataclass
class SavedState:
    """Shutdown(STATE): what Startup(STATE) restores."""

    pcrs: dict[int, list[bytes]]


@dataclass
class TpmState:
    """Persistent state of one TPM."""

    eps: bytes
    sps: bytes
    pps: bytes
    eh_proof: bytes
    sh_proof: bytes
    ph_proof: bytes
    owner: Hierarchy = field(default_factory=Hierarchy)
    endorsement: Hierarchy = field(default_factory=Hierarchy)
    lockout: Hierarchy = field(default_factory=Hierarchy)
    platform_policy: Hierarchy = field(default_factory=Hierarchy)  # auth is volatile; policy persists
    disable_clear: bool = False
    nv: dict[int, NvIndex] = field(default_factory=dict)
    pcr_banks: list[int] = field(default_factory=lambda: [int(b) for b in DEFAULT_BANKS])
    pcr_banks_pending: list[int] | None = None
    # Banks allocated only in part: [alg, bitmap of PCRs 0-23]; an allocated bank not listed has all.
    pcr_partial: list[list[int]] = field(default_factory=list)
    pcr_partial_pending: list[list[int]] | None = None
    clock_ms: int = 0
    reset_count: int = 0
    restart_count: int = 0
    clock_safe: bool = True
    failed_tries: int = 0
    max_tries: int = 3
    recovery_time: int = 1000
    lockout_recovery: int = 1000
    orderly: str = "clear"  # how the last power cycle ended: "none" | "clear" | "state"
    last_startup_orderly: bool = True
    saved: SavedState | None = None
    nv_global_locked: bool = False
    max_nv_counter: int = 0
    pcr_group_policy: Hierarchy = field(default_factory=Hierarchy)  # authPolicy of PCRs 20-22
    persistent: dict[int, dict[str, Any]] = field(default_factory=dict)  # EvictControl'd objects
    primary_cache: dict[str, dict[str, bytes]] = field(default_factory=dict)  # RSA primaries by seed+template
    context_counter: int = 0
    total_commands: int = 0
    # Command audit (Part 1 19.6.10, Part 3 21): the audited commands, the hash of the audit digest,
    # the count of audit digests started, and the digest (empty until an audited command runs).
    audit_commands: list[int] = field(default_factory=lambda: [int(CC.SetCommandCodeAuditStatus)])
    audit_hash_alg: int = int(ALG.SHA512)
    audit_counter: int = 0
    command_audit_digest: bytes = b""
    # Commitments of the anonymous signing and two-phase key exchange schemes (Part 1 C.2, Part 3 19):
    # reset at every TPM Reset.
    commit_nonce: bytes = b""
    commit_counter: int = 0
    commit_array: int = 0  # one bit per counter value modulo COMMIT_SLOTS that may still be used
    # Commands that need physical presence when authorized with platformAuth (PP_Commands).
    pp_commands: list[int] = field(default_factory=lambda: [int(CC.PP_Commands)])
    algorithm_set: int = 0  # SetAlgorithmSet's value (TPM_PT_ALGORITHM_SET)

    @classmethod
    def manufacture(cls) -> "TpmState":
        """A new TPM: fresh random seeds and proofs, empty auth, no NV indices."""
        return cls(
            eps=secrets.token_bytes(SEED_SIZE),
            sps=secrets.token_bytes(SEED_SIZE),
            pps=secrets.token_bytes(SEED_SIZE),
            eh_proof=secrets.token_bytes(PROOF_SIZE),
            sh_proof=secrets.token_bytes(PROOF_SIZE),
            ph_proof=secrets.token_bytes(PROOF_SIZE),
        )

    def __repr__(self) -> str:  # never print seeds or auth values
        return f"<TpmState nv={len(self.nv)} banks={self.pcr_banks} resets={self.reset_count}>"

    # ------------------------------------------------------------------ serialization

    def to_bytes(self) -> bytes:
        """The whole state serialized (what a StateStore saves)."""
        return dump_parts(encode_parts(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "TpmState":
        """The state ``to_bytes`` wrote; StateError when the bytes do not make a valid state."""
        return cls.from_parts(load_parts(raw))

    @classmethod
    def from_parts(cls, parts: dict[str, Any]) -> "TpmState":
        """The state whose encoded top-level parts (``encode_parts``, maybe with journal deltas applied)
        are ``parts``; checked like a stored state. StateError when they do not make a valid state."""
        try:
            return _decode(_parts_to_body(parts))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:  # a wrong type
            raise StateError(f"TPM state is damaged ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------- stored format
#
# The stored document is {"format": "vtpm-state", "version": 1, "state": BODY}: BODY has one key per
# TpmState field, bytes as {"hex": ...}, the NV indices as a list. "Parts" are BODY with the keyed
# collections (NV indices, persistent objects, RSA primary cache) as objects keyed by a string, so a
# journal record can carry just the entries that changed (see vtpm/journal.py). Encoding is written
# out per field type: dataclasses.asdict deep-copies everything and was most of the cost.

KEYED_PARTS = ("nv", "persistent", "primary_cache")
_FIELD_NAMES: tuple[str, ...] = ()


def _hex(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {str(k): _hex(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hex(v) for v in value]
    return value


def _hierarchy(h: Hierarchy) -> dict[str, Any]:
    return {"auth": {"hex": h.auth.hex()}, "policy": {"hex": h.policy.hex()}, "policy_alg": h.policy_alg}


def _nv_index(i: NvIndex) -> dict[str, Any]:
    return {"index": i.index, "name_alg": i.name_alg, "attributes": i.attributes,
            "auth_policy": {"hex": i.auth_policy.hex()}, "data_size": i.data_size,
            "auth_value": {"hex": i.auth_value.hex()}, "data": {"hex": i.data.hex()}}


def _encode_field(name: str, value: Any) -> Any:
    if isinstance(value, Hierarchy):
        return _hierarchy(value)
    if name == "nv":
        return {str(k): _nv_index(v) for k, v in value.items()}
    if name == "saved":
        return None if value is None else {"pcrs": {str(k): _hex(v) for k, v in value.pcrs.items()}}
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, (int, str)) or value is None:
        return value
    return _hex(value)


def _field_names() -> tuple[str, ...]:
    global _FIELD_NAMES
    if not _FIELD_NAMES:
        _FIELD_NAMES = tuple(f.name for f in fields(TpmState))
    return _FIELD_NAMES


def encode_parts(state: TpmState) -> dict[str, Any]:
    """The state's top-level parts, JSON-ready (see above)."""
    return {name: _encode_field(name, getattr(state, name)) for name in _field_names()}


# Change tracking for the journal: a snapshot is a cheap structural copy of the state (tuples and
# shallow dict copies, nothing encoded); comparing two tells which parts changed, and only those are
# encoded. ``changes`` gives exactly what ``diff_parts`` gives for the encoded states, much faster.

_HIERARCHIES = ("owner", "endorsement", "lockout", "platform_policy", "pcr_group_policy")
_LISTS = ("pcr_banks", "pcr_banks_pending", "pcr_partial", "pcr_partial_pending", "audit_commands", "pp_commands")
_MUTABLE = (*_HIERARCHIES, *_LISTS, *KEYED_PARTS, "saved")
_scalars: Any = None  # attrgetter of every other field: one C call reads them all


def _scalar_getter() -> Any:
    """(names, attrgetter) of the scalar fields, ``clock_ms`` first: it changes with every saved
    command, so ``changes`` compares it alone and the others as one tuple."""
    global _scalars
    if _scalars is None:
        names = ["clock_ms", *(name for name in _field_names() if name not in _MUTABLE and name != "clock_ms")]
        _scalars = (tuple(names), operator.attrgetter(*names))
    return _scalars


def _nv_entry(i: NvIndex) -> tuple[Any, ...]:
    return (i.index, i.name_alg, i.attributes, i.auth_policy, i.data_size, i.auth_value, i.data)


_HIERARCHY_FIELDS = ("auth", "policy", "policy_alg")
# Every field of the unkeyed parts in one C call, as live references: the hierarchies' fields (three
# each), the lists, the saved PCRs. A snapshot keeps a deep copy of this tuple; comparing the live
# tuple with it (in C, list by list) is the usual case "nothing changed among them" in one step.
_get_unkeyed = operator.attrgetter(*(f"{h}.{f}" for h in _HIERARCHIES for f in _HIERARCHY_FIELDS), *_LISTS, "saved")
_UNKEYED_OF = (*(h for h in _HIERARCHIES for _ in _HIERARCHY_FIELDS), *_LISTS, "saved")  # each element's part


def _copy_value(value: Any) -> Any:
    """A copy that later in-place changes of ``value`` do not reach (lists, lists of pairs, saved PCRs)."""
    if isinstance(value, list):
        return [list(v) if isinstance(v, list) else v for v in value]
    if isinstance(value, SavedState):
        return SavedState({k: list(v) for k, v in value.pcrs.items()})
    return value  # bytes, int, None: immutable


def _copy_unkeyed(live: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_copy_value(v) for v in live)


def snapshot(state: TpmState) -> dict[str, Any]:
    """A copy of ``state`` to compare a later state with (``changes``): "" the scalars
    (``_scalar_getter``), "~" the unkeyed parts (``_get_unkeyed``, copied), then the keyed collections."""
    return {"": _scalar_getter()[1](state),
            "~": _copy_unkeyed(_get_unkeyed(state)),
            "nv": {k: _nv_entry(i) for k, i in state.nv.items()},
            "persistent": {k: dict(v) for k, v in state.persistent.items()},
            "primary_cache": {k: dict(v) for k, v in state.primary_cache.items()}}


def _unkeyed_after(before: dict[str, Any], state: TpmState) -> tuple[Any, ...]:
    """The "~" of ``snapshot(state)``: ``before``'s own when nothing among the unkeyed parts changed."""
    live, old = _get_unkeyed(state), before.get("~")
    return old if live == old else _copy_unkeyed(live)


def _snapshot_nv(before: dict[str, Any], state: TpmState, nv: Collection[int]) -> dict[str, Any] | None:
    """``snapshot(state)`` when, of the keyed collections, only the fields of the existing NV indices
    ``nv`` changed since ``before`` (what the engine says of NV_Write & co.): the other entries are
    taken from ``before`` instead of copied again. None when an NV index was added or removed."""
    old_nv = before.get("nv")
    indices = state.nv
    if old_nv is None or len(old_nv) != len(indices) or "persistent" not in before:
        return None
    entries = dict(old_nv)
    for key in nv:
        index = indices.get(key)
        if index is None or key not in entries:
            return None
        entries[key] = _nv_entry(index)
    return {"": _scalar_getter()[1](state), "~": _unkeyed_after(before, state), "nv": entries,
            "persistent": before["persistent"], "primary_cache": before["primary_cache"]}


def changes(before: dict[str, Any], state: TpmState,
            nv: Collection[int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What changed in ``state`` since the snapshot ``before``, as ``diff_parts`` writes it, and the
    snapshot of ``state``. ``nv``: the caller knows that, of the keyed collections, only these NV
    indices' fields can have changed (None: anything may have)."""
    after = None if nv is None else _snapshot_nv(before, state, nv)
    if after is None:
        after, nv = snapshot(state), None
    delta: dict[str, Any] = {}
    changed: dict[str, Any] = {}
    new_scalars, old_scalars = after[""], before.get("")
    if new_scalars != old_scalars:
        names = _scalar_getter()[0]
        if old_scalars is None or len(old_scalars) != len(names):
            old_scalars = (object(),) * len(names)
        if new_scalars[0] != old_scalars[0] or type(new_scalars[0]) is not type(old_scalars[0]):
            changed["clock_ms"] = _encode_field("clock_ms", new_scalars[0])
        if new_scalars[1:] != old_scalars[1:]:
            for name, old, new in zip(names[1:], old_scalars[1:], new_scalars[1:]):
                if old != new or type(old) is not type(new):
                    changed[name] = _encode_field(name, new)
    new_parts, old_parts = after["~"], before.get("~")
    if new_parts is not old_parts and new_parts != old_parts:
        if old_parts is None or len(old_parts) != len(_UNKEYED_OF):
            old_parts = (object(),) * len(_UNKEYED_OF)
        for name, old, new in zip(_UNKEYED_OF, old_parts, new_parts):
            if name not in changed and old != new:
                changed[name] = _encode_field(name, getattr(state, name))
    if changed:
        delta["set"] = changed
    for name in KEYED_PARTS:
        old, new = before.get(name) or {}, after[name]
        if old is new or old == new:
            continue
        value = getattr(state, name)
        entries: dict[str, Any] = {}
        for key in (nv if nv is not None and name == "nv" else new):  # hinted: the other entries are the same
            entry = new[key]
            if old.get(key) != entry:
                entries[str(key)] = _nv_index(value[key]) if name == "nv" else _hex(value[key])
        if nv is None:
            entries.update({str(key): None for key in old if key not in new})
        delta[name] = entries
    return delta, after


# One NV index entry of a delta as JSON, byte for byte what the journal's encoder writes for
# ``{str(handle): _nv_index(index)}``: _nv_index's keys in its order, bytes as lowercase hex.
_NV_ENTRY_JSON = (b'"%d":{"index":%d,"name_alg":%d,"attributes":%d,"auth_policy":{"hex":"%b"},"data_size":%d,'
                  b'"auth_value":{"hex":"%b"},"data":{"hex":"%b"}}')
_hexlify = binascii.hexlify


def nv_change_json(before: dict[str, Any], state: TpmState,
                   nv: Collection[int]) -> tuple[bytes, dict[str, Any]] | None:
    """``changes(before, state, nv)`` for NV_Write & co., already encoded and without building the
    delta: the compact JSON of the delta (b"" when nothing changed) and the snapshot of ``state``.
    None when an NV index was added or removed (the caller takes the general path).

    The engine's hint is taken as exact (``Tpm.mark_nv_dirty``: only the clock and fields of the
    existing indices ``nv`` changed; anything else calls ``mark_dirty``), so the other fields are
    not read: reading and comparing them cost two thirds of this function. The snapshot keeps them
    as they were, so a change no handler flagged is still found, by the next full comparison (the
    next record of another command, or the fold), not lost. Byte for byte the JSON of ``changes``'s
    delta when the hint is exact (tested over every NV command)."""
    old_nv, old_scalars, indices = before.get("nv"), before.get(""), state.nv
    if old_nv is None or old_scalars is None or len(old_nv) != len(indices) or "persistent" not in before:
        return None
    entries: dict[int, tuple[Any, ...]] = {}
    for key in nv:
        index = indices.get(key)
        old = old_nv.get(key)
        if index is None or old is None:
            return None
        entry = _nv_entry(index)
        if entry != old:
            entries[key] = entry
    clock, old_clock = state.clock_ms, old_scalars[0]
    clock_changed = clock != old_clock or type(clock) is not type(old_clock)
    if not entries and not clock_changed:
        return b"", before
    after = dict(before)
    if clock_changed:
        after[""] = (clock, *old_scalars[1:])
    if not entries:
        return b'{"set":{"clock_ms":%d}}' % clock, after
    new_nv = dict(old_nv)
    new_nv.update(entries)
    after["nv"] = new_nv
    body = b",".join([_NV_ENTRY_JSON % (key, e[0], e[1], e[2], _hexlify(e[3]), e[4], _hexlify(e[5]), _hexlify(e[6]))
                      for key, e in entries.items()])
    if clock_changed:
        return b'{"set":{"clock_ms":%d},"nv":{%b}}' % (clock, body), after
    return b'{"nv":{%b}}' % body, after


def _parts_to_body(parts: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(parts, dict) or not isinstance(parts.get("nv"), dict):
        raise TypeError("the state parts are not an object with an object of NV indices")
    body = dict(parts)
    body["nv"] = list(parts["nv"].values())
    return body


def dump_parts(parts: dict[str, Any]) -> bytes:
    """The stored document (version 1) of encoded parts."""
    return json.dumps({"format": STATE_FORMAT, "version": STATE_VERSION, "state": _parts_to_body(parts)},
                      sort_keys=True, separators=(",", ":")).encode()


def load_parts(raw: bytes) -> dict[str, Any]:
    """A stored document's parts, not yet checked (``TpmState.from_parts`` checks); StateError when
    it is not a vTPM state of a supported version."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise StateError(f"TPM state is not readable ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise StateError("not a vTPM state")
    if doc.get("version") != STATE_VERSION:
        raise StateError(f"TPM state version {doc.get('version')} is not supported")
    body = doc.get("state")
    if not isinstance(body, dict) or not isinstance(body.get("nv"), list):
        raise StateError("TPM state is damaged (no state object with a list of NV indices)")
    parts = dict(body)
    nv: dict[str, Any] = {}
    for entry in body["nv"]:
        handle = entry.get("index") if isinstance(entry, dict) else None
        if not isinstance(handle, int) or str(handle) in nv:
            raise StateError("TPM state is damaged (an NV index without a distinct handle)")
        nv[str(handle)] = entry
    parts["nv"] = nv
    return parts


def diff_parts(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What changed from ``old`` to ``new``: {"set": {part: value}, KEYED: {key: value or None}}.

    Keyed parts change entry by entry (None = removed); every other part is replaced whole.
    """
    delta: dict[str, Any] = {}
    changed = {name: value for name, value in new.items() if name not in KEYED_PARTS and old.get(name) != value}
    if changed:
        delta["set"] = changed
    for name in KEYED_PARTS:
        before, after = old.get(name, {}), new.get(name, {})
        if before == after:
            continue
        entries = {k: v for k, v in after.items() if before.get(k) != v}
        entries.update({k: None for k in before if k not in after})
        delta[name] = entries
    return delta


def apply_delta(parts: dict[str, Any], delta: Any) -> None:
    """Apply ``diff_parts``'s output to ``parts`` in place; StateError when it is not one."""
    if not isinstance(delta, dict) or not set(delta) <= {"set", *KEYED_PARTS}:
        raise StateError("a state change is not an object of known parts")
    changed = delta.get("set", {})
    if not isinstance(changed, dict) or any(name in KEYED_PARTS or name not in parts for name in changed):
        raise StateError("a state change names an unknown part")
    parts.update(changed)
    for name in KEYED_PARTS:
        entries = delta.get(name, {})
        target = parts.get(name)
        if not isinstance(entries, dict) or not isinstance(target, dict):
            raise StateError(f"a state change of {name} is not an object")
        for key, value in entries.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value


def _unhex(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"hex"}:
            return bytes.fromhex(obj["hex"])
        return {k: _unhex(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unhex(v) for v in obj]
    return obj


def _decode(body: dict[str, Any]) -> TpmState:
    body = _unhex(body)
    if not isinstance(body, dict):
        raise TypeError(f"the state is a {type(body).__name__}, not an object")
    nv = {int(entry["index"]): NvIndex(**entry) for entry in body.pop("nv")}
    saved = body.pop("saved")
    hierarchies = {
        k: Hierarchy(**body.pop(k)) for k in ("owner", "endorsement", "lockout", "platform_policy", "pcr_group_policy")
    }
    persistent = {int(k): v for k, v in body.pop("persistent", {}).items()}
    state = TpmState(**body, **hierarchies, nv=nv, persistent=persistent)
    if saved is not None:
        state.saved = SavedState({int(k): v for k, v in saved["pcrs"].items()})
    _check(state)
    return state


U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
NV_INDEX_MAX_SIZE = 2048
SAVED_PCRS = 16  # Shutdown(STATE) saves PCRs 0-15


def _is_int(value: Any, top: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top


def _is_bytes(value: Any, most: int = 1 << 20) -> bool:
    return isinstance(value, bytes) and len(value) <= most


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _check(state: TpmState) -> None:
    """Every field has the type and range the engine relies on; ValueError names the first that does not.

    A state that loads must run: the engine reads these fields without checking them again.
    """
    for seed in (state.eps, state.sps, state.pps):
        _require(isinstance(seed, bytes) and len(seed) == SEED_SIZE, "seed has the wrong size")
    for proof in (state.eh_proof, state.sh_proof, state.ph_proof):
        _require(isinstance(proof, bytes) and len(proof) == PROOF_SIZE, "proof has the wrong size")
    for name in ("owner", "endorsement", "lockout", "platform_policy", "pcr_group_policy"):
        h = getattr(state, name)
        _require(_is_bytes(h.auth, 64) and _is_bytes(h.policy, 64), f"{name} auth or policy is not a short byte string")
        _require(h.policy_alg == ALG.NULL or h.policy_alg in HASHES, f"{name} policy hash is not a hash algorithm")
    for flag in ("disable_clear", "clock_safe", "last_startup_orderly", "nv_global_locked"):
        _require(isinstance(getattr(state, flag), bool), f"{flag} is not true or false")
    for counter, top in (("clock_ms", U64_MAX), ("reset_count", U32_MAX), ("restart_count", U32_MAX),
                         ("failed_tries", U32_MAX), ("max_tries", U32_MAX), ("recovery_time", U32_MAX),
                         ("lockout_recovery", U32_MAX), ("max_nv_counter", U64_MAX), ("context_counter", U64_MAX),
                         ("total_commands", U64_MAX)):
        _require(_is_int(getattr(state, counter), top), f"{counter} is not a counter")
    _require(state.orderly in ("none", "clear", "state"), "orderly is not none, clear or state")
    allocations = [state.pcr_banks] + ([] if state.pcr_banks_pending is None else [state.pcr_banks_pending])
    for banks in allocations:
        _require(isinstance(banks, list) and all(b in HASHES and not isinstance(b, bool) for b in banks)
                 and len(set(banks)) == len(banks), "PCR banks are not distinct hash algorithms")
    for handle, index in state.nv.items():
        _require(_is_int(handle, U32_MAX) and handle >> 24 == 0x01 and _is_int(index.index, U32_MAX)
                 and index.index == handle,
                 "an NV index handle is not one")
        _require(index.name_alg in HASHES and _is_int(index.attributes, U32_MAX), f"NV index {handle:#x}: nameAlg or attributes")
        _require(_is_int(index.data_size, NV_INDEX_MAX_SIZE) and _is_bytes(index.data, index.data_size),
                 f"NV index {handle:#x}: size or data")
        _require(_is_bytes(index.auth_policy, 64) and _is_bytes(index.auth_value, 64), f"NV index {handle:#x}: auth")
    if state.saved is not None:
        for bank, values in state.saved.pcrs.items():
            _require(bank in HASHES and isinstance(values, list) and len(values) == SAVED_PCRS
                     and all(isinstance(v, bytes) and len(v) == HASHES[bank].size for v in values),
                     "saved PCRs are not 16 digests per bank")
    for handle, entry in state.persistent.items():
        _require(_is_int(handle, U32_MAX) and handle >> 24 == 0x81, "a persistent handle is not one")
        _require(isinstance(entry, dict) and set(entry) == {"public", "sensitive", "hierarchy", "qualified_name"},
                 f"persistent object {handle:#x} lacks a field")
        _require(_is_bytes(entry["public"], 4096) and _is_bytes(entry["sensitive"], 4096)
                 and _is_bytes(entry["qualified_name"], 2 + max(h.size for h in HASHES.values()))
                 and entry["hierarchy"] in (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM),
                 f"persistent object {handle:#x}: a field of the wrong type")
        try:
            parse_exact(TPMT_PUBLIC, entry["public"])
            if entry["sensitive"]:
                parse_exact(TPM2B_SENSITIVE, entry["sensitive"])
        except (cs.ConstructError, TpmError) as exc:
            raise ValueError(f"persistent object {handle:#x} does not parse ({type(exc).__name__})") from None
    for name in ("audit_commands", "pp_commands"):
        codes = getattr(state, name)
        _require(isinstance(codes, list) and all(_is_int(c, U32_MAX) for c in codes), f"{name} is not a list of command codes")
    _require(state.audit_hash_alg in HASHES and not isinstance(state.audit_hash_alg, bool), "audit_hash_alg is not a hash")
    _require(_is_bytes(state.command_audit_digest, 64) and _is_bytes(state.commit_nonce, 64),
             "command_audit_digest or commit_nonce is not a short byte string")
    for counter, top in (("audit_counter", U64_MAX), ("commit_counter", U64_MAX), ("commit_array", (1 << 128) - 1),
                         ("algorithm_set", U32_MAX)):
        _require(_is_int(getattr(state, counter), top), f"{counter} is not a counter")
    allocations = [state.pcr_partial] + ([] if state.pcr_partial_pending is None else [state.pcr_partial_pending])
    for partial in allocations:
        _require(isinstance(partial, list) and all(
            isinstance(p, list) and len(p) == 2 and p[0] in HASHES and not isinstance(p[0], bool) and _is_int(p[1], 0xFFFFFF)
            for p in partial), "partial PCR allocations are not [bank, bitmap] pairs")
    for key, entry in state.primary_cache.items():
        _require(isinstance(entry, dict) and set(entry) == {"n", "p", "seed_value"}
                 and all(_is_bytes(v, 512) for v in entry.values()), f"primary cache entry {key} is damaged")


# ---------------------------------------------------------------------------- volatile


def initial_pcr_value(bank: int, index: int, locality: int = 0) -> bytes:
    """PCRs 17-22 (reset only from locality 4, DRTM) start as all ones; others as zeros."""
    size = digest_size(bank)
    if 17 <= index <= 22:
        return b"\xff" * size
    value = bytearray(size)
    if index == 0:
        value[-1] = locality
    return bytes(value)


@dataclass
class Volatile:
    """State of one power cycle; lost at _TPM_Init unless saved by Shutdown(STATE)."""

    init_time_ms: int
    clock_base_ms: int
    started: bool = False
    pcrs: dict[int, list[bytes]] = field(default_factory=dict)
    pcr_update_counter: int = 0
    platform_auth: bytes = b""
    ph_enable: bool = True
    sh_enable: bool = True
    eh_enable: bool = True
    ph_enable_nv: bool = True
    null_proof: bytes = field(default_factory=lambda: secrets.token_bytes(PROOF_SIZE))
    null_seed: bytes = field(default_factory=lambda: secrets.token_bytes(SEED_SIZE))
    objects: dict[int, Any] = field(default_factory=dict)  # transient handles -> loaded objects/sequences
    sessions: dict[int, Any] = field(default_factory=dict)  # session handles -> AuthSession
    clock_rate: int = 1_000_000  # millionths: ClockRateAdjust moves it
    lockout_auth_failed_ms: int | None = None
    da_last_decrement_ms: int = 0
    nv_read_locked: set[int] = field(default_factory=set)
    nv_write_locked_stclear: set[int] = field(default_factory=set)
    self_tested: set[int] = field(default_factory=set)
    pcr_group_auth: bytes = b""  # authValue of PCRs 20-22, until the next TPM Reset
    persistent_cache: dict[int, Any] = field(default_factory=dict)  # persistent objects, parsed
    saved_sessions: dict[int, int] = field(default_factory=dict)  # session handle -> context sequence
    commands_since_startup: int = 0
    exclusive_audit_session: int | None = None  # the audit session no other session's command came between
    audit_alg_changed: bool = False  # SetCommandCodeAuditStatus changed the audit hash in this command
    physical_presence: bool = False  # the platform's physical presence signal (a vTPM has none asserted)

    @classmethod
    def power_on(cls, state: TpmState, now_ms: int) -> "Volatile":
        """The volatile state after _TPM_Init at ``now_ms``."""
        return cls(init_time_ms=now_ms, clock_base_ms=now_ms)

    def note_command(self, tpm: Any) -> None:
        """Count a command since Startup."""
        self.commands_since_startup += 1

    def reset_pcrs(self, banks: list[int], locality: int = 0) -> None:
        """Every PCR of ``banks`` back to its initial value (PCR 0 starts at the locality, 17-22 as all ones)."""
        self.pcrs = {bank: [initial_pcr_value(bank, i, locality) for i in range(PCR_COUNT)] for bank in banks if bank in HASHES}
