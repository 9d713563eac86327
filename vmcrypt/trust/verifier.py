"""The attestation verifier: challenge a host, then judge its report against the trust policy.

``challenge`` makes a credential (TPM2_MakeCredential, in software) to the EK of the
certificate, bound to the AK's name, and remembers nonce, secret, EK and AK for one use
until it expires. ``verify`` runs every check and collects every reason, each naming the
check and what failed (the component, the PCR and bank):

1. nonce: known, unexpired, used once, equal to the quote's extraData;
2. EK: the certificate challenged, chaining to a trusted manufacturer CA or on the trusted-EK list;
3. AK: the key challenged, bound to that EK (the activated secret, ``hmac.compare_digest``);
4. quote: a TPM 2.0 TPMS_ATTEST of type quote, signed by the AK;
5. PCRs: numbers and banks taken only from the *signed* pcrSelect, which must cover the
   policy's; the claimed values for exactly that selection hash to the signed pcrDigest;
6. logs: the event log replays to the signed values of PCRs 0-9, the IMA list to PCR 10;
7. image: the version the log proves is trusted, every measured component and VIB
   signature check matches that trusted image, Secure Boot was on.

Later checks run only on what earlier ones proved (the logs are compared with PCR values
only once those values hash to the signed digest). No exception escapes ``verify``:
malformed input becomes a reason.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from certs.validate import EkCertificateError, validate_ek_certificate
from vmcrypt.errors import VmcryptError
from vmcrypt.trust.evidence import AttestationReport, Challenge, Verdict
from vmcrypt.trust.measurements import check_image, read_boot_log, reference_strings
from vmcrypt.trust.policy import NAMES_BY_BANK, ImageIndex, TrustPolicy, ek_fingerprint
from vtpm.constants import ALG
from vtpm.credential import CredentialError, ek_public_from_key, make_credential
from vtpm.eventlog import EventLogError, parse_event_log, replay
from vtpm.ima import (
    IMA_PCR,
    ImaEntry,
    ImaLogError,
    boot_aggregate,
    parse_ima_log,
    replay_ima,
    replay_ima_with_reference,
)
from vtpm.quote import (
    AttestationKey,
    QuoteError,
    parse_public,
    parse_quote,
    parse_signature,
    pcr_digest,
    unwrap_tpm2b,
    verify_signature,
)

CHALLENGE_TTL = datetime.timedelta(seconds=120)
SECRET_SIZE = 32
NONCE_SIZE = 32
MAX_PENDING = 100_000  # outstanding challenges; the oldest are dropped beyond this
MAX_CACHED_EKS = 10_000  # EK verdicts kept; the cache starts over beyond this (a flood of made-up EKs)


class VerifierError(VmcryptError):
    """A challenge cannot be made: the EK certificate or the AK is unusable (the message says which)."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class _Pending:
    secret: bytes
    ek_certificate: bytes
    ak_public: bytes
    ak: AttestationKey
    expires: datetime.datetime


