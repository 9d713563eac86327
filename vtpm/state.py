"""What a TPM remembers: persistent state (NV) and the volatile state of one power cycle.

Persistent state is serialized explicitly (versioned JSON, bytes as hex; no
pickle) and leaves the engine through the persistence callback: seeds,
proofs, hierarchy auth and policies, NV indices, clock, dictionary-attack
counters, PCR allocation and, after Shutdown(STATE), the saved PCRs.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from vtpm.constants import ALG, CC, TPMA_NV
from vtpm.crypto import HASHES, digest, digest_size

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
    index: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    data_size: int
    auth_value: bytes = b""
    data: bytes = b""

    def public_bytes(self) -> bytes:
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
        return self.name_alg.to_bytes(2, "big") + digest(self.name_alg, self.public_bytes())

    def has(self, flag: TPMA_NV) -> bool:
        return bool(self.attributes & flag)

    @property
    def kind(self) -> int:
        return (self.attributes >> 4) & 0xF


@dataclass
class Hierarchy:
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
        return json.dumps(_encode(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "TpmState":
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StateError(f"TPM state is not readable ({type(exc).__name__})") from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise StateError("not a vTPM state")
        if doc.get("version") != STATE_VERSION:
            raise StateError(f"TPM state version {doc.get('version')} is not supported")
        try:
            return _decode(doc["state"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"TPM state is damaged ({type(exc).__name__}: {exc})") from None


def _hex_fields(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"hex": obj.hex()}
    if isinstance(obj, dict):
        return {str(k): _hex_fields(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hex_fields(v) for v in obj]
    return obj


def _unhex(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"hex"}:
            return bytes.fromhex(obj["hex"])
        return {k: _unhex(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unhex(v) for v in obj]
    return obj


def _encode(state: TpmState) -> dict[str, Any]:
    body = asdict(state)
    body["nv"] = [asdict(index) for index in state.nv.values()]
    body["saved"] = None if state.saved is None else {"pcrs": {str(k): v for k, v in state.saved.pcrs.items()}}
    body["persistent"] = {str(k): v for k, v in state.persistent.items()}
    return {"format": STATE_FORMAT, "version": STATE_VERSION, "state": _hex_fields(body)}


def _decode(body: dict[str, Any]) -> TpmState:
    body = _unhex(body)
    nv = {int(entry["index"]): NvIndex(**entry) for entry in body.pop("nv")}
    saved = body.pop("saved")
    hierarchies = {
        k: Hierarchy(**body.pop(k)) for k in ("owner", "endorsement", "lockout", "platform_policy", "pcr_group_policy")
    }
    persistent = {int(k): v for k, v in body.pop("persistent", {}).items()}
    state = TpmState(**body, **hierarchies, nv=nv, persistent=persistent)
    if saved is not None:
        state.saved = SavedState({int(k): v for k, v in saved["pcrs"].items()})
    for seed in (state.eps, state.sps, state.pps):
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise ValueError("seed has the wrong size")
    return state


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
        return cls(init_time_ms=now_ms, clock_base_ms=now_ms)

    def note_command(self, tpm: Any) -> None:
        self.commands_since_startup += 1

    def reset_pcrs(self, banks: list[int], locality: int = 0) -> None:
        self.pcrs = {bank: [initial_pcr_value(bank, i, locality) for i in range(PCR_COUNT)] for bank in banks if bank in HASHES}
