"""`vmcrypt trust ...`: set up a Trust Authority and the workload cluster that trusts it, in the operator's order.

1. ``export-hosts`` (workload home): the hosts' EK certificates and CSRs for their agents and the
   management plane, into one file;
2. ``enable`` (Trust Authority home): its CA and token key; ``admin-add`` puts a user into
   TrustedAdmins; ``serve`` runs the attestation and key provider services (mutual TLS);
3. ``import-hosts``, ``import-image`` (``remove-image``), ``add-manufacturer-ca``, ``add-trusted-ek``
   (TrustedAdmins);
4. ``set-kmip`` (TrustedAdmins): the KMIP cluster behind the key provider service;
5. ``export-identity`` (Trust Authority home): CA, token key, service URLs, issued certificates;
6. ``import-identity`` (workload home);
7. ``add-provider`` (workload home): a ``trusted`` key provider, ``--default`` for the cluster's.

``attest-host`` (workload home) has a running host (``vmcrypt host run``) attest to an imported Trust
Authority through its daemon: the host's agent keeps the token, as placement and key release expect.
``audit`` prints the Trust Authority's audit log.
Commands that change a Trust Authority's configuration need ``--user`` (password from
``$VMCRYPT_PASSWORD``) of a member of TrustedAdmins in that home's inventory; a refusal is audited.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from durable.atomic import write_atomic
from vmcrypt.cli_common import PASSWORD_ENV, emit, password
from vmcrypt.errors import VmcryptError
from vmcrypt.home import resolve_home
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.rbac import TRUSTED_ADMINS_GROUP
from vmcrypt.trust.authority import TrustAdmin, TrustAuthority


def _read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_bytes())
    except ValueError:
        raise VmcryptError(f"{path} is not JSON") from None


def _admin(args: argparse.Namespace) -> TrustAdmin:
    if not args.user:
        raise VmcryptError(f"configuring the Trust Authority needs --user (a member of {TRUSTED_ADMINS_GROUP})")
    return TrustAuthority(resolve_home(args.home)).admin(args.user, password(PASSWORD_ENV, f"Password for {args.user}: "))


def _write_out(args: argparse.Namespace, data: Any) -> None:
    write_atomic(Path(args.out), json.dumps(data, indent=2, sort_keys=True).encode(), mode=0o600)


def cmd_export_hosts(args: argparse.Namespace) -> None:
    """`trust export-hosts --cluster C [--host H ...] --out FILE` (workload home): write the hosts' EK certificates and
    new client CSRs (every host under ``HOME/hosts`` by default) for the Trust Authority; the keys stay here."""
    from vmcrypt.trust.host_identity import host_ek_certificates
    from vmcrypt.trust.workload import export_host_identities, hosts_dir
    home = resolve_home(args.home)
    names = args.host or (sorted(p.name for p in hosts_dir(home).iterdir() if p.is_dir())
                          if hosts_dir(home).is_dir() else [])
    bundle = export_host_identities(home, args.cluster, {name: host_ek_certificates(hosts_dir(home) / name)
                                                         for name in names})
    _write_out(args, bundle)
    emit(args, {"cluster": args.cluster, "hosts": names, "out": args.out},
         f"exported {len(names)} host identities of cluster {args.cluster} to {args.out}")


def cmd_enable(args: argparse.Namespace) -> None:
    """`trust enable --name N` (Trust Authority home): create its CA, token key and configuration, once."""
    ta = TrustAuthority(resolve_home(args.home))
    ta.enable(args.name)
    emit(args, {"name": args.name, "ca": str(ta.ca.cert_path)}, f"trust services enabled: Trust Authority {args.name}")


def cmd_admin_add(args: argparse.Namespace) -> None:
    """`trust admin-add USER` (local administrator): put an inventory user into TrustedAdmins."""
    TrustAuthority(resolve_home(args.home)).add_admin(args.name)
    emit(args, {"user": args.name, "group": TRUSTED_ADMINS_GROUP}, f"{args.name} is in {TRUSTED_ADMINS_GROUP}")


def cmd_import_hosts(args: argparse.Namespace) -> None:
    """`trust import-hosts FILE` (TrustedAdmins): import the workload cluster's host identities."""
    names = _admin(args).import_hosts(_read_json(args.file))
    emit(args, {"hosts": names}, f"imported hosts: {', '.join(names)}")


def cmd_import_image(args: argparse.Namespace) -> None:
    """`trust import-image FILE` (TrustedAdmins): trust an image manifest's version."""
    version = _admin(args).add_image(Path(args.file).read_text())
    emit(args, {"version": version}, f"trusted image version {version}")


def cmd_remove_image(args: argparse.Namespace) -> None:
    """`trust remove-image VERSION` (TrustedAdmins): stop trusting an image version."""
    _admin(args).remove_image(args.version)
    emit(args, {"version": args.version, "trusted": False}, f"version {args.version} is no longer trusted")


