"""The management plane's operations on key providers, the CA and the inventory itself.

Two halves: functions that do the work on a home's key manager and CA (the
local administrator's command line calls them directly), and
``AdminOperations``, the part of a logged-in ``UserSession`` that runs each of
them through the gate with its ``Operation``. Secrets never leave as such: a key
export is the passphrase-encrypted backup, a provider test destroys its probe key.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives import serialization

from certs.ca import CaError, CertificateAuthority
from vmcrypt.errors import KeyProviderError, VmcryptError
from vmcrypt.gate import INVENTORY_ROOT, Target
from vmcrypt.inventory import ROOT, AuditEntry, Inventory, InventoryError
from vmcrypt.keys import KeyManager
from vmcrypt.providers.base import KeyProvider
from vmcrypt.providers.native import NativeKeyProvider
from vmcrypt.rbac import Operation, Privilege
from vmcrypt.security_report import security_report
from vmcrypt.trust import host_attestation
from vmcrypt.vm import VmHome
from vmcrypt.vtpm_provision import ProvisionedEk, reissue_ek_certificates, verify_ek_certificates

if TYPE_CHECKING:
    from collections.abc import Mapping

    from vmcrypt.trust.host_boot import BootedHost
    from vmcrypt.inventory import VmRecord
    from vmcrypt.management import Management

T = TypeVar("T")


# ----------------------------------------------------------------------------- the work, on a home's files


def provider_rows(keys: KeyManager) -> list[dict[str, Any]]:
    """Every configured key provider as a row (id, name, kind, whether it is the default); the embedded default provider
    is created on first use."""
    keys.registry.default()  # the embedded default exists from first use
    default_id = keys.registry.default_id()
    return [{"id": c.provider_id, "name": c.name, "kind": c.kind, "default": c.provider_id == default_id}
            for c in keys.registry.configs()]


def key_rows(provider: KeyProvider) -> list[dict[str, Any]]:
    """The keys of ``provider`` as rows (key id, creation time, state): identifiers only, never key material."""
    return [{"key_id": k.key_id, "created": k.created, "state": k.state.value} for k in provider.list_keys()]


def provider_row(provider: KeyProvider) -> dict[str, Any]:
    """One key provider as a row (id, name, kind)."""
    return {"id": provider.provider_id, "name": provider.name, "kind": provider.kind}


def probe_provider(provider: KeyProvider) -> dict[str, Any]:
    """Create, fetch and destroy a probe key: proves the provider works end to end."""
    started = time.perf_counter()
    key_id = provider.create_key()
    try:
        if len(provider.get_key(key_id)) != 32:
            raise KeyProviderError(f"key provider {provider.name!r} returned a key of the wrong size")
    finally:
        provider.destroy_key(key_id)
    elapsed_ms = (time.perf_counter() - started) * 1000
    trips = getattr(provider, "round_trips", None)
    return {"name": provider.name, "kind": provider.kind, "ok": True, "server": getattr(provider, "last_server", None),
            "round_trips": trips, "elapsed_ms": round(elapsed_ms, 1),
            "ms_per_round_trip": round(elapsed_ms / trips, 2) if trips else None}


def native_provider(keys: KeyManager, name: str | None) -> NativeKeyProvider:
    """The key provider ``name`` (the default for None) if it is a native one; KeyProviderError if it is of another
    kind."""
    provider = keys.provider(name)
    if not isinstance(provider, NativeKeyProvider):
        raise KeyProviderError(f"key provider {provider.name!r} is not a native key provider")
    return provider


def ek_rows(eks: list[ProvisionedEk]) -> list[dict[str, Any]]:
    """The EK certificates provisioned into a vTPM as rows (EK kind, NV index, serial, issuer)."""
    return [{"ek": e.kind.value, "nv_index": f"0x{e.nv_index:08x}", "serial": f"{e.certificate.serial_number:x}",
             "issuer": e.certificate.issuer.rfc4514_string()} for e in eks]


def verify_eks(ca: CertificateAuthority, keys: KeyManager, vm: VmHome) -> list[dict[str, Any]]:
    """Check each EK certificate in the VM's vTPM against its EK and this CA's chain and CRL; one row per EK."""
    chain = ca.chain()
    return verify_ek_certificates(vm, keys, [chain[-1]], chain[:-1], [ca.crl()])


def reissue_eks(ca: CertificateAuthority, keys: KeyManager, paths: list[str], every: bool) -> dict[str, list[dict]]:
    """New EK certificates for the VMs at ``paths``, or (``every``) every VM this CA certified; with ``every``
    a VM that fails is skipped, saying why."""
    if bool(paths) == bool(every):
        raise VmcryptError("name the VMs or give --all (not both)")
    rows: list[dict] = []
    skipped: list[dict] = []
    for path in paths or ca.certified_vms():
        if every and not Path(path).exists():
            skipped.append({"vm": path, "reason": "no longer there"})
            continue
        try:
            vm = VmHome(path)
            rows += [{"vm": vm.name, **r} for r in ek_rows(reissue_ek_certificates(vm, keys, ca))]
        except (VmcryptError, CaError) as exc:
            if not every:
                raise
            skipped.append({"vm": path, "reason": str(exc)})
    return {"reissued": rows, "skipped": skipped}


def pem(*items: Any) -> bytes:
    """Certificates, a CRL: PEM, one after the other."""
    return b"".join(item.public_bytes(serialization.Encoding.PEM) for item in items)


def root_pem(ca: CertificateAuthority, chain: bool) -> bytes:
    """The CA's root certificate, or its whole chain, as PEM."""
    return pem(*(ca.chain() if chain else [ca.root()]))


