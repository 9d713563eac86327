"""The attestation exchange's JSON form: round trips, and refuses what is not well formed.

Inputs tried: unknown and missing fields, non-JSON, non-base64 bytes, non-integer PCR banks,
a time without a zone, a non-boolean verdict.
"""

import datetime
import json

import pytest

from vmcrypt.trust.evidence import AttestationReport, Challenge, EvidenceError, Verdict

NOW = datetime.datetime(2026, 12, 2, 10, 0, tzinfo=datetime.timezone.utc)


def _report() -> AttestationReport:
    return AttestationReport(host="esx-1", version="8.0.2", ek_certificate=b"\x30\x82", ak_public=b"\x00\x01",
                             activated_secret=b"s" * 32, nonce=b"n" * 32, quote=b"\xff\x54\x43\x47",
                             signature=b"\x00\x18", pcr_values={0x0B: {0: b"\x00" * 32, 10: b"\x01" * 32}},
                             event_log=b"log", ima_log=b"ima")


def test_round_trips() -> None:
    report = _report()
    assert AttestationReport.from_json(report.to_json()) == report
    challenge = Challenge(nonce=b"n" * 32, credential_blob=b"c", encrypted_secret=b"e", expires=NOW)
    assert Challenge.from_json(challenge.to_json()) == challenge
    verdict = Verdict(host="esx-1", passed=False, reasons=("VIB tools: digest not in image 8.0.2",),
                      version=None, checked_at=NOW)
    assert Verdict.from_json(verdict.to_json()) == verdict


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(extra=1), "unknown extra"),
    (lambda d: d.pop("quote"), "missing quote"),
    (lambda d: d.update(quote="***"), "quote: not base64"),
    (lambda d: d.update(nonce=5), "nonce: expected base64"),
    (lambda d: d.update(pcr_values={"sha256": {}}), "must be integers"),
    (lambda d: d.update(pcr_values=[1]), "pcr_values"),
    (lambda d: d.update(host=None), "host: expected text"),
])
def test_report_refuses_malformed(mutate, message) -> None:
    data = json.loads(_report().to_json())
    mutate(data)
    with pytest.raises(EvidenceError, match=message):
        AttestationReport.from_json(json.dumps(data))


def test_refuses_non_json_and_bad_fields() -> None:
    with pytest.raises(EvidenceError, match="not JSON"):
        AttestationReport.from_json(b"\xff{")
    with pytest.raises(EvidenceError, match="time without a zone"):
        Challenge.from_json(json.dumps({"nonce": "", "credential_blob": "", "encrypted_secret": "",
                                        "expires": "2026-12-02T10:00:00"}))
    with pytest.raises(EvidenceError, match="true or false"):
        Verdict.from_json(json.dumps({"host": "h", "passed": "yes", "reasons": [], "version": None,
                                      "checked_at": NOW.isoformat()}))
