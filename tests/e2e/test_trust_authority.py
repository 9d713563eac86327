"""The Trust Authority end to end: two hosts boot (one trusted, one with a modified VIB), the setup
workflow runs as the operator runs it (`vmcrypt trust ...` processes), the attestation and key
provider services run as a real process (uvicorn, mutual TLS on loopback) in front of a real
pykmip-server, and the management plane powers a VM on a trusted key provider on and refuses the
tampered host, with the VM's files unchanged on every refusal.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.kmip_server import make_pki, start_server
from support.service import start_service
from support.trust import boot_tampered_host, boot_trusted_host, image, manufacturer
from support.trust_services import TrustServices, start_trust_services
from vmcrypt.inventory import Inventory
from vmcrypt.management import Management, UserSession
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.trust.agent import AttestationRefused, HostAgent
from vmcrypt.trust.authority import TrustAuthority
from vmcrypt.trust.collect import HostEvidence
from vmcrypt.trust.pki import load_key
from vmcrypt.trust.token import TokenIssuer
from vmcrypt.trust.workload import NOT_TRUSTED, AuthorityIdentity, agent_dir, cluster_dir

# One Trust Authority, KMIP server, two booted hosts and a workload cluster for the whole module: the
# setup (seven CLI steps, host boots, services) takes 15-30 s here, so every test of it is slow.
pytestmark = pytest.mark.slow
PASSWORD = "a long enough password"
GOOD, BAD = "esx-good", "esx-bad"


def vmcrypt(home: Path, *args: str, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCRYPT_")}
    env["VMCRYPT_PASSWORD"] = PASSWORD
    command = [sys.executable, "-m", "vmcrypt", "--home", str(home), *(["--user", user] if user else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"vmcrypt {' '.join(args)}: {done.returncode} {done.stderr}")
    return done


def tree_digest(directory: Path) -> dict[str, str]:
    """Every file of a VM directory and its SHA-256: equal before and after means nothing changed."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@dataclass
class World:
    root: Path
    workload: Path
    ta_home: Path
    services: TrustServices
    identity: AuthorityIdentity
    good: HostAgent
    bad: HostAgent
    admin: UserSession


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("trust")
    workload, ta_home = root / "workload", root / "ta"
    pki = make_pki(root / "kmip-pki")
    kmip = start_server(root / "kmip", pki)
    good_host = boot_trusted_host(workload, GOOD)
    bad_host = boot_tampered_host(workload, "modified-vib", BAD)
    manifest = root / "image.json"
    manifest.write_text(image().manifest.to_json())
    ca_pem = root / "manufacturer.pem"
    ca_pem.write_bytes(manufacturer(workload).certificate_pem())

    # 1. export host identities (workload cluster)
    vmcrypt(workload, "trust", "export-hosts", "--cluster", "wl", "--out", str(root / "hosts.json"))
    # 2. enable the trust services; a TrustedAdmins member to configure them
    vmcrypt(ta_home, "inventory", "init", "--admin", "ta-admin")
    vmcrypt(ta_home, "trust", "enable", "--name", "ta1")
    vmcrypt(ta_home, "trust", "admin-add", "ta-admin")
    # 3. import host identities and trusted images (and the TPM vendor's CA)
    vmcrypt(ta_home, "trust", "import-hosts", str(root / "hosts.json"), user="ta-admin")
    vmcrypt(ta_home, "trust", "import-image", str(manifest), user="ta-admin")
    vmcrypt(ta_home, "trust", "add-manufacturer-ca", str(ca_pem), user="ta-admin")
    # 4. the KMIP cluster behind the key provider service
    vmcrypt(ta_home, "trust", "set-kmip", "--server", kmip.address, "--ca", str(pki.ca), "--cert",
            str(pki.client_cert), "--key", str(pki.client_key), user="ta-admin")
    services = start_trust_services(ta_home)
    try:
        # 5. export the Trust Authority's identity; 6. import it; 7. the cluster's key provider
        vmcrypt(ta_home, "trust", "export-identity", "--attestation-url", services.attestation_url,
                "--key-provider-url", services.key_provider_url, "--out", str(root / "ta1.json"))
        vmcrypt(workload, "trust", "import-identity", str(root / "ta1.json"))
        vmcrypt(workload, "trust", "add-provider", "trusted-ta1", "--authority", "ta1", "--default")

        identity = AuthorityIdentity.load(workload, "ta1")
        m = Management(workload)
        m.bootstrap("admin", PASSWORD)
        admin = m.login("admin", PASSWORD)
        for name in ("ds1", "ds2"):
            (root / name).mkdir()
            admin.add_datastore(name, root / name)
        for host in (GOOD, BAD):
            m.inventory.add_host(host)
        yield World(root, workload, ta_home, services, identity,
                    HostAgent(workload, GOOD, identity, HostEvidence(good_host), version=good_host.version),
                    HostAgent(workload, BAD, identity, HostEvidence(bad_host), version=bad_host.version), admin)
        for vm in admin.vms():
            if vm.power_state != "off":
                admin.power_off(vm.name)
        m.close()
    finally:
        services.stop()
        kmip.stop()