def cmd_add_manufacturer_ca(args: argparse.Namespace) -> None:
    """`trust add-manufacturer-ca FILE` (TrustedAdmins): trust a TPM manufacturer CA."""
    subject = _admin(args).add_manufacturer_ca(Path(args.file).read_bytes())
    emit(args, {"subject": subject}, f"trusted TPM manufacturer CA {subject}")


def cmd_add_trusted_ek(args: argparse.Namespace) -> None:
    """`trust add-trusted-ek FILE` (TrustedAdmins): trust one EK certificate, given in PEM or DER (kept as DER)."""
    data = Path(args.file).read_bytes()
    if data.startswith(b"-----BEGIN"):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        data = x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    digest = _admin(args).add_trusted_ek(data)
    emit(args, {"ek_fingerprint": digest}, f"trusted EK {digest}")


def cmd_set_kmip(args: argparse.Namespace) -> None:
    """`trust set-kmip --server HOST:PORT ... --ca --cert --key` (TrustedAdmins): the KMIP cluster behind the key
    provider service."""
    settings = {"servers": args.server, "ca": args.ca, "cert": args.cert, "key": args.key,
                "timeout": args.timeout, "cache_seconds": 0.0}
    _admin(args).set_kmip(settings)
    emit(args, {"servers": args.server}, f"key provider service fronts KMIP {', '.join(args.server)}")


def cmd_export_identity(args: argparse.Namespace) -> None:
    """`trust export-identity --out FILE` (Trust Authority home): write what the workload cluster imports (CA, token
    key, service URLs, issued certificates), 0600."""
    identity = TrustAuthority(resolve_home(args.home)).identity(
        {"attestation": args.attestation_url, "keys": args.key_provider_url})
    _write_out(args, identity)
    emit(args, {"name": identity["name"], "cluster": identity["cluster"], "out": args.out},
         f"Trust Authority {identity['name']} identity written to {args.out}")


def cmd_import_identity(args: argparse.Namespace) -> None:
    """`trust import-identity FILE` (workload home): import a Trust Authority's identity."""
    from vmcrypt.trust.workload import import_authority
    identity = import_authority(resolve_home(args.home), _read_json(args.file))
    emit(args, {"name": identity.name, "cluster": identity.cluster},
         f"imported Trust Authority {identity.name} for cluster {identity.cluster}")


def cmd_add_provider(args: argparse.Namespace) -> None:
    """`trust add-provider NAME --authority TA [--default]` (workload home): add a ``trusted`` key provider backed by an
    imported Trust Authority."""
    provider = ProviderRegistry(resolve_home(args.home)).add_trusted(args.name, args.authority,
                                                                       make_default=args.default)
    emit(args, {"name": provider.name, "id": provider.provider_id, "kind": provider.kind, "default": args.default},
         f"added trusted key provider {provider.name} ({provider.provider_id})"
         + (", now the default" if args.default else ""))


def cmd_attest_host(args: argparse.Namespace) -> None:
    """`trust attest-host NAME --authority TA` (workload home): have a running host attest through its daemon, whose
    agent keeps the token; refused with a hint when the host is not running."""
    from vmcrypt.trust.host_attestation import host_directory
    from vmcrypt.trust.host_endpoint import HostNotRunning, RemoteHost
    try:
        answer = RemoteHost(host_directory(resolve_home(args.home), args.name)).attest(args.authority)
    except HostNotRunning:
        raise VmcryptError(f"host {args.name} is not running (start it with `vmcrypt host run {args.name}`)") from None
    emit(args, {"host": answer["host"], "authority": answer["authority"], "expires": answer["expires"]},
         f"host {answer['host']} attested by Trust Authority {answer['authority']} (token until {answer['expires']})")


def cmd_audit(args: argparse.Namespace) -> None:
    """`trust audit [--anchor COUNT:SHA256]`: the Trust Authority's audit log, whether its chain is intact (and still
    holds the anchor's line), and its head to keep as the next anchor."""
    ta = TrustAuthority(resolve_home(args.home))
    ta.config()  # a home without a Trust Authority has no audit log to show
    audit = ta.audit
    entries = audit.entries()
    intact, head = audit.verify(args.anchor), audit.head()
    lines = [f"{e['time']}  {e['outcome']:8} {e['actor']:24} {e['action']}: {e['detail']}" for e in entries]
    emit(args, {"intact": intact, "head": head, "entries": entries}, "\n".join(
        [*lines, f"head {head} ({'intact' if intact else 'NOT INTACT: edited, removed or cut lines'})"]))


def cmd_serve(args: argparse.Namespace) -> None:
    """`trust serve` (Trust Authority home): run the attestation and key provider services until stopped."""
    from vmcrypt.trust.services import serve_authority
    serve_authority(TrustAuthority(resolve_home(args.home)), args.attestation, args.keys)


