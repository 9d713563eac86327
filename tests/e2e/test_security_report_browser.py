"""The security report in a real headless browser: Debian's chromium driven by Playwright, over HTTPS.

The management service (`vmcrypt server --listen 127.0.0.1:0`) serves a home whose
inventory has three hosts, attested by the management plane: one trusted host
(Passed), one booted with a tampered VIB (Failed, naming the component) and one
without a TPM (N/A). Chromium trusts exactly the service's certificate: its SPKI
hash is pinned with --ignore-certificate-errors-spki-list (no blanket ignoring of
HTTPS errors; a page from any other certificate still fails). The test logs in
through the form like a user, reads the rows and status badges from the DOM,
checks the page loaded nothing from anywhere else, and saves a screenshot.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support.service import start_service
from support.trust_view import ADMIN, ADMIN_PASSWORD, TAMPERED_VIB, attested_home

CHROMIUM = "/usr/bin/chromium"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("chromium") is None,
                                                    reason="Debian chromium is not installed (scripts/bootstrap.sh)")]


def _spki_hash(certificate_pem: bytes) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): the form chromium's SPKI allow-list takes."""
    cert = x509.load_pem_x509_certificate(certificate_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_security_report_renders_in_chromium(tmp_path: Path) -> None:
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    home = attested_home(tmp_path / "home")
    with start_service(home, listen="127.0.0.1:0") as service:
        url = service.https_url()
        assert url is not None
        pin = _spki_hash((home / "service" / "server.pem").read_bytes())
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
                f"--ignore-certificate-errors-spki-list={pin}"])
            try:
                page = browser.new_page()
                requests: list[str] = []
                page.on("request", lambda request: requests.append(request.url))
                page.goto(f"{url}/security-report")
                assert page.url.startswith(f"{url}/login")  # no session: the login form first
                page.fill("#user", ADMIN)
                page.fill("#password", ADMIN_PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(f"{url}/security-report")
                assert page.title().startswith("Security report")

                rows = {row.get_attribute("data-host"): row for row in page.query_selector_all("#hosts tbody tr")}
                assert set(rows) == {"esx-trusted", "esx-tampered", "esx-notpm"}
                badge = {name: row.query_selector(".badge").inner_text() for name, row in rows.items()}
                assert badge == {"esx-trusted": "Passed", "esx-tampered": "Failed", "esx-notpm": "N/A"}
                tampered_reasons = rows["esx-tampered"].query_selector(".reasons").inner_text()
                assert TAMPERED_VIB in tampered_reasons  # the tampered VIB, named
                assert rows["esx-trusted"].query_selector(".reasons").inner_text() == "none"
                assert "no TPM 2.0" in rows["esx-notpm"].query_selector(".reasons").inner_text()
                assert rows["esx-trusted"].query_selector(".version").inner_text() != "unknown"
                assert "UTC" in rows["esx-trusted"].query_selector(".attested-at").inner_text()
                # the badge says it in words and is styled (the inline stylesheet ran under the CSP nonce)
                colour = page.eval_on_selector("tr[data-host=esx-tampered] .badge", "e => getComputedStyle(e).color")
                assert colour not in ("rgb(0, 0, 0)", "")
                providers = page.query_selector_all("#providers tbody tr")
                assert [p.get_attribute("data-health") for p in providers] == ["Healthy"]
                assert "UTC" in page.inner_text("#generated-at")
                assert all(r.startswith(url) for r in requests), f"the page loaded from elsewhere: {requests}"

                shot = tmp_path / "security-report.png"
                page.screenshot(path=str(shot), full_page=True)
                data = shot.read_bytes()
                assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
            finally:
                browser.close()


def test_chromium_refuses_a_certificate_it_was_not_pinned_to(tmp_path: Path) -> None:
    """The pin is exactly the service's key: with another key pinned the page does not load."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    home = attested_home(tmp_path / "home", attest=False)
    with start_service(home, listen="127.0.0.1:0") as service:
        url = service.https_url()
        other = base64.b64encode(hashlib.sha256(b"not the service's key").digest()).decode()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                 args=[f"--ignore-certificate-errors-spki-list={other}"])
            try:
                page = browser.new_page()
                with pytest.raises(Exception, match="ERR_CERT"):
                    page.goto(f"{url}/login")
            finally:
                browser.close()