def test_trusted_host_gets_a_token_and_runs_a_trusted_vm(world: World) -> None:
    token = world.good.attest()
    claims = world.identity.token_verifier().verify(token)
    assert (claims.host, claims.cluster, claims.version) == (GOOD, "wl", world.good.version)
    admin = world.admin
    admin.create_vm("ds1", "vm1")
    admin.encrypt("vm1", host=GOOD)
    admin.add_vtpm("vm1", host=GOOD)
    described = admin.describe("vm1")
    assert described["key_provider"]["kind"] == "trusted"
    health = ProviderRegistry(world.workload).get("trusted-ta1").health()
    assert health["ok"] is True and health["url"] == world.services.key_provider_url
    record = admin.power_on("vm1", host=GOOD)
    env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={record.vtpm_port}"}
    startup = subprocess.run(["tpm2_startup", "-c"], capture_output=True, text=True, env=env, timeout=60)
    assert startup.returncode == 0, startup.stderr
    random = subprocess.run(["tpm2_getrandom", "--hex", "16"], capture_output=True, text=True, env=env, timeout=60)
    assert random.returncode == 0 and len(random.stdout.strip()) == 32, random.stderr
    pcrs = subprocess.run(["tpm2_pcrread", "sha256:0"], capture_output=True, text=True, env=env, timeout=60)
    assert pcrs.returncode == 0 and "0x" in pcrs.stdout, pcrs.stderr
    admin.power_off("vm1")


def test_tampered_host_fails_with_the_component_and_gets_nothing(world: World) -> None:
    with pytest.raises(AttestationRefused) as refused:
        world.bad.attest()
    assert any("VIB" in reason for reason in refused.value.reasons), refused.value.reasons
    assert not (agent_dir(world.workload, BAD) / "token.jwt").exists()
    entries = TrustAuthority(world.ta_home).audit.entries()
    assert any(e["outcome"] == "refused" and e["action"] == "attest" and "VIB" in e["detail"] for e in entries)
    record = world.admin.vm("vm1")  # made by the test before
    directory = Path(record.vmx_path).parent
    before = tree_digest(directory)
    with pytest.raises(Exception) as power:
        world.admin.power_on("vm1", host=BAD)
    assert NOT_TRUSTED in str(power.value) and "VIB" in str(power.value)
    with start_service(world.workload):  # the same through the management service and its command line
        refused = vmcrypt(world.workload, "vm", "power-on", "vm1", "--host", BAD, user="admin", check=False)
    assert refused.returncode == 1 and NOT_TRUSTED in refused.stderr and len(refused.stderr.splitlines()) == 1
    with pytest.raises(Exception) as move:
        world.admin.migrate("vm1", "ds2", host=BAD)
    assert NOT_TRUSTED in str(move.value)
    with pytest.raises(Exception) as clone:
        world.admin.clone("vm1", "vm1-copy", host=BAD)
    assert NOT_TRUSTED in str(clone.value)
    assert tree_digest(directory) == before
    assert world.admin.vm("vm1").power_state == "off"
    assert not (world.root / "ds2" / directory.name).exists() and not (world.root / "ds1" / "vm1-copy").exists()


def test_trusted_vm_clones_migrates_and_resumes_only_on_the_attested_host(world: World) -> None:
    admin = world.admin
    clone = admin.clone("vm1", "vm1-clone", host=GOOD)
    assert clone.key_id != admin.vm("vm1").key_id
    assert admin.describe("vm1-clone")["key_provider"]["kind"] == "trusted"
    moved = admin.migrate("vm1-clone", "ds2", host=GOOD)
    assert moved.datastore == "ds2"
    admin.power_on("vm1-clone", host=GOOD)
    admin.suspend("vm1-clone")
    directory = Path(admin.vm("vm1-clone").vmx_path).parent
    before = tree_digest(directory)
    with pytest.raises(Exception) as resume:
        admin.resume("vm1-clone", host=BAD)
    assert NOT_TRUSTED in str(resume.value)
    assert tree_digest(directory) == before and admin.vm("vm1-clone").power_state == "suspended"
    assert admin.resume("vm1-clone", host=GOOD).power_state == "on"
    admin.power_off("vm1-clone")


def _client(world: World, directory: Path | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(world.identity.ca_path))
    if directory is not None:
        context.load_cert_chain(str(directory / "client.pem"), str(directory / "client-key.pem"))
    return httpx.Client(base_url=world.services.key_provider_url, verify=context, timeout=10)


