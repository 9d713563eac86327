"""The security report page and the host attestation commands, through the real service and command line.

The page is fetched over HTTPS from `vmcrypt server --listen` with the service CA
(httpx verifying it). Inputs tried for refusal: no session (HTML: the login form;
JSON: 401), a user with No Access (403 naming System.Read, audited), a wrong
password and a missing CSRF token at the login form, a `next` pointing at another
site, a Read-only user asking for an attestation (Host.Config.Settings), an
unknown host name, the commands without --user.
"""

from __future__ import annotations

import json
import re
import ssl
import stat
from pathlib import Path

import httpx
import pytest

from support.kmip_server import free_port, make_pki
from support.service import start_service
from support.trust_view import (ADMIN, ADMIN_PASSWORD, NOBODY, NOBODY_PASSWORD, READER, READER_PASSWORD,
                                attested_home)
from support.trust import manufacturer
from vmcrypt.management import Management
from vmcrypt.service import service_ca_path

pytestmark = pytest.mark.slow  # a service process and a dozen CLI processes


def _browser_login(client: httpx.Client, user: str, password: str, next_path: str = "/security-report") -> httpx.Response:
    form = client.get("/login", params={"next": next_path})
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    return client.post("/login", data={"user": user, "password": password, "csrf": csrf.group(1), "next": next_path})


