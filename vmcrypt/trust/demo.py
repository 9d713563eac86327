"""The Trust Authority part of the README demo: one trusted host, one with a modified VIB, and a key
that goes only to the trusted one.

Everything is real but quick: both hosts boot into their own TPMs, the setup workflow runs through
the same functions the `vmcrypt trust` commands call, and the attestation and key provider services
serve with mutual TLS on loopback from a thread of the demo (a native key store under the Trust
Authority's home stands in for a KMIP cluster, so no key server is needed).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from vmcrypt.errors import VmcryptError
from vmcrypt.management import Management, UserSession
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.trust.agent import AttestationRefused, HostAgent
from vmcrypt.trust.authority import TrustAuthority
from vmcrypt.trust.collect import HostEvidence
from vmcrypt.trust.host_boot import boot_host
from vmcrypt.trust.host_identity import host_ek_certificates
from vmcrypt.trust.images import make_image
from vmcrypt.trust.manufacturer import MANUFACTURER_DIR, ManufacturerCA
from vmcrypt.trust.services import start_in_thread
from vmcrypt.trust.workload import export_host_identities, hosts_dir, import_authority

VERSION = "8.0.2"


def trust_story(home: Path, out: Path, management: Management, session: UserSession, datastore: str,
                say: Callable[[str], object] = print) -> bool:
    """Run the story in the management home of ``management`` (``session``: its administrator) with a new
    VM on ``datastore``; the Trust Authority's home goes under ``out``. True when it went as it should."""
    image = make_image(VERSION)
    good = boot_host(hosts_dir(home) / "esx-01", image)
    bad = boot_host(hosts_dir(home) / "esx-02", image, tamper="modified-vib")
    say(f"  booted esx-01 ({good.version}) and esx-02 ({bad.version}, one VIB modified after signing)")

    ta_home = out / "trust-authority"
    password = secrets.token_urlsafe(16)
    ta = TrustAuthority(ta_home)
    ta.enable("ta1")
    ta.add_admin("ta-admin", password=password)
    admin = ta.admin("ta-admin", password)
    admin.import_hosts(export_host_identities(home, "workload", {
        name: host_ek_certificates(hosts_dir(home) / name) for name in ("esx-01", "esx-02")}))
    admin.add_image(image.manifest.to_json())
    admin.add_manufacturer_ca(ManufacturerCA(home / MANUFACTURER_DIR).certificate_pem())
    admin.use_native_store()
    services = start_in_thread(ta)
    try:
        identity = import_authority(home, ta.identity({"attestation": services.attestation_url,
                                                       "keys": services.key_provider_url}))
        ProviderRegistry(home).add_trusted("trusted-ta1", "ta1")
        say(f"  Trust Authority ta1: attestation {services.attestation_url}, keys {services.key_provider_url} "
            "(mutual TLS); hosts, image and TPM vendor CA imported by a TrustedAdmins member")

        agents = {booted.name: HostAgent(home, booted.name, identity, HostEvidence(booted), version=booted.version)
                  for booted in (good, bad)}
        passed = failed = False
        for name, agent in agents.items():
            try:
                claims = identity.token_verifier().verify(agent.attest())
                say(f"  {name}: attestation passed, version {claims.version}, token until "
                    f"{claims.expires:%H:%M:%S}")
                passed = True
            except AttestationRefused as refusal:
                say(f"  {name}: attestation FAILED: {refusal.reasons[0]}")
                failed = True

        for host in agents:
            management.inventory.add_host(host)
        session.create_vm(datastore, "trusted-vm")
        record = session.encrypt("trusted-vm", provider="trusted-ta1", host="esx-01")
        say(f"  trusted-vm encrypted with the trusted key provider on esx-01 (key {record.key_id})")
        key = agents["esx-01"].fetch_key(record.key_id)
        say(f"  key released to esx-01: {len(key)} bytes")
        refused_key = refused_power = False
        try:
            agents["esx-02"].fetch_key(record.key_id)
        except VmcryptError as exc:
            refused_key = True
            say(f"  key refused to esx-02: {exc}")
        try:
            session.power_on("trusted-vm", host="esx-02")
        except VmcryptError as exc:
            refused_power = True
            say(f"  power on trusted-vm on esx-02 refused: {exc}")
        return passed and failed and refused_key and refused_power
    finally:
        services.stop()
