"""The host attestation view's records and the report page's helpers, in-process and fast.

Inputs tried for refusal: results files with missing, extra and mistyped fields, a time without a
zone, host names that leave HOME/hosts, `next` targets that leave the site, markup in a reason.
"""

from __future__ import annotations

import datetime
import json
import stat
from pathlib import Path

import pytest
from starlette.requests import Request

from vmcrypt import web
from vmcrypt.trust.host_attestation import (RESULTS_FILE, AttestationResults, AttestationStatus, HostAttestation,
                                            HostAttestationError, HostAttestationSettings, attest_hosts,
                                            host_directory, tpm_attester)

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def test_results_round_trip_and_malformed_files_are_refused(tmp_path: Path) -> None:
    store = AttestationResults(tmp_path)
    failed = HostAttestation("esx-2", AttestationStatus.FAILED, ("VIB 'a': invalid",), "8.0.2", NOW)
    store.record([failed, HostAttestation("esx-1", AttestationStatus.PASSED, (), "8.0.2", NOW)])
    store.record([HostAttestation("esx-1", AttestationStatus.NOT_APPLICABLE, ("no TPM 2.0",), None, NOW)])
    assert store.read()["esx-2"] == failed and store.read()["esx-1"].status is AttestationStatus.NOT_APPLICABLE
    assert stat.S_IMODE((tmp_path / RESULTS_FILE).stat().st_mode) == 0o600
    good = failed.to_dict()
    for bad in ({"hosts": [{**good, "extra": 1}]}, {"hosts": [{k: v for k, v in good.items() if k != "host"}]},
                {"hosts": [{**good, "reasons": "one"}]}, {"hosts": [{**good, "status": "Fine"}]},
                {"hosts": [{**good, "attested_at": "2026-01-02T03:04:05"}]}, {"hosts": {}}, []):
        (tmp_path / RESULTS_FILE).write_text(json.dumps(bad))
        with pytest.raises(HostAttestationError, match="results are unreadable"):
            store.read()


def test_hosts_without_a_tpm_are_na_and_unreached_ones_fail_with_an_alarm(tmp_path: Path) -> None:
    (tmp_path / "hosts" / "esx-off" / "tpm").mkdir(parents=True)
    alarms: list[tuple[str, ...]] = []
    attester = tpm_attester(HostAttestationSettings(), running={})
    results = {r.host: r for r in attest_hosts(tmp_path, ["esx-none", "esx-off", "../escape"], attester,
                                                lambda *entry: alarms.append(entry), user="admin")}
    assert results["esx-none"].status is AttestationStatus.NOT_APPLICABLE
    assert results["esx-off"].status is AttestationStatus.FAILED and "did not answer" in results["esx-off"].reasons[0]
    assert results["../escape"].status is AttestationStatus.FAILED and "not a plain name" in results["../escape"].reasons[0]
    assert [(a[0], a[2], a[3]) for a in alarms] == [("admin", "host esx-off", "alarm"), ("admin", "host ../escape", "alarm")]
    with pytest.raises(HostAttestationError):
        host_directory(tmp_path, "..")


def _request(query: str = "", accept: str = "") -> Request:
    headers = [(b"accept", accept.encode())] if accept else []
    return Request({"type": "http", "method": "GET", "path": "/security-report", "query_string": query.encode(),
                    "headers": headers, "scheme": "https", "server": ("localhost", 443)})


def test_page_helpers_negotiate_escape_and_stay_on_the_site() -> None:
    assert web.wants_json(_request("format=json")) and not web.wants_json(_request("format=html", "application/json"))
    assert web.wants_json(_request(accept="application/json, text/html"))
    assert not web.wants_json(_request(accept="text/html,application/json;q=0.9"))
    assert not web.wants_json(_request())
    for target in ("//evil.example/", "https://evil.example/", "/\\evil", "", None, "relative"):
        assert web.safe_next(target) == "/security-report"
    assert web.safe_next("/security-report?format=json") == "/security-report?format=json"
    page = web.error_page(403, "<script>alert(1)</script>", "<b>user</b>")
    body = page.body.decode()
    assert "<script>" not in body and "&lt;script&gt;" in body and "&lt;b&gt;user&lt;/b&gt;" in body
    nonce = page.headers["content-security-policy"].split("'nonce-")[1].split("'")[0]
    assert f'<style nonce="{nonce}">' in body and page.status_code == 403
    assert web.render("error.html", title="t", message="m").headers["content-security-policy"] != \
        page.headers["content-security-policy"]  # a fresh nonce each time


def test_hostile_names_and_reasons_render_as_text_in_the_report() -> None:
    """Stored XSS: a host name, a reason naming a VIB and a provider's error are what hostile hosts and
    peers control; the page shows them as text, and no element or attribute comes out of them."""
    from html.parser import HTMLParser
    payloads = ['<script>alert(1)</script>', '"><img src=x onerror=alert(2)>', "' onmouseover='alert(3)"]
    report = {"generated_at": "2026-01-01T00:00:00+00:00", "host_summary": {"Failed": 1},
              "hosts": [{"host": p, "status": "Failed", "reasons": [f"VIB {p!r}: vendor signature check at boot: invalid"],
                         "version": p, "attested_at": None} for p in payloads],
              "key_providers": [{"id": p, "name": p, "kind": "kmip", "default": False, "health": "Unhealthy",
                                 "reason": p} for p in payloads]}
    body = web.render("security_report.html", report=report, user=payloads[0]).body.decode()

    class Elements(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []
            self.attributes: list[str] = []
            self.text = ""

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.append(tag)
            self.attributes.extend(name for name, _ in attrs)

        def handle_data(self, data: str) -> None:
            self.text += data
    parsed = Elements()
    parsed.feed(body)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert not [a for a in parsed.attributes if a.startswith("on")]
    assert all(p in parsed.text for p in payloads)  # shown, as text
