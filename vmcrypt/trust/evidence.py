"""The attestation exchange between a host and the attestation service, as data.

Two rounds, so that the attestation key (AK) is proven to live in the same TPM as the
endorsement key (EK) and every quote is fresh:

1. The host sends its EK certificate and AK public area. The service answers a ``Challenge``:
   a fresh single-use nonce and a credential (TPM2_MakeCredential to the EK, bound to the AK's
   name) wrapping a random secret.
2. The host runs TPM2_ActivateCredential (only the TPM holding both keys can), quotes its PCRs
   over the nonce with the AK, and sends an ``AttestationReport`` carrying the activated secret,
   the quote, the PCR values it claims, the boot event log and the IMA log.

The service answers a ``Verdict`` listing every reason for a refusal. Unsigned fields of the
report (``pcr_values``, ``version``, the logs) are claims: the verifier trusts only what the
AK signed (the TPMS_ATTEST, including its pcrSelect) and what replays to the signed digest.

The JSON form carries bytes as base64 and is what travels over HTTPS; ``from_json`` refuses
unknown, missing or mistyped fields with ``EvidenceError``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from vmcrypt.errors import VmcryptError


class EvidenceError(VmcryptError):
    """A challenge, report or verdict that is not well formed."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(name: str, text: Any) -> bytes:
    if not isinstance(text, str):
        raise EvidenceError(f"{name}: expected base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise EvidenceError(f"{name}: not base64") from exc


def _check_keys(kind: str, data: Any, required: set[str]) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise EvidenceError(f"{kind}: expected a JSON object")
    missing = required - data.keys()
    unknown = data.keys() - required
    if missing or unknown:
        parts = ([f"missing {', '.join(sorted(missing))}"] if missing else []) + (
            [f"unknown {', '.join(sorted(unknown))}"] if unknown else [])
        raise EvidenceError(f"{kind}: {'; '.join(parts)}")
    return data


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise EvidenceError(f"{name}: expected text")
    return value


def _time(name: str, value: Any) -> datetime.datetime:
    try:
        parsed = datetime.datetime.fromisoformat(_text(name, value))
    except ValueError as exc:
        raise EvidenceError(f"{name}: not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise EvidenceError(f"{name}: time without a zone")
    return parsed


def _load(kind: str, text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested past the stack
        raise EvidenceError(f"{kind}: not JSON") from exc


@dataclass(frozen=True)
class Challenge:
    """The service's first answer: a fresh nonce and a credential only the host's TPM can open."""

    nonce: bytes  # 32 random bytes, single use, the quote's qualifyingData
    credential_blob: bytes  # TPM2B_ID_OBJECT from MakeCredential(EK public, AK name, secret)
    encrypted_secret: bytes  # TPM2B_ENCRYPTED_SECRET from the same MakeCredential
    expires: datetime.datetime  # after this the nonce is refused

    def to_json(self) -> str:
        """The challenge as JSON (bytes in base64, ``expires`` in ISO 8601) for the host."""
        return json.dumps({"nonce": _b64(self.nonce), "credential_blob": _b64(self.credential_blob),
                           "encrypted_secret": _b64(self.encrypted_secret), "expires": self.expires.isoformat()})

    @classmethod
    def from_json(cls, text: str | bytes) -> "Challenge":
        """Read a challenge; EvidenceError when it is not a JSON object or a field is missing, unknown or mistyped."""
        data = _check_keys("challenge", _load("challenge", text), {f.name for f in fields(cls)})
        return cls(nonce=_unb64("nonce", data["nonce"]), credential_blob=_unb64("credential_blob", data["credential_blob"]),
                   encrypted_secret=_unb64("encrypted_secret", data["encrypted_secret"]),
                   expires=_time("expires", data["expires"]))


@dataclass(frozen=True)
class AttestationReport:
    """Everything a host offers as proof of what it booted."""

    host: str  # the host's name in the inventory
    version: str  # the ESXi-like version the host says it runs (a claim: checked against the log)
    ek_certificate: bytes  # DER, issued by the TPM manufacturer's CA
    ak_public: bytes  # TPM2B_PUBLIC of the attestation key, as on the wire
    activated_secret: bytes  # ActivateCredential's output for the challenge: AK and EK share a TPM
    nonce: bytes  # the challenge's nonce (must equal the quote's extraData)
    quote: bytes  # TPM2B_ATTEST: a TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE, as signed
    signature: bytes  # TPMT_SIGNATURE over the TPMS_ATTEST by the AK
    # The PCR values the host claims, by bank (TPM_ALG_ID) then PCR index. Unsigned: only the
    # entries the signed pcrSelect names count, and their digest must equal the signed one.
    pcr_values: Mapping[int, Mapping[int, bytes]] = field(default_factory=dict)
    event_log: bytes = b""  # TCG crypto-agile boot event log (binary_bios_measurements)
    ima_log: bytes = b""  # IMA runtime measurement list, ima-ng template

    def to_json(self) -> str:
        """The report as JSON: bytes and logs in base64, PCR values as ``{bank: {index: base64}}``."""
        return json.dumps({
            "host": self.host, "version": self.version, "ek_certificate": _b64(self.ek_certificate),
            "ak_public": _b64(self.ak_public), "activated_secret": _b64(self.activated_secret),
            "nonce": _b64(self.nonce), "quote": _b64(self.quote), "signature": _b64(self.signature),
            "pcr_values": {str(bank): {str(index): _b64(value) for index, value in sorted(values.items())}
                           for bank, values in sorted(self.pcr_values.items())},
            "event_log": _b64(self.event_log), "ima_log": _b64(self.ima_log)})

    @classmethod
    def from_json(cls, text: str | bytes) -> "AttestationReport":
        """Read a report; EvidenceError when it is not a JSON object or a field is missing, unknown or mistyped
        (bytes not base64, a PCR bank or index not an integer). Only the form is checked here: what the report
        proves is the verifier's job."""
        data = _check_keys("report", _load("report", text), {f.name for f in fields(cls)})
        raw_pcrs = data["pcr_values"]
        if not isinstance(raw_pcrs, dict) or not all(isinstance(v, dict) for v in raw_pcrs.values()):
            raise EvidenceError("pcr_values: expected {bank: {index: base64}}")
        try:
            pcrs = {int(bank): {int(index): _unb64(f"pcr_values[{bank}][{index}]", value)
                                for index, value in values.items()}
                    for bank, values in raw_pcrs.items()}
        except ValueError as exc:
            raise EvidenceError("pcr_values: banks and indices must be integers") from exc
        return cls(host=_text("host", data["host"]), version=_text("version", data["version"]),
                   ek_certificate=_unb64("ek_certificate", data["ek_certificate"]),
                   ak_public=_unb64("ak_public", data["ak_public"]),
                   activated_secret=_unb64("activated_secret", data["activated_secret"]),
                   nonce=_unb64("nonce", data["nonce"]), quote=_unb64("quote", data["quote"]),
                   signature=_unb64("signature", data["signature"]), pcr_values=pcrs,
                   event_log=_unb64("event_log", data["event_log"]), ima_log=_unb64("ima_log", data["ima_log"]))


@dataclass(frozen=True)
class Verdict:
    """The attestation service's answer about one host at one time."""

    host: str
    passed: bool
    # Every reason the host failed, each naming what failed (the component, the PCR and bank,
    # the check); empty when passed.
    reasons: tuple[str, ...]
    version: str | None  # the version the replayed log proves, when it proves one
    checked_at: datetime.datetime

    def to_json(self) -> str:
        """The verdict as JSON (``checked_at`` in ISO 8601)."""
        return json.dumps({"host": self.host, "passed": self.passed, "reasons": list(self.reasons),
                           "version": self.version, "checked_at": self.checked_at.isoformat()})

    @classmethod
    def from_json(cls, text: str | bytes) -> "Verdict":
        """Read a verdict; EvidenceError when it is not a JSON object or a field is missing, unknown or mistyped
        (``passed`` not a boolean, ``reasons`` not a list of text, ``checked_at`` not a zoned ISO 8601 time)."""
        data = _check_keys("verdict", _load("verdict", text), {f.name for f in fields(cls)})
        if not isinstance(data["passed"], bool):
            raise EvidenceError("passed: expected true or false")
        reasons = data["reasons"]
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise EvidenceError("reasons: expected a list of text")
        version = data["version"]
        if version is not None and not isinstance(version, str):
            raise EvidenceError("version: expected text or null")
        return cls(host=_text("host", data["host"]), passed=data["passed"], reasons=tuple(reasons),
                   version=version, checked_at=_time("checked_at", data["checked_at"]))