class Verifier:
    """Attestation checks for one trust policy. Challenges may be made and reports verified from
    several threads (the outstanding challenges are kept under a lock)."""

    def __init__(self, policy: TrustPolicy, *, clock: Callable[[], datetime.datetime] = _utcnow,
                 challenge_ttl: datetime.timedelta = CHALLENGE_TTL, cache_ek_chains: bool = True) -> None:
        self._policy = policy
        self.clock = clock
        self.challenge_ttl = challenge_ttl
        self.cache_ek_chains = cache_ek_chains
        self._pending: dict[bytes, _Pending] = {}
        self._lock = threading.Lock()
        # SHA-256 of an EK certificate's DER -> (reason or None, until when that verdict holds)
        self._ek_verdicts: dict[bytes, tuple[str | None, datetime.datetime]] = {}
        # the policy and the reference values of its images' PCR 8 strings (made once per policy)
        self._strings: tuple[TrustPolicy, Mapping[bytes, tuple[bytes, str, bytes]]] | None = None

    @property
    def policy(self) -> TrustPolicy:
        """The trust policy reports are judged by; setting another drops the EK verdicts judged under this one."""
        return self._policy

    @policy.setter
    def policy(self, policy: TrustPolicy) -> None:
        """A new policy: cached EK verdicts were judged under the old one and go."""
        self._policy = policy
        self._ek_verdicts.clear()

    # ------------------------------------------------------------------ round 1

    def challenge(self, ek_certificate: bytes, ak_public: bytes) -> Challenge:
        """A fresh nonce and a credential only the TPM holding this EK and this AK can open."""
        try:
            cert = x509.load_der_x509_certificate(ek_certificate)
            ek_public = ek_public_from_key(cert.public_key())
        except (ValueError, CredentialError, UnsupportedAlgorithm) as exc:
            raise VerifierError(f"EK certificate: {exc}") from None
        try:
            ak = parse_public(ak_public)
        except QuoteError as exc:
            raise VerifierError(f"AK: {exc}") from None
        if not ak.is_attestation_key:
            raise VerifierError(f"AK: not an attestation key ({', '.join(ak.attribute_problems())})")
        secret = secrets.token_bytes(SECRET_SIZE)
        credential_blob, encrypted_secret = make_credential(ek_public, ak.name, secret)
        now = self.clock()
        nonce = secrets.token_bytes(NONCE_SIZE)
        expires = now + self.challenge_ttl
        with self._lock:
            self._prune(now)
            self._pending[nonce] = _Pending(secret, bytes(ek_certificate), bytes(ak_public), ak, expires)
        return Challenge(nonce, credential_blob, encrypted_secret, expires)

    def _prune(self, now: datetime.datetime) -> None:
        if len(self._pending) >= MAX_PENDING:
            for nonce in list(self._pending)[:len(self._pending) - MAX_PENDING + 1]:
                del self._pending[nonce]
        expired = [nonce for nonce, pending in self._pending.items() if pending.expires < now]
        for nonce in expired:
            del self._pending[nonce]

    # ------------------------------------------------------------------ round 2

    def verify(self, report: AttestationReport) -> Verdict:
        """Judge ``report``: passed with no reasons, or failed with every reason found."""
        now = self.clock()
        reasons: list[str] = []
        try:
            version = self._verify(report, now, reasons)
        except Exception as exc:  # a defect, not the host's fault alone: still a verdict, never a crash
            reasons.append(f"internal: the report could not be checked ({type(exc).__name__})")
            version = None
        return Verdict(host=report.host, passed=not reasons, reasons=tuple(reasons), version=version, checked_at=now)

    def _verify(self, report: AttestationReport, now: datetime.datetime, reasons: list[str]) -> str | None:
        policy = self._policy
        with self._lock:
            pending = self._pending.pop(report.nonce, None)  # single use, whatever the outcome
        if pending is None:
            reasons.append("nonce: unknown or already used (a replayed or foreign quote)")
        elif now > pending.expires:
            reasons.append(f"nonce: the challenge expired at {pending.expires.isoformat()}")

        # EK and AK
        if pending is not None and not hmac.compare_digest(pending.ek_certificate, report.ek_certificate):
            reasons.append("EK: the report's EK certificate is not the one challenged")
        ek_reason = self._ek_trust(report.ek_certificate, now)
        if ek_reason:
            reasons.append(ek_reason)
        ak: AttestationKey | None = None
        if pending is not None and hmac.compare_digest(pending.ak_public, report.ak_public):
            ak = pending.ak
            if not hmac.compare_digest(pending.secret, report.activated_secret):
                reasons.append("AK: not bound to the EK (the activated credential secret is wrong)")
        elif pending is not None:
            reasons.append("AK: the report's attestation key is not the one challenged")

        # the quote
        quote = signature = None
        try:
            body = unwrap_tpm2b(report.quote, "quote (TPM2B_ATTEST)")
            quote = parse_quote(body)
        except QuoteError as exc:
            reasons.append(f"quote: {exc}")
        try:
            signature = parse_signature(report.signature)
        except QuoteError as exc:
            reasons.append(f"quote signature: {exc}")
        if quote is not None and not hmac.compare_digest(quote.extra_data, report.nonce):
            reasons.append("nonce: the quote's extraData is not the challenge nonce")
        if quote is not None and signature is not None:
            if ak is None:
                try:
                    ak = parse_public(report.ak_public)
                except QuoteError as exc:
                    reasons.append(f"AK: {exc}")
            if ak is not None:
                try:
                    verify_signature(ak.key, signature, quote.raw)
                except QuoteError as exc:
                    reasons.append(f"quote signature: {exc}")
        if quote is None or signature is None:
            return None

        # PCR values: the signed selection only
        selection = quote.pcr_select
        selected = {bank: set(pcrs) for bank, pcrs in selection}
        for bank in policy.banks:
            missing = [p for p in policy.pcrs if p not in selected.get(bank, ())]
            if missing:
                reasons.append(f"quote: the signed pcrSelect does not cover PCR {', '.join(map(str, missing))} "
                               f"in {NAMES_BY_BANK.get(bank, hex(bank))}")
        proven = self._proven_values(report, quote, signature, reasons)

        # the boot log, replayed and compared with the signed values
        try:
            log = parse_event_log(report.event_log)
        except EventLogError as exc:
            reasons.append(f"event log: {exc}")
            log = None
        banks = tuple(bank for bank, _ in selection)
        boot_pcrs = None
        if log is not None:
            try:
                boot_pcrs = replay(log, banks)
            except EventLogError as exc:
                reasons.append(f"event log: {exc}")
        if proven is not None and boot_pcrs is not None:
            for bank, pcrs in selection:
                for index in pcrs:
                    if index != IMA_PCR and boot_pcrs[bank][index] != proven[bank][index]:
                        reasons.append(f"event log: replay of PCR {index} in {NAMES_BY_BANK[bank]} does not match "
                                       "the signed value")

        # what the boot log says; then the IMA list, against the image it names when that is trusted
        facts = read_boot_log(log.events, self._reference_strings(policy)) if log is not None else None
        image = policy.index.get(facts.version) if facts is not None and facts.version is not None else None
        ima = self._check_ima(report, selection, proven, image, reasons)
        if facts is None:
            return None
        if facts.version is None:
            reasons.append("version: the event log proves no version")
            return None
        if facts.version != report.version:
            reasons.append(f"version: the report claims {report.version} but the event log proves {facts.version}")
        if image is None:
            reasons.append(f"version: {facts.version} is not a trusted version")
            reasons.extend(facts.problems)
            if policy.require_secure_boot and facts.secure_boot is not True:
                reasons.append("Secure Boot: off (the SecureBoot variable measured into PCR 7 is not 1)")
            return facts.version
        aggregate = None
        if boot_pcrs is not None and ALG.SHA256 in boot_pcrs:
            aggregate = boot_aggregate(boot_pcrs[ALG.SHA256], ALG.SHA256)
        reasons.extend(check_image(facts, image, ima, aggregate, policy.require_secure_boot))
        return facts.version

    def _reference_strings(self, policy: TrustPolicy) -> Mapping[bytes, tuple[bytes, str, bytes]]:
        strings = self._strings
        if strings is None or strings[0] is not policy:
            strings = self._strings = (policy, reference_strings(policy.images.values()))
        return strings[1]

    def _check_ima(self, report: AttestationReport, selection, proven, image: ImageIndex | None,  # noqa: ANN001
                   reasons: list[str]) -> tuple[ImaEntry, ...]:
        """Replay the IMA list into the signed PCR 10 banks; the entries the image check still needs.

        With a trusted image and the SHA-256 bank alone (the policy's default), the image's
        reference values (template data -> SHA-256, computed once per policy) spare parsing and
        hashing the entries that are exactly the image's files; only the others come back.
        """
        ima_banks = tuple(bank for bank, pcrs in selection if IMA_PCR in pcrs)
        if image is not None and ima_banks == (ALG.SHA256,):
            try:
                value, unknown, _ = replay_ima_with_reference(report.ima_log, image.ima_reference)
            except ImaLogError as exc:
                reasons.append(f"IMA log: {exc}")
                return ()
            if proven is not None and value != proven[ALG.SHA256][IMA_PCR]:
                reasons.append(f"IMA log: replay of PCR {IMA_PCR} in sha256 does not match the signed value")
            return unknown
        try:
            entries = parse_ima_log(report.ima_log)
        except ImaLogError as exc:
            reasons.append(f"IMA log: {exc}")
            return ()
        if proven is not None and ima_banks:
            try:
                values = replay_ima(entries, ima_banks)
            except ImaLogError as exc:
                reasons.append(f"IMA log: {exc}")
            else:
                for bank in ima_banks:
                    if values[bank] != proven[bank][IMA_PCR]:
                        reasons.append(f"IMA log: replay of PCR {IMA_PCR} in {NAMES_BY_BANK[bank]} does not match "
                                       "the signed value")
        return entries

    def _proven_values(self, report: AttestationReport, quote, signature, reasons: list[str]):  # noqa: ANN001
        """The claimed PCR values of the signed selection, if they hash to the signed pcrDigest."""
        claimed = report.pcr_values
        for bank, pcrs in quote.pcr_select:
            values = claimed.get(bank, {})
            size = hashlib.new(NAMES_BY_BANK[bank]).digest_size
            for index in pcrs:
                value = values.get(index)
                if value is None or len(value) != size:
                    reasons.append(f"PCR values: no {size}-byte value for PCR {index} in {NAMES_BY_BANK[bank]}, "
                                   "which the signed pcrSelect names")
                    return None
        if pcr_digest(signature.hash_alg, quote.pcr_select, claimed) != quote.pcr_digest:
            reasons.append("PCR values: the claimed values of the signed selection do not hash to the signed "
                           "pcrDigest")
            return None
        return claimed

    def _ek_trust(self, ek_certificate: bytes, now: datetime.datetime) -> str | None:
        """None when the EK is trusted, else the reason. Cached per certificate (when enabled) until
        the policy changes or the certificate expires."""
        key = hashlib.sha256(ek_certificate).digest()
        cached = self._ek_verdicts.get(key) if self.cache_ek_chains else None
        if cached is not None and now <= cached[1]:
            return cached[0]
        reason, until = self._judge_ek(ek_certificate, now)
        if self.cache_ek_chains:
            if len(self._ek_verdicts) >= MAX_CACHED_EKS:
                self._ek_verdicts.clear()
            self._ek_verdicts[key] = (reason, until)
        return reason

    def _judge_ek(self, ek_certificate: bytes, now: datetime.datetime) -> tuple[str | None, datetime.datetime]:
        """(None or the reason, until when that holds)."""
        forever = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
        try:
            cert = x509.load_der_x509_certificate(ek_certificate)
            public_key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm):
            return "EK: the certificate is not DER X.509 with a supported key", forever
        try:
            if ek_fingerprint(public_key) in self._policy.trusted_eks:
                return None, forever
            validate_ek_certificate(cert, public_key, self._policy.anchors, now=now)
        except (ValueError, TypeError) as exc:  # cryptography parses extensions lazily
            return f"EK: the certificate cannot be read ({type(exc).__name__}: {exc})", forever
        except EkCertificateError as exc:
            return (f"EK: not issued by a trusted TPM manufacturer CA and not on the trusted-EK list "
                    f"({exc.reason})"), now  # judged again next time: the policy or the time may change
        return None, min([cert.not_valid_after_utc] + [a.not_valid_after_utc for a in self._policy.anchors])
