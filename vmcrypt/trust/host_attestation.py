"""The host attestation view of the management plane (vSphere 6.7 behaviour: look, do not enforce).

The management plane asks each inventory host with a TPM 2.0 for fresh evidence
(``Verifier.challenge``: a single-use nonce and a MakeCredential to the host's EK
bound to its AK; ``HostEvidence.answer``: ActivateCredential, a quote over the
nonce, the boot event log and the IMA log), verifies it (``Verifier.verify``) and
records per host: Passed, Failed with every reason, or N/A (no TPM 2.0), the time
of the attestation and the version the log proves. A failure is an alarm in the
inventory's audit log and nothing else: power-on, migration and key release do not
look at these results (the Trust Authority's attestation service is what enforces).

The results live in ``HOME/host-attestation.json`` (0600, written atomically: a
crash leaves the previous results whole). What the management plane trusts is
``HostAttestationSettings`` (``HOME/host-attestation-settings.json``): the TPM
manufacturer CAs a host's EK must chain to and, optionally, trusted image
manifests. Without images the 6.7 check is what vCenter 6.7 checked: the EK is
from a trusted TPM manufacturer, the AK lives in that TPM, the quote is signed and
fresh, the event logs replay to the quoted PCRs, Secure Boot is on and every VIB's
signature check measured at boot says valid. With images the measured components,
the files and the version must also match a trusted image.

Hosts are reached in-process when ``tpm_attester`` is given them by name (``BootedHost``), else
over the endpoint of the host's own process (``vmcrypt host run``, ``HOME/hosts/NAME/run/host.sock``);
a host with a TPM that answers neither way fails as not answering.
"""

from __future__ import annotations

import datetime
import enum
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509

from durable.atomic import write_atomic
from vmcrypt.errors import VmcryptError

if TYPE_CHECKING:  # the measured-boot engine is imported when a host is attested, not by every command line
    from vmcrypt.trust.host_boot import BootedHost
    from vmcrypt.trust.images import ImageManifest
    from vmcrypt.trust.policy import TrustPolicy
    from vmcrypt.trust.verifier import Verifier

RESULTS_FILE = "host-attestation.json"
SETTINGS_FILE = "host-attestation-settings.json"
HOSTS_DIR = "hosts"
NO_TPM = "no TPM 2.0"
NOT_ANSWERING = "the host did not answer: it is not running or not connected"
ALARM = "alarm"  # the audit outcome of a failed attestation
SYSTEM_USER = "vmcrypt"  # who attests when no user asked (the management plane itself)


class HostAttestationError(VmcryptError):
    """The attestation results or settings cannot be read, or a host name is unknown."""


class AttestationStatus(str, enum.Enum):
    """A host's attestation outcome as the management plane shows it: Passed, Failed, or N/A (no TPM 2.0)."""

    PASSED = "Passed"
    FAILED = "Failed"
    NOT_APPLICABLE = "N/A"


def _utc(moment: datetime.datetime) -> datetime.datetime:
    return moment.astimezone(datetime.timezone.utc)


@dataclass(frozen=True)
class HostAttestation:
    """The outcome of one host's last attestation."""

    host: str
    status: AttestationStatus
    reasons: tuple[str, ...]  # every reason for Failed; why N/A; empty when Passed
    version: str | None  # the version the replayed log proves (None when nothing proves one)
    attested_at: datetime.datetime

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in the results file (the time in UTC, ISO 8601)."""
        return {"host": self.host, "status": self.status.value, "reasons": list(self.reasons),
                "version": self.version, "attested_at": _utc(self.attested_at).isoformat()}

    @classmethod
    def from_dict(cls, data: Any) -> "HostAttestation":
        """Read the JSON form back; ValueError saying which field is wrong (exactly these keys, a time with its
        zone)."""
        if not isinstance(data, dict) or set(data) != {"host", "status", "reasons", "version", "attested_at"}:
            raise ValueError("a result must have exactly host, status, reasons, version and attested_at")
        reasons, version = data["reasons"], data["version"]
        if not isinstance(data["host"], str) or not data["host"]:
            raise ValueError("'host' must be a non-empty string")
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise ValueError("'reasons' must be a list of strings")
        if version is not None and not isinstance(version, str):
            raise ValueError("'version' must be a string or null")
        if not isinstance(data["attested_at"], str):
            raise ValueError("'attested_at' must be an ISO 8601 time")
        attested_at = datetime.datetime.fromisoformat(data["attested_at"])
        if attested_at.tzinfo is None:
            raise ValueError("'attested_at' has no time zone")
        return cls(data["host"], AttestationStatus(data["status"]), tuple(reasons), version, attested_at)


class AttestationResults:
    """The last attestation of each host, in ``HOME/host-attestation.json``."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.path = Path(home) / RESULTS_FILE

    def read(self) -> dict[str, HostAttestation]:
        """Each host's last result by name (none while there is no file); HostAttestationError when the file is
        unreadable."""
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_bytes())
            if not isinstance(data, dict) or set(data) != {"hosts"} or not isinstance(data["hosts"], list):
                raise ValueError("expected {\"hosts\": [...]}")
            results = [HostAttestation.from_dict(entry) for entry in data["hosts"]]
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise HostAttestationError(f"the host attestation results are unreadable ({reason})", self.path) from None
        return {r.host: r for r in results}

    def record(self, results: Iterable[HostAttestation]) -> None:
        """Replace the results of these hosts, keep the others; one atomic write."""
        merged = self.read()
        merged.update({r.host: r for r in results})
        body = {"hosts": [merged[name].to_dict() for name in sorted(merged)]}
        write_atomic(self.path, json.dumps(body, indent=2).encode(), mode=0o600)


