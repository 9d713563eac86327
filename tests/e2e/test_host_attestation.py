"""The host attestation view (vSphere 6.7: look, don't enforce) with real hosts: booted into their own
TPM engines, asked for fresh quotes, verified, recorded, alarms in the audit log, nothing else changed.

Inputs tried for refusal or failure: a host booted with a modified VIB, a host whose TPM is not
running, a host without a TPM, an EK whose manufacturer the management plane does not trust, a
settings file with a certificate that is not a CA and with a malformed image manifest, a damaged
results file, a user without Host.Config.Settings.
"""

from __future__ import annotations

import json
from contextlib import closing
import stat
from pathlib import Path

import pytest

from support.files import snapshot
from support.trust import image, manufacturer
from support.trust_view import ADMIN, ADMIN_PASSWORD, READER, READER_PASSWORD, TAMPERED_VIB, attested_home, boot_fleet
from vmcrypt.gate import PermissionDenied
from vmcrypt.management import Management
from vmcrypt.trust.host_attestation import (RESULTS_FILE, SETTINGS_FILE, HostAttestationError,
                                            HostAttestationSettings)

pytestmark = pytest.mark.slow  # boots two hosts (15 signed VIBs each) and attests them: about 10 s


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return attested_home(tmp_path / "home", attest=False)


def _statuses(rows: list[dict]) -> dict[str, tuple[str, list[str]]]:
    return {r["host"]: (r["status"], r["reasons"]) for r in rows}


def test_hosts_are_attested_recorded_and_failures_raise_alarms(home: Path) -> None:
    running = boot_fleet(home)
    with closing(Management(home, create_inventory=False)) as m:
        admin = m.login(ADMIN, ADMIN_PASSWORD)
        vm_before = admin.create_vm(_datastore(admin, home), "vm1")
        rows = admin.attest_hosts(running=running)
        by_host = _statuses(rows)
        assert by_host["esx-trusted"] == ("Passed", [])
        assert by_host["esx-notpm"] == ("N/A", ["no TPM 2.0"])
        status, reasons = by_host["esx-tampered"]
        assert status == "Failed" and any(TAMPERED_VIB in r for r in reasons), reasons
        assert {r["host"]: r["version"] for r in rows}["esx-trusted"] == running["esx-trusted"].version

        # recorded: the view shows the same, the file is 0600
        assert _statuses(admin.host_attestation()) == by_host
        assert stat.S_IMODE((home / RESULTS_FILE).stat().st_mode) == 0o600

        # one alarm, for the failed host only, with its reasons
        alarms = [e for e in admin.audit_log() if e.outcome == "alarm"]
        assert [(a.user, a.action, a.entity) for a in alarms] == [(ADMIN, "host attestation", "host esx-tampered")]
        assert TAMPERED_VIB in alarms[0].detail

        # nothing else happens: the VM powers on and off as before (no host placement is consulted)
        assert admin.power_on("vm1").power_state == "on"
        assert admin.power_off("vm1").power_state == "off"
        assert m.inventory.hosts() == ["esx-notpm", "esx-tampered", "esx-trusted"]
        assert vm_before.name == "vm1"


def test_a_host_that_does_not_answer_fails_and_one_host_does_not_stop_the_others(home: Path) -> None:
    running = boot_fleet(home)
    with closing(Management(home, create_inventory=False)) as m:
        admin = m.login(ADMIN, ADMIN_PASSWORD)
        rows = _statuses(admin.attest_hosts(["esx-tampered", "esx-trusted"], running={"esx-trusted": running["esx-trusted"]}))
        assert rows["esx-trusted"] == ("Passed", [])
        assert rows["esx-tampered"][0] == "Failed" and "did not answer" in rows["esx-tampered"][1][0]
        # a second attestation of one host keeps the other's result
        admin.attest_hosts(["esx-notpm"])
        assert set(_statuses(admin.host_attestation())) == {"esx-trusted", "esx-tampered", "esx-notpm"}
        assert _statuses(admin.host_attestation())["esx-trusted"] == ("Passed", [])


def test_an_untrusted_manufacturer_fails(home: Path) -> None:
    running = boot_fleet(home)
    with closing(Management(home, create_inventory=False)) as m:
        admin = m.login(ADMIN, ADMIN_PASSWORD)
        admin.configure_host_attestation([], [])  # nothing trusted
        rows = _statuses(admin.attest_hosts(["esx-trusted"], running=running))
        status, reasons = rows["esx-trusted"]
        assert status == "Failed" and any("manufacturer" in r.lower() or "EK" in r for r in reasons), reasons


def test_images_when_configured_are_compared(home: Path) -> None:
    running = boot_fleet(home)
    with closing(Management(home, create_inventory=False)) as m:
        admin = m.login(ADMIN, ADMIN_PASSWORD)
        other = image("9.9.9").manifest.to_json()  # a trusted image the hosts did not boot
        described = admin.configure_host_attestation([manufacturer(home).certificate_pem()], [other])
        assert described["images"] == ["9.9.9"]
        rows = _statuses(admin.attest_hosts(["esx-trusted"], running=running))
        assert rows["esx-trusted"][0] == "Failed", rows
        admin.configure_host_attestation([manufacturer(home).certificate_pem()],
                                         [other, image().manifest.to_json()])
        assert _statuses(admin.attest_hosts(["esx-trusted"], running=running))["esx-trusted"] == ("Passed", [])


def test_bad_settings_and_damaged_results_are_refused_and_change_nothing(home: Path) -> None:
    with closing(Management(home, create_inventory=False)) as m:
        admin = m.login(ADMIN, ADMIN_PASSWORD)
        settings_before = (home / SETTINGS_FILE).read_bytes()
        leaf = Path(__file__)  # not a certificate at all
        for cas, images, message in (([leaf.read_bytes()[:200]], [], "manufacturer CA 1 is not a PEM CA certificate"),
                                     ([manufacturer(home).certificate_pem()], ["{}"], "image 1 is not an image manifest")):
            with pytest.raises(HostAttestationError, match=message):
                admin.configure_host_attestation(cas, images)
            assert (home / SETTINGS_FILE).read_bytes() == settings_before
        assert HostAttestationSettings.load(home).manufacturer_cas == (manufacturer(home).certificate_pem(),)

        (home / RESULTS_FILE).write_text(json.dumps({"hosts": [{"host": "x"}]}))
        before = snapshot(home)
        with pytest.raises(HostAttestationError, match="results are unreadable"):
            admin.attest_hosts(["esx-notpm"])
        with pytest.raises(HostAttestationError, match="results are unreadable"):
            admin.host_attestation()
        changed = {k for k in set(before) | set(snapshot(home)) if before.get(k) != snapshot(home).get(k)}
        assert {k for k in changed if not k.startswith("inventory.db")} == set()

        reader = m.login(READER, READER_PASSWORD)
        with pytest.raises(PermissionDenied, match="Host.Config.Settings"):
            reader.attest_hosts()
        with pytest.raises(PermissionDenied, match="Certificates.Manage"):
            reader.configure_host_attestation([], [])


def _datastore(admin, home: Path) -> str:  # noqa: ANN001
    admin.add_datastore("ds1", home.parent / "ds1")
    return "ds1"