def test_key_goes_only_to_the_attested_host(world: World) -> None:
    key_id = world.admin.vm("vm1").key_id
    assert key_id is not None
    assert len(world.good.fetch_key(key_id)) == 32
    with _client(world, agent_dir(world.workload, BAD)) as client:  # the tampered host, with no token
        answer = client.post("/keys/release", json={"key_id": key_id})
        assert answer.status_code == 401 and "key" not in answer.json()
        stolen = (agent_dir(world.workload, GOOD) / "token.jwt").read_text()  # the good host's token, replayed
        answer = client.post("/keys/release", json={"key_id": key_id}, headers={"authorization": f"Bearer {stolen}"})
        assert answer.status_code == 403 and "the token is for host 'esx-good'" in str(answer.json()["reasons"])
    with _client(world, cluster_dir(world.workload)) as client:  # the management plane never gets material
        answer = client.post("/keys/release", json={"key_id": key_id},
                             headers={"authorization": f"Bearer {stolen}"})
        assert answer.status_code == 403 and "never to the management plane" in answer.json()["error"]


def test_expired_token_is_refused_by_the_key_provider_service(world: World) -> None:
    ta = TrustAuthority(world.ta_home)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    old = TokenIssuer(load_key(ta.token_key_path), ta.issuer_name, clock=lambda: past).issue(
        host=GOOD, ek_fingerprint="00", version=world.good.version, cluster="wl")
    key_id = world.admin.vm("vm1").key_id
    with _client(world, agent_dir(world.workload, GOOD)) as client:
        answer = client.post("/keys/release", json={"key_id": key_id}, headers={"authorization": f"Bearer {old}"})
    assert answer.status_code == 403 and "expired" in answer.json()["error"]
    assert any(e["outcome"] == "refused" and "expired" in e["detail"] for e in ta.audit.entries())


def test_client_without_a_valid_certificate_cannot_connect(world: World, tmp_path: Path) -> None:
    for url in (world.services.attestation_url, world.services.key_provider_url):
        context = ssl.create_default_context(cafile=str(world.identity.ca_path))
        with pytest.raises(httpx.HTTPError):
            with httpx.Client(base_url=url, verify=context, timeout=10) as client:
                client.get("/health")
    # a certificate from another CA (the KMIP test CA's client) is refused at the handshake too
    pki = make_pki(tmp_path / "other")
    context = ssl.create_default_context(cafile=str(world.identity.ca_path))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    with pytest.raises(httpx.HTTPError):
        with httpx.Client(base_url=world.services.key_provider_url, verify=context, timeout=10) as client:
            client.get("/health")


def test_configuration_by_a_user_outside_trusted_admins_is_refused_and_audited(world: World) -> None:
    with Inventory(world.ta_home) as inventory:
        if "operator" not in inventory.users():
            inventory.add_user("operator", PASSWORD)
    config = (world.ta_home / "trust-authority" / "config.json").read_bytes()
    refused = vmcrypt(world.ta_home, "trust", "import-image", str(world.root / "image.json"), user="operator",
                      check=False)
    assert refused.returncode == 1 and "not a member of TrustedAdmins" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert (world.ta_home / "trust-authority" / "config.json").read_bytes() == config
    audit = vmcrypt(world.ta_home, "trust", "audit", "--json")
    data = json.loads(audit.stdout)
    assert data["intact"] is True
    assert any(e["actor"] == "operator" and e["outcome"] == "denied" for e in data["entries"])


def test_standard_provider_vm_moves_to_an_attested_host_and_keeps_its_provider(world: World) -> None:
    admin = world.admin
    if "native" not in [p.name for p in ProviderRegistry(world.workload).configs()]:
        ProviderRegistry(world.workload).add_native("native")
    admin.create_vm("ds1", "plain")
    admin.encrypt("plain", provider="native")
    before = admin.describe("plain")["key_provider"]
    moved = admin.migrate("plain", "ds2", host=GOOD)
    after = admin.describe("plain")["key_provider"]
    assert moved.datastore == "ds2" and after == before and after["kind"] == "native"


def test_an_untrusted_version_fails_the_next_attestation(world: World) -> None:
    """A TrustedAdmins change takes effect in the running services: the version is no longer trusted."""
    vmcrypt(world.ta_home, "trust", "remove-image", world.good.version, user="ta-admin")
    try:
        with pytest.raises(AttestationRefused) as refused:
            world.good.attest()
        assert any(world.good.version in reason for reason in refused.value.reasons), refused.value.reasons
        assert not (agent_dir(world.workload, GOOD) / "token.jwt").exists()
    finally:
        vmcrypt(world.ta_home, "trust", "import-image", str(world.root / "image.json"), user="ta-admin")
    assert world.good.attest()