def _bearer(client: httpx.Client, user: str, password: str) -> dict[str, str]:
    token = client.post("/session", json={"user": user, "password": password}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def test_the_report_page_over_https(tmp_path: Path) -> None:
    home = attested_home(tmp_path / "home")
    pki = make_pki(tmp_path / "pki")
    m = Management(home, create_inventory=False)
    try:  # a KMIP cluster that is down: its health says why, in one line
        m.keys.registry.add_kmip("down-kms", [f"127.0.0.1:{free_port()}"], pki.ca, pki.client_cert, pki.client_key,
                                 timeout=1.0)
    finally:
        m.close()
    with start_service(home, listen="127.0.0.1:0") as service:
        url = service.https_url()
        assert url is not None
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=service_ca_path(home)), timeout=30) as client:
            # no session: a browser is sent to the login form, a script gets 401
            first = client.get("/security-report")
            assert first.status_code == 303 and first.headers["location"] == "/login?next=%2Fsecurity-report"
            assert client.get("/security-report", params={"format": "json"}).status_code == 401

            # the login form: a wrong password, a missing CSRF token, a next that leaves the site
            assert _browser_login(client, ADMIN, "wrong-password").status_code == 401
            assert client.post("/login", data={"user": ADMIN, "password": ADMIN_PASSWORD}).status_code == 403
            client.cookies.clear()
            away = _browser_login(client, ADMIN, ADMIN_PASSWORD, next_path="//evil.example/")
            assert away.status_code == 303 and away.headers["location"] == "/security-report"
            cookie = away.headers["set-cookie"]
            assert "HttpOnly" in cookie and "Secure" in cookie and "samesite=strict" in cookie.lower()

            page = client.get("/security-report")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            csp = page.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
            nonce = re.search(r"'nonce-([^']+)'", csp)
            assert nonce is not None and f'<style nonce="{nonce.group(1)}">' in page.text
            assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
            assert 'data-host="esx-tampered" data-status="Failed"' in page.text
            assert "VIB &#39;esx-base&#39;: vendor signature check at boot: invalid" in page.text  # autoescaped

            # scripts: ?format=json or Accept: application/json, same data
            as_json = client.get("/security-report", params={"format": "json"}).json()
            accept = client.get("/security-report", headers={"Accept": "application/json"}).json()
            assert {h["host"]: h["status"] for h in as_json["hosts"]} == {
                "esx-trusted": "Passed", "esx-tampered": "Failed", "esx-notpm": "N/A"}
            assert accept["hosts"] == as_json["hosts"]
            providers = {p["name"]: p for p in as_json["key_providers"]}
            assert {(p["name"], p["kind"], p["health"], p["default"]) for p in providers.values()} == {
                ("native", "native", "Healthy", True), ("down-kms", "kmip", "Unhealthy", False)}
            reason = providers["down-kms"]["reason"]
            assert reason and "\n" not in reason and "BEGIN" not in reason  # one line, no key material
            assert 'data-provider="down-kms" data-health="Unhealthy"' in page.text

            # logging out ends the cookie's session
            assert client.post("/logout").status_code == 303
            assert client.get("/security-report").status_code == 303

            # session fixation: a session id planted before login is not accepted, and the login issues its own
            def form_token() -> str:
                found = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
                assert found is not None
                client.cookies.clear()  # the cookies below are set by hand
                return found.group(1)
            planted = "vmcrypt_session=planted-by-attacker"
            client.cookies.clear()
            assert client.get("/security-report", headers={"cookie": planted}).status_code == 303
            csrf = form_token()
            login = {"user": ADMIN, "password": ADMIN_PASSWORD, "next": "/security-report"}
            fresh = client.post("/login", data={**login, "csrf": csrf},
                                headers={"cookie": f"vmcrypt_login_csrf={csrf}; {planted}"})
            assert fresh.status_code == 303 and "vmcrypt_session=" in fresh.headers["set-cookie"]
            assert "planted-by-attacker" not in fresh.headers["set-cookie"]
            # login CSRF: a form token that is not the one of this browser's form cookie is refused
            mine, theirs = form_token(), form_token()
            crossed = client.post("/login", data={**login, "csrf": theirs}, headers={"cookie": f"vmcrypt_login_csrf={mine}"})
            assert crossed.status_code == 403 and "vmcrypt_session=" not in crossed.headers.get("set-cookie", "")
            # the JSON form is served as JSON (a browser does not render it as a page)
            json_answer = client.get("/security-report", params={"format": "json"},
                                     headers=_bearer(client, ADMIN, ADMIN_PASSWORD))
            assert json_answer.headers["content-type"] == "application/json"
            assert json_answer.headers["x-content-type-options"] == "nosniff"  # every answer, API ones too
            assert client.get("/health").headers["x-content-type-options"] == "nosniff"
            assert client.get("/vms").headers["x-content-type-options"] == "nosniff"  # 401 too
            client.cookies.clear()

            # No Access: 403 as a page and as JSON, naming the privilege, audited
            client.cookies.clear()
            assert _browser_login(client, NOBODY, NOBODY_PASSWORD).status_code == 303
            refused = client.get("/security-report")
            assert refused.status_code == 403 and "System.Read" in refused.text
            assert "content-security-policy" in refused.headers
            denied = client.get("/security-report", headers=_bearer(client, NOBODY, NOBODY_PASSWORD),
                                params={"format": "json"})
            assert denied.status_code == 403 and denied.json()["privilege"] == "System.Read"

            # Read-only may read the report but not attest hosts
            reader = _bearer(client, READER, READER_PASSWORD)
            assert client.get("/security-report", headers=reader, params={"format": "json"}).status_code == 200
            attest = client.post("/hosts/attest", headers=reader, json={"hosts": []})
            assert attest.status_code == 403 and attest.json()["privilege"] == "Host.Config.Settings"
            audit = client.get("/audit", headers=_bearer(client, ADMIN, ADMIN_PASSWORD)).json()
            assert [(e["user"], e["action"]) for e in audit if e["outcome"] == "denied"] == [
                (ADMIN, "login"), (NOBODY, "read security report"), (NOBODY, "read security report"),
                (READER, "attest hosts")]  # the wrong password at the form too


ADMIN_ENV = {"VMCRYPT_PASSWORD": ADMIN_PASSWORD}