def import_ca(ca: CertificateAuthority, certificate: bytes, key: bytes | None, password: bytes | None) -> dict:
    """Replace the CA's certificate and key by imported ones (a PEM chain and key, or a PKCS#12 bundle when ``key`` is
    None; ``password`` decrypts the key); CaError when they do not fit. Returns the CA's new description."""
    ca.import_files(certificate, key, password)
    return ca.describe()


def import_signed_ca(ca: CertificateAuthority, chain: bytes) -> dict:
    """Finish a CSR: install the certificate (and chain) an outside CA signed for the pending key; CaError when it does
    not match. Returns the CA's new description."""
    ca.import_signed(chain)
    return ca.describe()


def revoke(ca: CertificateAuthority, serial: str) -> dict:
    """Revoke the certificate with hexadecimal serial ``serial``; CaError when it is not hexadecimal or this CA never
    issued it."""
    try:
        number = int(serial, 16)
    except ValueError:
        raise CaError(f"serial {serial!r} is not a hexadecimal number") from None
    ca.revoke(number)
    return {"revoked": serial}


def scratch_file(home: Path) -> Path:
    """A new private file name under the home's run directory, for blobs on their way in or out."""
    run_dir = home / "run" / "scratch"
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return run_dir / secrets.token_hex(12)


# ----------------------------------------------------------------------------- through the gate


