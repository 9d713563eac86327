"""A management home whose hosts the management plane has attested, for the host attestation view's tests.

``attested_home(home)`` makes an inventory with an administrator, a Read-only
user and a user without access, three hosts (``esx-trusted``, ``esx-tampered``,
``esx-notpm``) and, with ``attest=True``, their attestation results.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from vmcrypt.inventory import ROOT
from vmcrypt.management import Management
from vmcrypt.trust.host_attestation import AttestationResults, AttestationStatus, HostAttestation

ADMIN, ADMIN_PASSWORD = "admin", "admin-password-1"
READER, READER_PASSWORD = "reader", "reader-password-1"
NOBODY, NOBODY_PASSWORD = "nobody", "nobody-password-1"
HOSTS = ("esx-trusted", "esx-tampered", "esx-notpm")


def attested_home(home: Path, *, attest: bool = True) -> Path:
    m = Management(home)
    try:
        m.bootstrap(ADMIN, ADMIN_PASSWORD)
        m.inventory.add_user(READER, READER_PASSWORD)
        m.inventory.grant(ROOT, READER, "Read-only")
        m.inventory.add_user(NOBODY, NOBODY_PASSWORD)
        m.inventory.grant(ROOT, NOBODY, "No Access")
        admin = m.login(ADMIN, ADMIN_PASSWORD)
        for host in HOSTS:
            admin.add_host(host)
        admin.providers()  # the embedded default provider exists
        if attest:
            now = datetime.datetime.now(datetime.timezone.utc)
            AttestationResults(home).record([
                HostAttestation("esx-trusted", AttestationStatus.PASSED, (), "8.0.1", now),
                HostAttestation("esx-tampered", AttestationStatus.FAILED,
                                ("component vib:net-tampered: digest does not match",), "8.0.1", now),
                HostAttestation("esx-notpm", AttestationStatus.NOT_APPLICABLE, ("no TPM 2.0",), None, now)])
    finally:
        m.close()
    return home
