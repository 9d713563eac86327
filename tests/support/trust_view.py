"""A management home whose hosts the management plane has attested, for the host attestation view's tests.

``attested_home(home)`` makes an inventory with an administrator, a Read-only user
and a user without access, and three hosts: ``esx-trusted`` (booted from the
trusted image), ``esx-tampered`` (booted with its first VIB, ``esx-base``,
modified) and ``esx-notpm`` (no host directory: no TPM). The management plane
trusts the TPM manufacturer's CA. With ``attest=True`` the administrator then
attests every host in-process, through the gate, as the service would.
"""

from __future__ import annotations

from pathlib import Path

from support.trust import boot_tampered_host, boot_trusted_host, manufacturer
from vmcrypt.inventory import ROOT
from vmcrypt.management import Management
from vmcrypt.trust.host_boot import BootedHost
from vmcrypt.trust.images import Tamper

ADMIN, ADMIN_PASSWORD = "admin", "admin-password-1"
READER, READER_PASSWORD = "reader", "reader-password-1"
NOBODY, NOBODY_PASSWORD = "nobody", "nobody-password-1"
HOSTS = ("esx-trusted", "esx-tampered", "esx-notpm")
TAMPERED_VIB = "esx-base"


def boot_fleet(home: Path) -> dict[str, BootedHost]:
    """The two hosts with a TPM, booted (the TPM manufacturer's CA made on first need)."""
    return {"esx-trusted": boot_trusted_host(home, "esx-trusted"),
            "esx-tampered": boot_tampered_host(home, Tamper.MODIFIED_VIB, "esx-tampered")}


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
        running = boot_fleet(home)
        admin.configure_host_attestation([manufacturer(home).certificate_pem()], [])
        if attest:
            admin.attest_hosts(running=running)
    finally:
        m.close()
    return home