def register(commands: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """``vmcrypt trust ...``: every subcommand local (``--home``), with ``--user`` where TrustedAdmins act."""
    trust = commands.add_parser("trust", help="Trust Authority: attestation, trusted key provider, setup",
                                description="Set up a Trust Authority and the workload cluster that trusts it.")
    sub = trust.add_subparsers(dest="trust_command", metavar="COMMAND", required=True)
    exp = command(sub, "export-hosts", cmd_export_hosts, "1. workload home: export host identities (EK certificates, "
                  "CSRs) to a file for the Trust Authority")
    exp.add_argument("--cluster", required=True, help="the workload cluster's name")
    exp.add_argument("--host", action="append", help="a host under HOME/hosts/ (repeat; default: all)")
    exp.add_argument("--out", required=True, help="the file to write (0600)")
    ena = command(sub, "enable", cmd_enable, "2. Trust Authority home: enable the trust services (CA, token key)")
    ena.add_argument("--name", required=True, help="the Trust Authority's name")
    adm = command(sub, "admin-add", cmd_admin_add, f"Trust Authority home: add an inventory user to "
                  f"{TRUSTED_ADMINS_GROUP} (local administrator)")
    adm.add_argument("name", help="the inventory user")
    srv = command(sub, "serve", cmd_serve, "Trust Authority home: run the attestation and key provider services "
                  "(HTTPS, mutual TLS)", json_out=False)
    srv.add_argument("--attestation", default="127.0.0.1:0", help="HOST:PORT of the attestation service "
                     "(port 0: any free port)")
    srv.add_argument("--keys", default="127.0.0.1:0", help="HOST:PORT of the key provider service (port 0: any)")
    imh = command(sub, "import-hosts", cmd_import_hosts, "3. TrustedAdmins: import the workload cluster's host "
                  "identities")
    imh.add_argument("file", help="the file `trust export-hosts` wrote")
    imi = command(sub, "import-image", cmd_import_image, "3. TrustedAdmins: trust an image manifest (a version)")
    imi.add_argument("file", help="the image manifest (JSON)")
    rmi = command(sub, "remove-image", cmd_remove_image, "TrustedAdmins: stop trusting an image version")
    rmi.add_argument("version", help="the version, e.g. 8.0.2")
    mca = command(sub, "add-manufacturer-ca", cmd_add_manufacturer_ca, "3. TrustedAdmins: trust a TPM manufacturer CA")
    mca.add_argument("file", help="the CA certificate (PEM)")
    tek = command(sub, "add-trusted-ek", cmd_add_trusted_ek, "3. TrustedAdmins: trust one EK certificate")
    tek.add_argument("file", help="the EK certificate (PEM or DER)")
    kms = command(sub, "set-kmip", cmd_set_kmip, "4. TrustedAdmins: the KMIP cluster behind the key provider service")
    kms.add_argument("--server", action="append", required=True, metavar="HOST:PORT",
                     help="a KMIP server (repeat for a cluster)")
    kms.add_argument("--ca", required=True, help="PEM CA certificate that verifies the KMIP servers")
    kms.add_argument("--cert", required=True, help="PEM client certificate for the KMIP servers")
    kms.add_argument("--key", required=True, help="PEM client key for the KMIP servers")
    kms.add_argument("--timeout", type=float, default=5.0, help="seconds per KMIP operation (default 5)")
    eid = command(sub, "export-identity", cmd_export_identity, "5. Trust Authority home: export its identity for "
                  "the workload cluster")
    eid.add_argument("--attestation-url", required=True, help="https://HOST:PORT of the attestation service")
    eid.add_argument("--key-provider-url", required=True, help="https://HOST:PORT of the key provider service")
    eid.add_argument("--out", required=True, help="the file to write")
    iid = command(sub, "import-identity", cmd_import_identity, "6. workload home: import a Trust Authority's identity")
    iid.add_argument("file", help="the file `trust export-identity` wrote")
    apr = command(sub, "add-provider", cmd_add_provider, "7. workload home: add a trusted key provider")
    apr.add_argument("name", help="the new key provider's name")
    apr.add_argument("--authority", required=True, help="the imported Trust Authority's name")
    apr.add_argument("--default", action="store_true", help="make it the cluster's default key provider")
    ath = command(sub, "attest-host", cmd_attest_host, "workload home: have a running host (`vmcrypt host run`) "
                  "attest to a Trust Authority; its agent keeps the token")
    ath.add_argument("name", help="the host's name")
    ath.add_argument("--authority", required=True, help="the imported Trust Authority's name")
    aud = command(sub, "audit", cmd_audit, "Trust Authority home: print the audit log, whether its chain is intact "
                  "and its head (COUNT:SHA256, to keep outside this home)")
    aud.add_argument("--anchor", metavar="COUNT:SHA256", help="a head printed before and kept elsewhere: also "
                     "check that the line it names is still there (a cut tail is not intact)")

