"""The verifier against hosts booted into real engines on disk: each refusal with its own reason."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest

from support.trust import attest, boot_tampered_host, boot_trusted_host, image, trusted_policy
from vmcrypt.trust.collect import HostEvidence
from vmcrypt.trust.evidence import AttestationReport
from vmcrypt.trust.host_boot import FOREIGN_DB_KEY, boot_host
from vmcrypt.trust.manufacturer import ManufacturerCA
from vmcrypt.trust.verifier import Verifier, VerifierError
from vtpm.constants import ALG
from vtpm.ek import EkKind
from vtpm.eventlog import parse_event_log


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.timezone.utc)

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def verifier(home: Path) -> Verifier:
    return Verifier(trusted_policy(home))


def _round(verifier: Verifier, host, **changes) -> tuple[AttestationReport, object]:  # noqa: ANN001
    """A report for a fresh challenge with ``changes`` applied before verification."""
    evidence = HostEvidence(host)
    ek, ak = evidence.identity()
    report = evidence.answer(verifier.challenge(ek, ak), host=host.name, version=host.version)
    report = dataclasses.replace(report, **changes)
    return report, verifier.verify(report)


def test_a_trusted_host_passes_with_both_ek_kinds_and_the_version_its_log_proves(home: Path, verifier: Verifier) -> None:
    host = boot_trusted_host(home)
    for kind in (EkKind.RSA2048, EkKind.ECC_P256):
        _, verdict = attest(verifier, host, evidence=HostEvidence(host, kind))
        assert verdict.passed and verdict.reasons == () and verdict.version == "8.0.2", verdict.reasons


def test_a_replayed_quote_is_refused(home: Path, verifier: Verifier) -> None:
    report, first = attest(verifier, boot_trusted_host(home))
    assert first.passed
    again = verifier.verify(report)
    assert not again.passed
    assert again.reasons == ("nonce: unknown or already used (a replayed or foreign quote)",)


def test_an_expired_challenge_is_refused(home: Path) -> None:
    clock = Clock()
    verifier = Verifier(trusted_policy(home), clock=clock, challenge_ttl=datetime.timedelta(seconds=30))
    host = boot_trusted_host(home)
    evidence = HostEvidence(host)
    challenge = verifier.challenge(*evidence.identity())
    report = evidence.answer(challenge, host=host.name, version=host.version)
    clock.now += datetime.timedelta(seconds=31)
    verdict = verifier.verify(report)
    assert verdict.reasons == (f"nonce: the challenge expired at {challenge.expires.isoformat()}",)


def test_an_ek_from_an_untrusted_manufacturer_is_refused_unless_on_the_ek_list(home: Path, verifier: Verifier) -> None:
    other = ManufacturerCA(home / "other-vendor", name="Unknown TPM Vendor Root")
    host = boot_host(home / "hosts" / "esx-foreign", image(), manufacturer=other)
    _, verdict = attest(verifier, host)
    assert len(verdict.reasons) == 1
    assert verdict.reasons[0].startswith("EK: not issued by a trusted TPM manufacturer CA and not on the trusted-EK "
                                         "list (no trusted issuer found for 'O=vmcrypt,CN=Unknown TPM Vendor Root')")
    ek_der = host.ek_certificates[EkKind.RSA2048]
    from cryptography import x509
    verifier.policy = verifier.policy.with_trusted_ek(x509.load_der_x509_certificate(ek_der))
    assert attest(verifier, host)[1].passed


def test_an_ak_not_bound_to_the_ek_is_refused(home: Path, verifier: Verifier) -> None:
    _, verdict = _round(verifier, boot_trusted_host(home), activated_secret=bytes(32))
    assert verdict.reasons == ("AK: not bound to the EK (the activated credential secret is wrong)",)


def test_another_tpms_ak_cannot_answer_for_this_ek(home: Path, verifier: Verifier) -> None:
    """Host B's AK presented with host A's EK: B's TPM cannot open the credential, and B's quote under
    the challenged AK name is refused."""
    host_a, host_b = boot_trusted_host(home, "esx-a"), boot_trusted_host(home, "esx-b")
    evidence_a, evidence_b = HostEvidence(host_a), HostEvidence(host_b)
    challenge = verifier.challenge(evidence_a.identity()[0], evidence_b.ak_public)
    from vmcrypt.trust.collect import CollectionError
    with pytest.raises(CollectionError, match="activating the credential"):
        evidence_b.activate(challenge)
    attest_b, signature_b, values_b = evidence_b.quote(challenge.nonce)
    report = AttestationReport(host="esx-a", version="8.0.2", ek_certificate=evidence_a.identity()[0],
                               ak_public=evidence_b.ak_public, activated_secret=bytes(32), nonce=challenge.nonce,
                               quote=attest_b, signature=signature_b, pcr_values=values_b,
                               event_log=host_b.event_log, ima_log=host_b.ima_log)
    assert verifier.verify(report).reasons == ("AK: not bound to the EK (the activated credential secret is wrong)",)


def test_an_event_log_edited_to_match_a_tampered_pcr_is_refused(home: Path, verifier: Verifier) -> None:
    """The host booted a modified VIB; its log is edited to show the trusted digest. The replay no
    longer gives the signed PCR 9."""
    host = boot_tampered_host(home, "modified-vib")
    log = parse_event_log(host.event_log)
    event = next(e for e in log.events if e.data == b"vib:esx-base")
    trusted = next(c.sha256 for c in image().manifest.components if c.name == "esx-base")
    start = event.offset + 12 + 2 + 20 + 2  # header, sha1 (id + digest), sha256 id
    edited = host.event_log[:start] + trusted + host.event_log[start + 32:]
    _, verdict = _round(verifier, host, event_log=edited)
    assert "event log: replay of PCR 9 in sha256 does not match the signed value" in verdict.reasons
    assert not any("esx-base" in reason and "digest" in reason for reason in verdict.reasons)


def test_a_pcr_value_relabelled_from_10_to_11_is_refused(home: Path, verifier: Verifier) -> None:
    host = boot_trusted_host(home)
    evidence = HostEvidence(host)
    report = evidence.answer(verifier.challenge(*evidence.identity()), host=host.name, version=host.version)
    values = dict(report.pcr_values[ALG.SHA256])
    values[11] = values.pop(10)
    verdict = verifier.verify(dataclasses.replace(report, pcr_values={ALG.SHA256: values}))
    assert verdict.reasons == ("PCR values: no 32-byte value for PCR 10 in sha256, which the signed pcrSelect names",)
    # and with a made-up PCR 10 beside the relabelled one, the signed digest gives it away
    report = evidence.answer(verifier.challenge(*evidence.identity()), host=host.name, version=host.version)
    values = dict(report.pcr_values[ALG.SHA256])
    values[11], values[10] = values[10], bytes(32)
    verdict = verifier.verify(dataclasses.replace(report, pcr_values={ALG.SHA256: values}))
    assert verdict.reasons == ("PCR values: the claimed values of the signed selection do not hash to the signed "
                               "pcrDigest",)


def test_a_quote_with_an_invalid_signature_alone_is_refused(home: Path, verifier: Verifier) -> None:
    host = boot_trusted_host(home)
    evidence = HostEvidence(host)
    report = evidence.answer(verifier.challenge(*evidence.identity()), host=host.name, version=host.version)
    signature = bytearray(report.signature)
    signature[-1] ^= 0x01
    verdict = verifier.verify(dataclasses.replace(report, signature=bytes(signature)))
    assert verdict.reasons == ("quote signature: the signature does not verify with the attestation key",)


@pytest.mark.parametrize("tamper, reasons", [
    ("old-version", ("version: 7.0.3 is not a trusted version",)),
    ("secure-boot-off", ("Secure Boot: off (the SecureBoot variable measured into PCR 7 is not 1)",)),
    ("foreign-db-key", (f"Secure Boot: db trusts {FOREIGN_DB_KEY.hex()[:16]}..., which trusted image 8.0.2 "
                        "does not name",)),
    ("unsigned-vib", ("VIB 'unsigned-community-driver' is not part of trusted image 8.0.2",
                      "VIB 'unsigned-community-driver': vendor signature check at boot: unsigned")),
])
def test_tampered_hosts_are_refused_with_their_reason(home: Path, verifier: Verifier, tamper: str,
                                                      reasons: tuple[str, ...]) -> None:
    _, verdict = attest(verifier, boot_tampered_host(home, tamper))
    assert not verdict.passed and verdict.reasons == reasons


def test_a_modified_vib_is_named(home: Path, verifier: Verifier) -> None:
    _, verdict = attest(verifier, boot_tampered_host(home, "modified-vib"))
    trusted = next(c.sha256 for c in image().manifest.components if c.name == "esx-base")
    assert verdict.version == "8.0.2" and len(verdict.reasons) == 2
    assert verdict.reasons[0].startswith("VIB 'esx-base': measured digest ")
    assert verdict.reasons[0].endswith(f"is not the trusted image 8.0.2's {trusted.hex()[:16]}...")
    assert verdict.reasons[1] == "VIB 'esx-base': vendor signature check at boot: invalid"


def test_a_version_claim_the_log_does_not_prove_is_refused(home: Path, verifier: Verifier) -> None:
    _, verdict = _round(verifier, boot_trusted_host(home), version="8.0.3")
    assert verdict.reasons == ("version: the report claims 8.0.3 but the event log proves 8.0.2",)
    assert verdict.version == "8.0.2"


@pytest.mark.parametrize("field, value, reason", [
    ("quote", b"\x00\x05abcde", "quote: TPMS_ATTEST: truncated at magic (offset 0)"),
    ("quote", b"\x01", "quote: quote (TPM2B_ATTEST): size field does not match the data"),
    ("signature", b"\x00\x14", "quote signature: TPMT_SIGNATURE: truncated at sigAlg (offset 0)"),
    ("event_log", b"garbage" * 10, "event log: the first event is not the EV_NO_ACTION Spec ID event"),
    ("ima_log", b"\x0a\x00\x00\x00" + b"x" * 30, "IMA log: IMA entry 1 (offset 0): template is not ima-ng"),
])
def test_malformed_reports_give_a_clear_reason(home: Path, verifier: Verifier, field: str, value: bytes,
                                              reason: str) -> None:
    _, verdict = _round(verifier, boot_trusted_host(home), **{field: value})
    assert not verdict.passed
    assert any(r.startswith(reason) for r in verdict.reasons), verdict.reasons
    assert not any(r.startswith("internal") for r in verdict.reasons)


def test_a_truncated_quote_of_every_length_never_escapes(home: Path, verifier: Verifier) -> None:
    host = boot_trusted_host(home)
    evidence = HostEvidence(host)
    report = evidence.answer(verifier.challenge(*evidence.identity()), host=host.name, version=host.version)
    for cut in range(0, len(report.quote), 7):
        body = report.quote[2:cut]
        verdict = verifier.verify(dataclasses.replace(report, quote=len(body).to_bytes(2, "big") + body))
        assert not verdict.passed and verdict.reasons
        assert not any(r.startswith("internal") for r in verdict.reasons), verdict.reasons


def test_a_key_that_is_not_an_attestation_key_gets_no_challenge(home: Path, verifier: Verifier) -> None:
    host = boot_trusted_host(home)
    ek, _ = HostEvidence(host).identity()
    from vtpm.ek import ek_template
    ek_public = host.client.create_primary(0x4000000B, ek_template(EkKind.RSA2048).template)[1]
    with pytest.raises(VerifierError, match="AK: not an attestation key \\(sign_encrypt is not set, decrypt is set\\)"):
        verifier.challenge(ek, len(ek_public).to_bytes(2, "big") + ek_public)
    with pytest.raises(VerifierError, match="EK certificate"):
        verifier.challenge(b"not a certificate", HostEvidence(host).ak_public)


def test_the_ek_verdict_cache_goes_with_a_policy_change(home: Path, verifier: Verifier) -> None:
    host = boot_trusted_host(home)
    assert attest(verifier, host)[1].passed  # judged and cached
    assert attest(verifier, host)[1].passed  # from the cache
    from vmcrypt.trust.policy import TrustPolicy
    verifier.policy = TrustPolicy(images=verifier.policy.images)  # no manufacturer trusted any more
    reasons = attest(verifier, host)[1].reasons
    assert len(reasons) == 1 and reasons[0].startswith("EK: not issued by a trusted TPM manufacturer CA")


def test_collection_leaves_no_tpm_object_or_session_behind(home: Path, verifier: Verifier) -> None:
    """Refused activations included: a host agent attests again and again on one TPM."""
    host = boot_trusted_host(home)
    evidence = HostEvidence(host)
    other = HostEvidence(boot_trusted_host(home, "esx-other"))
    from vmcrypt.trust.collect import CollectionError
    for _ in range(5):
        with pytest.raises(CollectionError):
            evidence.activate(verifier.challenge(other.identity()[0], evidence.ak_public))
        assert attest(verifier, host, evidence=evidence)[1].passed


def test_random_damage_to_any_field_is_a_reason_never_a_crash(home: Path, verifier: Verifier) -> None:
    import random

    rng = random.Random(1515)
    host = boot_trusted_host(home)
    evidence = HostEvidence(host)
    report = evidence.answer(verifier.challenge(*evidence.identity()), host=host.name, version=host.version)
    fields = ["quote", "signature", "event_log", "ima_log", "ak_public", "ek_certificate", "activated_secret"]
    for _ in range(300):
        name = rng.choice(fields)
        data = bytearray(getattr(report, name))
        if rng.random() < 0.5 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            del data[rng.randrange(len(data) + 1):]
        verdict = verifier.verify(dataclasses.replace(report, **{name: bytes(data)}))
        assert not verdict.passed
        assert not any(r.startswith("internal") for r in verdict.reasons), (name, verdict.reasons)


def test_a_quote_over_both_banks_replays_both(home: Path, verifier: Verifier) -> None:
    host = boot_trusted_host(home)
    evidence = HostEvidence(host)
    report = evidence.answer(verifier.challenge(*evidence.identity()), host=host.name, version=host.version,
                             banks=(ALG.SHA1, ALG.SHA256))
    assert set(report.pcr_values) == {ALG.SHA1, ALG.SHA256}
    assert verifier.verify(report).passed
    # the SHA-1 bank of PCR 10 checks the IMA list's own (SHA-1) template hashes
    report = evidence.answer(verifier.challenge(*evidence.identity()), host=host.name, version=host.version,
                             banks=(ALG.SHA1, ALG.SHA256))
    ima = bytearray(report.ima_log)
    ima[4] ^= 1
    verdict = verifier.verify(dataclasses.replace(report, ima_log=bytes(ima)))
    assert verdict.reasons == ("IMA log: IMA entry 1 (boot_aggregate): template hash is not the SHA-1 of its "
                               "template data",)


def test_a_modified_runtime_file_is_named(home: Path, verifier: Verifier) -> None:
    trusted = image()
    path = sorted(trusted.runtime_contents)[3]
    changed = dataclasses.replace(trusted, runtime_contents={**trusted.runtime_contents, path: b"patched"})
    host = boot_host(home / "hosts" / "esx-patched", changed)
    _, verdict = attest(verifier, host)
    assert verdict.reasons == (f"IMA: file {path} does not match trusted image 8.0.2",)