def test_host_attestation_commands(home: Path, vmcrypt_cli) -> None:
    attested_home(home, attest=False)
    # nothing attested yet: every host is listed as such
    listed = json.loads(vmcrypt_cli("--user", ADMIN, "inventory", "host-attestation", "--json", env=ADMIN_ENV,
                                    check=True).stdout)
    assert {(r["host"], r["status"], r["attested_at"]) for r in listed} == {
        ("esx-trusted", "Not attested", None), ("esx-tampered", "Not attested", None), ("esx-notpm", "Not attested", None)}

    # hosts without a host directory (no TPM) are N/A; --json before or after the command
    result = vmcrypt_cli("--json", "--user", ADMIN, "inventory", "host-attest", "esx-notpm", env=ADMIN_ENV, check=True)
    rows = json.loads(result.stdout)
    assert [(r["host"], r["status"], r["reasons"]) for r in rows] == [("esx-notpm", "N/A", ["no TPM 2.0"])]
    results_file = home / "host-attestation.json"
    assert stat.S_IMODE(results_file.stat().st_mode) == 0o600
    text = vmcrypt_cli("--user", ADMIN, "inventory", "host-attestation", env=ADMIN_ENV, check=True).stdout
    assert re.search(r"^esx-notpm\s+N/A\s+-\s+\d{4}-", text, re.M) and "- no TPM 2.0" in text

    # the service reaches no running host: a host with a TPM fails as not answering, an alarm is raised
    far = json.loads(vmcrypt_cli("--user", ADMIN, "inventory", "host-attest", "esx-trusted", "--json", env=ADMIN_ENV,
                                 check=True).stdout)
    assert far[0]["status"] == "Failed" and "did not answer" in far[0]["reasons"][0]
    audit = json.loads(vmcrypt_cli("--user", ADMIN, "inventory", "audit", "--json", env=ADMIN_ENV, check=True).stdout)
    assert [(e["outcome"], e["entity"]) for e in audit if e["action"] == "host attestation"] == [
        ("alarm", "host esx-trusted")]

    # what the view trusts: a CA certificate is accepted, anything else refused and nothing changed
    ca_file = home.parent / "manufacturer-ca.pem"
    ca_file.write_bytes(manufacturer(home).certificate_pem())
    trusted = vmcrypt_cli("--user", ADMIN, "inventory", "host-attestation-trust", "--manufacturer-ca", str(ca_file),
                          env=ADMIN_ENV, check=True)
    assert "HWTP TPM Manufacturer EK Root CA" in trusted.stdout and "not compared" in trusted.stdout
    settings = (home / "host-attestation-settings.json").read_bytes()
    bad = vmcrypt_cli("--user", ADMIN, "inventory", "host-attestation-trust", "--manufacturer-ca", str(results_file),
                      env=ADMIN_ENV)
    assert bad.returncode == 1 and "manufacturer CA 1 is not a PEM CA certificate" in bad.stderr
    assert (home / "host-attestation-settings.json").read_bytes() == settings

    # an unknown host: refused, nothing recorded
    before = results_file.read_bytes()
    unknown = vmcrypt_cli("--user", ADMIN, "inventory", "host-attest", "esx-nothere", env=ADMIN_ENV)
    assert unknown.returncode == 1 and "no host 'esx-nothere' in the inventory" in unknown.stderr
    assert results_file.read_bytes() == before

    # the inventory commands need --user; a Read-only user may not attest
    local = vmcrypt_cli("inventory", "host-attest")
    assert local.returncode == 1 and "give --user" in local.stderr
    reader = vmcrypt_cli("--user", READER, "inventory", "host-attest", env={"VMCRYPT_PASSWORD": READER_PASSWORD})
    assert reader.returncode == 1 and "missing privilege Host.Config.Settings" in reader.stderr

    report = json.loads(vmcrypt_cli("--user", READER, "inventory", "security-report", "--json",
                                    env={"VMCRYPT_PASSWORD": READER_PASSWORD}, check=True).stdout)
    assert {h["host"]: h["status"] for h in report["hosts"]}["esx-notpm"] == "N/A"
    assert report["key_providers"][0]["health"] == "Healthy"
    for command in ("host-attest", "host-attestation", "host-attestation-trust", "security-report"):
        helped = vmcrypt_cli("inventory", command, "--help", check=True).stdout
        assert "--json" in helped