class AdminOperations:
    """Key providers, CA and inventory operations of a logged-in user (mixed into ``UserSession``)."""

    m: "Management"
    user: str
    inventory: Inventory

    def run(self, operation: Operation, target: Target, act: Callable[[], T],
            detail: str | Callable[[], str] = "") -> T:
        """Run ``act`` if the user holds ``operation``'s privileges on ``target``; audited either way (UserSession implements it)."""
        raise NotImplementedError

    def _on_vm(self, operation: Operation, name: str, act: Callable[..., T], detail: str = "") -> T:
        raise NotImplementedError

    def vm_at(self, path: str | os.PathLike[str]) -> "VmRecord":
        """The inventory VM whose .vmx is ``path`` (UserSession implements it)."""
        raise NotImplementedError

    def scratch_path(self) -> Path:
        """A fresh temporary file name under the management home (for key exports and imports)."""
        return scratch_file(self.m.home)

    # ------------------------------------------------------------------ key providers

    def providers(self) -> list[dict[str, Any]]:
        """The key providers of the home: one row each (id, name, kind, default)."""
        return self.run(Operation.LIST_PROVIDERS, INVENTORY_ROOT, lambda: provider_rows(self.m.keys))

    def provider_keys(self, provider: str | None = None) -> list[dict[str, Any]]:
        """The keys of ``provider`` (name or id; default: the default provider), without their material."""
        return self.run(Operation.LIST_KEYS, INVENTORY_ROOT, lambda: key_rows(self.m.keys.provider(provider)),
                        detail=provider or "default")

    def add_native_provider(self, name: str, *, default: bool = False) -> dict[str, Any]:
        """Add a native key provider (keys in the home's key store); ``default`` makes it the default."""
        return self.run(Operation.ADD_NATIVE_PROVIDER, INVENTORY_ROOT, lambda: provider_row(
            self.m.keys.registry.add_native(name, make_default=default)), detail=name)

    def add_kmip_provider(self, name: str, servers: list[str], ca: bytes, cert: bytes, key: bytes, *,
                          timeout: float = 2.0, cache_seconds: float = 300, default: bool = False,
                          provider_id: str | None = None) -> dict[str, Any]:
        """A KMIP cluster; its CA, client certificate and key (PEM contents) are kept under the home, 0600."""
        def act() -> dict[str, Any]:
            directory = self.m.home / "kmip" / secrets.token_hex(8)
            directory.mkdir(mode=0o700, parents=True)
            try:
                paths = []
                for file_name, data in (("ca.pem", ca), ("cert.pem", cert), ("key.pem", key)):
                    path = directory / file_name
                    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                        handle.write(data)
                    paths.append(path)
                provider = self.m.keys.registry.add_kmip(name, servers, *paths, timeout=timeout,
                                                         cache_seconds=cache_seconds, make_default=default,
                                                         provider_id=provider_id)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
            return {**provider_row(provider), "servers": list(servers)}
        return self.run(Operation.ADD_KMIP_PROVIDER, INVENTORY_ROOT, act, detail=f"{name}: {', '.join(servers)}")

    def export_keys(self, passphrase: bytes, provider: str | None = None) -> tuple[bytes, dict[str, Any]]:
        """The native store's active keys as a backup encrypted under ``passphrase``; how many, from which store."""
        def act() -> tuple[bytes, dict[str, Any]]:
            native = native_provider(self.m.keys, provider)
            scratch = self.scratch_path()
            try:
                count = native.export_backup(scratch, passphrase)
                return scratch.read_bytes(), {"keys": count, "provider": native.name}
            finally:
                scratch.unlink(missing_ok=True)
        return self.run(Operation.EXPORT_KEYS, INVENTORY_ROOT, act, detail=provider or "default")

    def import_keys(self, backup: bytes, passphrase: bytes, provider: str | None = None) -> dict[str, Any]:
        """Load a key backup made by ``export_keys`` into the native store; how many keys were added."""
        def act() -> dict[str, Any]:
            native = native_provider(self.m.keys, provider)
            scratch = self.scratch_path()
            try:
                with open(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                    handle.write(backup)
                return {"added": native.import_backup(scratch, passphrase), "provider": native.name}
            finally:
                scratch.unlink(missing_ok=True)
        return self.run(Operation.IMPORT_KEYS, INVENTORY_ROOT, act, detail=provider or "default")

    def test_provider(self, name: str) -> dict[str, Any]:
        """Create, fetch and destroy a probe key on the named provider; the result and timings."""
        return self.run(Operation.TEST_PROVIDER, INVENTORY_ROOT, lambda: probe_provider(self.m.keys.registry.get(name)),
                        detail=name)

    def set_default_provider(self, name: str) -> dict[str, Any]:
        """Make the named provider the one new encryptions use."""
        return self.run(Operation.SET_DEFAULT_PROVIDER, INVENTORY_ROOT,
                        lambda: provider_row(self.m.keys.registry.set_default(name)), detail=name)

    # ------------------------------------------------------------------ the CA

    def ca_show(self) -> dict[str, Any]:
        """The EK certificate authority: subject, validity, serial counters."""
        return self.run(Operation.CA_SHOW, INVENTORY_ROOT, self.m.ca.describe)

    def ca_export_root(self, chain: bool = False) -> bytes:
        """The CA certificate as PEM; ``chain``: with its issuers."""
        return self.run(Operation.CA_EXPORT_ROOT, INVENTORY_ROOT, lambda: root_pem(self.m.ca, chain))

    def ca_crl(self) -> bytes:
        """The CA's current certificate revocation list as PEM."""
        return self.run(Operation.CA_CRL, INVENTORY_ROOT, lambda: pem(self.m.ca.crl()))

    def ca_verify_ek(self, name: str) -> list[dict[str, Any]]:
        """Check the named VM's EK certificates against its vTPM and the CA; one row per EK."""
        return self._on_vm(Operation.CA_VERIFY_EK, name, lambda record, vm: verify_eks(self.m.ca, self.m.keys, vm))

    def ca_reissue_ek(self, names: list[str], every: bool = False) -> dict[str, list[dict]]:
        """New EK certificates for the named inventory VMs, or (``every``) every VM this CA certified."""
        def act() -> dict[str, list[dict]]:
            paths = [self.inventory.vm(name).vmx_path for name in names]
            return reissue_eks(self.m.ca, self.m.keys, paths, every)
        return self.run(Operation.CA_REISSUE_EK, INVENTORY_ROOT, act, detail="all" if every else ", ".join(names))

    def ca_import(self, certificate: bytes, key: bytes | None, password: bytes | None) -> dict[str, Any]:
        """Replace the CA with an existing certificate and key (``password``: the key's PEM password)."""
        return self.run(Operation.CA_IMPORT, INVENTORY_ROOT, lambda: import_ca(self.m.ca, certificate, key, password))

    def ca_csr(self, common_name: str) -> bytes:
        """A certificate signing request for a CA to be signed by an enterprise root."""
        return self.run(Operation.CA_CSR, INVENTORY_ROOT, lambda: self.m.ca.create_csr(common_name), detail=common_name)

    def ca_import_signed(self, chain: bytes) -> dict[str, Any]:
        """Install the signed chain answering ``ca_csr``."""
        return self.run(Operation.CA_IMPORT_SIGNED, INVENTORY_ROOT, lambda: import_signed_ca(self.m.ca, chain))

    def ca_revoke(self, serial: str) -> dict[str, Any]:
        """Revoke the certificate with ``serial`` (hex); it appears in the next CRL."""
        return self.run(Operation.CA_REVOKE, INVENTORY_ROOT, lambda: revoke(self.m.ca, serial), detail=serial)

    # ------------------------------------------------------------------ the inventory

    def users(self) -> list[dict[str, Any]]:
        """The inventory's users and their groups."""
        return self.run(Operation.LIST_USERS, INVENTORY_ROOT, lambda: [
            {"user": name, "groups": self.inventory.groups_of(name)} for name in self.inventory.users()])

    def add_user(self, name: str, password: str, role: str | None = None) -> None:
        """A new user; with ``role``, that role on the whole inventory."""
        def act() -> None:
            if role is not None:
                self.inventory.role(role)  # an unknown role is refused before the user is added
            self.inventory.add_user(name, password)
            if role is not None:
                self.inventory.grant(ROOT, name, role)
        self.run(Operation.MANAGE_USERS, INVENTORY_ROOT, act, detail=f"{name} as {role}" if role else name)

    def grant(self, entity: tuple[str, str], principal: str, role: str, *, group: bool = False) -> None:
        """Give ``principal`` (a user, or a group with ``group``) ``role`` on ``entity`` (kind, name)."""
        self.run(Operation.GRANT, INVENTORY_ROOT, lambda: self.inventory.grant(entity, principal, role, group=group),
                 detail=f"{role} for {principal} on {entity[0]} {entity[1]}".strip())

    def roles(self) -> list[dict[str, Any]]:
        """The roles: built-in and custom, with their privileges."""
        return self.run(Operation.LIST_ROLES, INVENTORY_ROOT, lambda: [
            {"role": r.name, "builtin": r.builtin, "privileges": sorted(p.value for p in r.privileges)}
            for r in self.inventory.roles()])

    def add_role(self, name: str, privileges: list[str]) -> None:
        """A custom role holding ``privileges`` (their names, e.g. ``Cryptographer.Encrypt``)."""
        def act() -> None:
            try:
                wanted = {Privilege(p) for p in privileges}
            except ValueError as exc:
                raise InventoryError(f"unknown privilege: {exc}") from None
            self.inventory.add_role(name, wanted)
        self.run(Operation.ADD_ROLE, INVENTORY_ROOT, act, detail=name)

    def datastores(self) -> list[dict[str, str]]:
        """The datastores: name and directory."""
        return self.run(Operation.LIST_DATASTORES, INVENTORY_ROOT, lambda: [
            {"datastore": name, "path": path} for name, path in self.inventory.datastores()])

    def add_datastore(self, name: str, path: str | os.PathLike[str]) -> None:
        """A directory for VMs (made 0700: only the management plane reaches into it); never the management
        home, inside it or around it."""
        def act() -> None:
            root, home = Path(path).resolve(), self.m.home.resolve()
            if root == home or home in root.parents or root in home.parents:
                raise InventoryError(f"a datastore cannot be, hold or lie inside the management home ({home})")
            self.inventory.add_datastore(name, root)
            os.chmod(root, 0o700)
        self.run(Operation.ADD_DATASTORE, INVENTORY_ROOT, act, detail=f"{name} at {path}")

    def hosts(self) -> list[str]:
        """The names of the registered hosts."""
        return self.run(Operation.LIST_HOSTS, INVENTORY_ROOT, self.inventory.hosts)

    def add_host(self, name: str) -> None:
        """Register a host by name."""
        self.run(Operation.ADD_HOST, INVENTORY_ROOT, lambda: self.inventory.add_host(name), detail=name)

    def audit_log(self) -> list[AuditEntry]:
        """Every audited operation, oldest first (append-only)."""
        return self.run(Operation.READ_AUDIT, INVENTORY_ROOT, self.inventory.audit_log)

    # ------------------------------------------------------------------ host attestation (6.7: look, don't enforce)

    def attest_hosts(self, names: list[str] | None = None, *,
                     running: "Mapping[str, BootedHost] | None" = None) -> list[dict[str, Any]]:
        """Ask the named hosts (default: every inventory host) for fresh TPM evidence and verify it; each
        failure is an alarm in the audit log. Returns one result row per host.

        ``running``: hosts booted in this process, by name; the others with a TPM are asked over their
        daemon's endpoint (``vmcrypt host run``) and fail as not answering when none runs; a host
        without a TPM is N/A."""
        def act() -> list[dict[str, Any]]:
            known = self.inventory.hosts()
            unknown = [n for n in names or [] if n not in known]
            if unknown:
                raise InventoryError(f"no host {', '.join(repr(n) for n in unknown)} in the inventory")
            attester = host_attestation.tpm_attester(host_attestation.HostAttestationSettings.load(self.m.home),
                                                     running or {})
            results = host_attestation.attest_hosts(self.m.home, names or known, attester, self.inventory.audit,
                                                    user=self.user)
            return [r.to_dict() for r in results]
        return self.run(Operation.ATTEST_HOSTS, INVENTORY_ROOT, act, detail=", ".join(names or []) or "every host")

    def configure_host_attestation(self, manufacturer_cas: list[bytes], images: list[str]) -> dict[str, Any]:
        """Replace what the host attestation view trusts: TPM manufacturer CA certificates (PEM) and,
        optionally, image manifests (JSON; none: images are not compared). Checked before anything is written."""
        def act() -> dict[str, Any]:
            settings = host_attestation.HostAttestationSettings(tuple(manufacturer_cas), tuple(images))
            described = settings.describe()
            settings.save(self.m.home)
            return described
        return self.run(Operation.CONFIGURE_HOST_ATTESTATION, INVENTORY_ROOT, act,
                        detail=f"{len(manufacturer_cas)} manufacturer CAs, {len(images)} images")

    def host_attestation(self) -> list[dict[str, Any]]:
        """Every inventory host with its last attestation (Passed, Failed with reasons, N/A, or not attested)."""
        return self.run(Operation.HOST_ATTESTATION, INVENTORY_ROOT,
                        lambda: host_attestation.view(self.m.home, self.inventory.hosts()))

    def security_report(self) -> dict[str, Any]:
        """Hosts' attestation and key providers' health, for the security report page."""
        return self.run(Operation.SECURITY_REPORT, INVENTORY_ROOT,
                        lambda: security_report(self.m.home, self.inventory.hosts(), self.m.keys))