# ----------------------------------------------------------------------------- what the management plane trusts


@dataclass(frozen=True)
class HostAttestationSettings:
    """The management plane's own trust settings for the 6.7 view (not the Trust Authority's policy)."""

    manufacturer_cas: tuple[bytes, ...] = ()  # PEM certificates of trusted TPM manufacturer CAs
    images: tuple[str, ...] = ()  # trusted image manifests in their JSON form; empty: no image check

    @classmethod
    def load(cls, home: str | os.PathLike[str]) -> "HostAttestationSettings":
        """The settings kept in ``home`` (empty ones while there is no file); HostAttestationError when the file is
        malformed."""
        path = Path(home) / SETTINGS_FILE
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_bytes())
            if not isinstance(data, dict) or set(data) != {"manufacturer_cas", "images"}:
                raise ValueError("expected exactly the keys 'manufacturer_cas' and 'images'")
            cas, images = data["manufacturer_cas"], data["images"]
            if not isinstance(cas, list) or not all(isinstance(c, str) for c in cas):
                raise ValueError("'manufacturer_cas' must be a list of PEM strings")
            if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
                raise ValueError("'images' must be a list of image manifests (JSON text)")
        except (ValueError, RecursionError) as exc:
            raise HostAttestationError(f"the host attestation settings are unreadable ({exc})", path) from None
        return cls(tuple(c.encode() for c in cas), tuple(images))

    def describe(self) -> dict[str, Any]:
        """What is trusted, checked: each CA a CA certificate, each image a manifest; else HostAttestationError."""
        subjects = []
        for number, pem in enumerate(self.manufacturer_cas, 1):
            try:
                certificate = x509.load_pem_x509_certificate(pem)
                constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
            except (ValueError, x509.ExtensionNotFound):
                raise HostAttestationError(f"manufacturer CA {number} is not a PEM CA certificate") from None
            if not constraints.ca:
                raise HostAttestationError(f"manufacturer CA {number} ({certificate.subject.rfc4514_string()}) "
                                           "is not a CA certificate")
            subjects.append(certificate.subject.rfc4514_string())
        versions = []
        for number, text in enumerate(self.images, 1):
            try:
                versions.append(parse_image(text).version)
            except VmcryptError as exc:
                raise HostAttestationError(f"image {number} is not an image manifest ({exc})") from None
        return {"manufacturer_cas": subjects, "images": versions}

    def policy(self) -> TrustPolicy:
        """The verifier's policy: these manufacturer CAs and images; Secure Boot required, PCRs 0-10."""
        from vmcrypt.trust.policy import TrustPolicy
        policy = TrustPolicy()
        for pem in self.manufacturer_cas:
            policy = policy.with_manufacturer_ca(x509.load_pem_x509_certificate(pem))
        for text in self.images:
            policy = policy.with_image(parse_image(text))
        return policy

    def verifier(self) -> Verifier:
        """A verifier holding ``policy()``."""
        from vmcrypt.trust.verifier import Verifier
        return Verifier(self.policy())

    def save(self, home: str | os.PathLike[str]) -> None:
        """Write the settings into ``home`` (one atomic write, 0600)."""
        body = {"manufacturer_cas": [c.decode() for c in self.manufacturer_cas], "images": list(self.images)}
        write_atomic(Path(home) / SETTINGS_FILE, json.dumps(body, indent=2).encode(), mode=0o600)


# ----------------------------------------------------------------------------- asking the hosts


class Attester(Protocol):
    """Attests one host directory: a Verdict-like outcome, or None when the host has no TPM 2.0."""

    def __call__(self, name: str, host_dir: Path) -> "Outcome | None": ...


@dataclass(frozen=True)
class Outcome:
    """What attesting one host found: passed or not, every reason, the version the log proves and when it was
    checked."""

    passed: bool
    reasons: tuple[str, ...]
    version: str | None
    checked_at: datetime.datetime


AuditFn = Callable[[str, str, str, str, str], None]


def host_directory(home: str | os.PathLike[str], name: str) -> Path:
    """``HOME/hosts/NAME``; a name that is not one plain directory name is refused."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise HostAttestationError(f"host name {name!r} is not a plain name")
    return Path(home) / HOSTS_DIR / name


def attest_hosts(home: str | os.PathLike[str], names: Iterable[str], attester: Attester, audit: AuditFn, *,
                 user: str = SYSTEM_USER) -> list[HostAttestation]:
    """Attest each named host, record the results and write an alarm to the audit log for each failure.

    A host that does not answer (its TPM state unreadable, its evidence malformed) fails with that
    reason; nothing a host sends stops the others from being attested."""
    results = []
    for name in names:
        try:
            outcome = attester(name, host_directory(home, name))  # inside the try: a bad name fails alone
        except VmcryptError as exc:
            outcome = Outcome(False, (f"the host gave no usable evidence: {exc}",), None, _now())
        if outcome is None:
            result = HostAttestation(name, AttestationStatus.NOT_APPLICABLE, (NO_TPM,), None, _now())
        else:
            status = AttestationStatus.PASSED if outcome.passed else AttestationStatus.FAILED
            result = HostAttestation(name, status, outcome.reasons, outcome.version, outcome.checked_at)
        results.append(result)
    AttestationResults(home).record(results)
    for result in results:  # recorded first: the alarm points at results that exist
        if result.status is AttestationStatus.FAILED:
            audit(user, "host attestation", f"host {result.host}", ALARM,
                  "host attestation failed: " + "; ".join(result.reasons))
    return results


def view(home: str | os.PathLike[str], hosts: Iterable[str]) -> list[dict[str, Any]]:
    """One row per inventory host: its last attestation, or 'not attested yet'."""
    known = AttestationResults(home).read()
    rows = []
    for name in hosts:
        result = known.get(name)
        rows.append(result.to_dict() if result else {"host": name, "status": "Not attested", "reasons": [],
                                                      "version": None, "attested_at": None})
    return rows


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many hosts are in each state (for the report's headline)."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def has_tpm(host_dir: Path) -> bool:
    """A host has a TPM 2.0 when its directory holds the TPM's state (manufactured at its first boot)."""
    from vmcrypt.trust.host_boot import TPM_DIR
    return (host_dir / TPM_DIR).is_dir()


def tpm_attester(settings: HostAttestationSettings, running: Mapping[str, BootedHost]) -> Attester:
    """The attester that asks each running host's TPM for evidence and verifies it under ``settings``.

    ``running``: hosts booted in this process, by name; any other host with a TPM is asked over its
    endpoint (``vmcrypt host run``: ``host_endpoint.RemoteHost``). A host with a TPM whose daemon does
    not run gave no evidence: it fails saying so."""
    from vmcrypt.trust.collect import CollectionError, HostEvidence
    from vmcrypt.trust.host_endpoint import HostDaemonError, HostNotRunning, RemoteHost
    verifier = settings.verifier()

    def attest(name: str, host_dir: Path) -> Outcome | None:
        if not has_tpm(host_dir):
            return None
        booted = running.get(name)
        try:
            if booted is not None:
                evidence: HostEvidence | RemoteHost = HostEvidence(booted)
                version = booted.version
            else:  # a host running as its own process (`vmcrypt host run`), asked over its endpoint
                evidence = RemoteHost(host_dir)
                version = str(evidence.describe().get("version", ""))
            ek_certificate, ak_public = evidence.identity()
            challenge = verifier.challenge(ek_certificate, ak_public)
            report = evidence.answer(challenge, host=name, version=version)
        except HostNotRunning:
            return Outcome(False, (NOT_ANSWERING,), None, _now())
        except (CollectionError, HostDaemonError) as exc:
            raise HostAttestationError(str(exc)) from None
        verdict = verifier.verify(report)
        reasons = verdict.reasons
        if not settings.images:  # 6.7 without images: any version, every VIB signed, the rest as always
            reasons = tuple(r for r in reasons if r != untrusted_version(verdict.version))
            reasons += vib_signature_reasons(report.event_log)
        return Outcome(not reasons, reasons, verdict.version, verdict.checked_at)
    return attest


def vib_signature_reasons(event_log: bytes) -> tuple[str, ...]:
    """Every VIB the boot log loaded whose vendor signature check at boot (measured into PCR 8) was not
    'valid'. Only added to a verdict: if the log does not replay to the signed PCRs, the verifier has
    already failed the host for it, so an edited log cannot make a host pass here."""
    from vmcrypt.trust.images import ComponentKind
    from vmcrypt.trust.measurements import read_boot_log
    from vtpm.eventlog import EventLogError, parse_event_log
    try:
        facts = read_boot_log(parse_event_log(event_log).events)
    except EventLogError:
        return ()  # the verifier has said why the log is unusable
    reasons = []
    for kind, name, _ in facts.measured:
        if kind is not ComponentKind.VIB:
            continue
        checked = facts.signature_checks.get(name)
        if checked is None:
            reasons.append(f"VIB '{name}': no vendor signature check was measured")
        elif checked != "valid":
            reasons.append(f"VIB '{name}': vendor signature check at boot: {checked}")
    return tuple(reasons)


def untrusted_version(version: str | None) -> str:
    """The verifier's reason for a version no trusted image has (dropped when no images are configured)."""
    return f"version: {version} is not a trusted version"


def parse_image(text: str) -> ImageManifest:
    """An image manifest from its JSON text, its VIB signatures checked; ImageError when it is not one."""
    from vmcrypt.trust.images import ImageManifest
    return ImageManifest.from_json(text)
