"""The workload cluster's side of a Trust Authority: what it exports, what it imports, where VMs run.

Files under the management home (0700 directories, 0600 files, atomic writes):

- ``trust/cluster/``: the cluster's name and the management plane's TLS client key (its CSR is
  exported; the Trust Authority signs it at import) and, once imported, its certificate;
- ``trust/authorities/NAME/identity.json``: an imported Trust Authority (its CA, token-verification
  key, issuer name, service URLs, the cluster it trusts);
- ``hosts/HOST/agent/``: the host agent's TLS client key and certificate, its current token and its
  last attestation outcome (the host's measured-boot state beside it belongs to the host itself);
- ``trust/placements/KEY_ID.json``: the attested host a trusted-provider key was last placed on,
  so that the host's vTPM process knows through which host agent to fetch it.

``check_attested`` is the management plane's rule: a host is trusted and attested by a Trust
Authority when its agent holds a token from that authority, unexpired, for that host and the trusted
cluster, with a passed verdict.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from durable.atomic import write_atomic
from vmcrypt.errors import VmcryptError, VmError
from vmcrypt.trust.pki import HOST_PREFIX, MANAGEMENT_PREFIX, load_key, new_client_key
from vmcrypt.trust.token import TokenClaims, TokenError, TokenVerifier

NOT_TRUSTED = "destination host is not trusted and attested"


class HostNotTrusted(VmError):
    """An operation would put a trusted-provider VM on a host its Trust Authority has not attested."""


class WorkloadTrustError(VmcryptError):
    """The workload cluster's trust configuration is missing or inconsistent."""


def trust_dir(home: Path) -> Path:
    """``HOME/trust``: the workload side's trust state (the cluster, imported authorities, key placements)."""
    return Path(home) / "trust"


def cluster_dir(home: Path) -> Path:
    """``HOME/trust/cluster``: the cluster's name and the management plane's client key and certificate."""
    return trust_dir(home) / "cluster"


def hosts_dir(home: Path) -> Path:
    """``HOME/hosts``: one directory per host."""
    return Path(home) / "hosts"


def agent_dir(home: Path, host: str) -> Path:
    """``HOME/hosts/HOST/agent``; a host name that is not one plain directory name (``../x``) is refused, so a
    name from an imported identity or a request never reaches outside ``HOME/hosts``."""
    if not isinstance(host, str) or not host or host.startswith(".") or any(c in host for c in "/\\\0"):
        raise WorkloadTrustError(f"host name {host!r} is not a plain name")
    return hosts_dir(home) / host / "agent"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode(), mode=0o600)


def export_host_identities(home: Path, cluster: str, hosts: dict[str, list[bytes]]) -> dict[str, Any]:
    """The bundle a TrustedAdmin imports into the Trust Authority: the cluster's name, a CSR for the
    management plane, and per host its EK certificates (DER) and a CSR for its agent. Keys stay here."""
    if not cluster or "/" in cluster:
        raise WorkloadTrustError(f"cluster name {cluster!r} is not a plain name")
    if not hosts:
        raise WorkloadTrustError("no hosts to export")
    existing = cluster_dir(home) / "cluster.json"
    if existing.exists() and json.loads(existing.read_bytes())["cluster"] != cluster:
        raise WorkloadTrustError(f"this management home is already cluster {json.loads(existing.read_bytes())['cluster']!r}")
    _write_json(existing, {"cluster": cluster})
    management_csr = new_client_key(cluster_dir(home), MANAGEMENT_PREFIX + cluster)
    entries = []
    for name, eks in sorted(hosts.items()):
        csr = new_client_key(agent_dir(home, name), HOST_PREFIX + name)
        entries.append({"name": name, "ek_certificates": [base64.b64encode(ek).decode() for ek in eks],
                        "csr": csr.decode()})
    return {"cluster": cluster, "management_csr": management_csr.decode(), "hosts": entries}


def _same_key(cert_pem: str, key_path: Path) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == load_key(key_path).public_key().public_bytes(*spki)


def import_authority(home: Path, identity: Any) -> "AuthorityIdentity":
    """Import a Trust Authority's exported identity; installs the certificates it issued to this cluster."""
    required = {"name", "issuer", "cluster", "ca", "token_key", "attestation_url", "key_provider_url",
                "management_certificate", "host_certificates"}
    if not isinstance(identity, dict) or set(identity) != required:
        raise WorkloadTrustError("the Trust Authority identity is malformed (expected exactly: "
                                 f"{', '.join(sorted(required))})")
    cluster_file = cluster_dir(home) / "cluster.json"
    if not cluster_file.exists() or json.loads(cluster_file.read_bytes())["cluster"] != identity["cluster"]:
        raise WorkloadTrustError(f"this identity trusts cluster {identity['cluster']!r}, which is not this "
                                 "management home's cluster (export the host identities from here first)")
    if not _same_key(identity["management_certificate"], cluster_dir(home) / "client-key.pem"):
        raise WorkloadTrustError("the management certificate in the identity is not for this cluster's key")
    for host, pem in identity["host_certificates"].items():
        key_path = agent_dir(home, host) / "client-key.pem"
        if not key_path.exists() or not _same_key(pem, key_path):
            raise WorkloadTrustError(f"host {host}: the certificate in the identity is not for this host's key")
    name = identity["name"]
    if not name or "/" in name or name.startswith("."):
        raise WorkloadTrustError(f"Trust Authority name {name!r} is not a plain name")
    for host, pem in identity["host_certificates"].items():
        write_atomic(agent_dir(home, host) / "client.pem", pem.encode(), mode=0o600)
    write_atomic(cluster_dir(home) / "client.pem", identity["management_certificate"].encode(), mode=0o600)
    directory = trust_dir(home) / "authorities" / name
    _write_json(directory / "identity.json", {k: v for k, v in identity.items()
                                              if k not in ("management_certificate", "host_certificates")})
    return AuthorityIdentity.load(home, name)


@dataclass(frozen=True)
class AuthorityIdentity:
    """An imported Trust Authority, as the workload cluster knows it."""

    home: Path
    name: str
    issuer: str
    cluster: str
    ca_pem: str
    token_key_pem: str
    attestation_url: str
    key_provider_url: str

    @classmethod
    def load(cls, home: Path, name: str) -> "AuthorityIdentity":
        """The identity of Trust Authority ``name`` as imported into ``home``; WorkloadTrustError when none is or its
        file is not JSON."""
        path = trust_dir(home) / "authorities" / name / "identity.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise WorkloadTrustError(f"no Trust Authority {name!r} is imported into {home}") from None
        except ValueError:
            raise WorkloadTrustError(f"{path} is not JSON") from None
        return cls(Path(home), data["name"], data["issuer"], data["cluster"], data["ca"], data["token_key"],
                   data["attestation_url"], data["key_provider_url"])

    @property
    def ca_path(self) -> Path:
        """The Trust Authority's CA certificate as a file (written on first use, 0600), for ``ssl`` to load."""
        path = trust_dir(self.home) / "authorities" / self.name / "ca.pem"
        if not path.exists():
            write_atomic(path, self.ca_pem.encode(), mode=0o600)
        return path

    def ssl_context(self, client_directory: Path) -> ssl.SSLContext:
        """TLS to the Trust Authority's services: its CA only, and our client certificate."""
        cert = client_directory / "client.pem"
        if not cert.exists():
            raise WorkloadTrustError(f"no client certificate in {client_directory}: import the Trust Authority "
                                     "identity first")
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.load_cert_chain(str(cert), str(client_directory / "client-key.pem"))
        return context

    def management_context(self) -> ssl.SSLContext:
        """TLS to the Trust Authority's services as the cluster's management plane."""
        return self.ssl_context(cluster_dir(self.home))

    def token_verifier(self) -> TokenVerifier:
        """Accepts only this Trust Authority's tokens (its issuer name and token key); WorkloadTrustError when the key
        is not an ECC key."""
        key = serialization.load_pem_public_key(self.token_key_pem.encode())
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise WorkloadTrustError("the Trust Authority's token key is not an ECC key")
        return TokenVerifier(key, self.issuer)


def host_token(home: Path, host: str) -> str | None:
    """The token the host's agent keeps, or None."""
    path = agent_dir(home, host) / "token.jwt"
    return path.read_text().strip() if path.exists() else None


def last_attestation(home: Path, host: str) -> dict[str, Any] | None:
    """What the host's agent recorded of its last attestation (passed, reasons, time), or None."""
    path = agent_dir(home, host) / "last-attestation.json"
    return json.loads(path.read_bytes()) if path.exists() else None


def check_attested(identity: AuthorityIdentity, host: str) -> TokenClaims:
    """The claims of ``host``'s current token from ``identity``; ``HostNotTrusted`` saying why not."""
    token = host_token(identity.home, host)
    if token is None:
        last = last_attestation(identity.home, host)
        why = ("; ".join(last["reasons"]) if last and last.get("reasons")
               else "the host holds no attestation token")
        raise HostNotTrusted(f"{NOT_TRUSTED}: host {host}: {why}")
    try:
        claims = identity.token_verifier().verify(token)
    except TokenError as exc:
        raise HostNotTrusted(f"{NOT_TRUSTED}: host {host}: {exc}") from None
    if claims.host != host or claims.cluster != identity.cluster:
        raise HostNotTrusted(f"{NOT_TRUSTED}: host {host}: its token is for host {claims.host} of cluster "
                             f"{claims.cluster}")
    return claims


def place(home: Path, key_id: str, host: str) -> None:
    """Remember that the key ``key_id`` is used on ``host`` now (the vTPM process fetches it through that host)."""
    _write_json(trust_dir(home) / "placements" / f"{_safe(key_id)}.json", {"key_id": key_id, "host": host})


def placed_host(home: Path, key_id: str) -> str | None:
    """The host ``key_id`` is used on now (see ``place``), or None."""
    path = trust_dir(home) / "placements" / f"{_safe(key_id)}.json"
    return json.loads(path.read_bytes())["host"] if path.exists() else None


def _safe(key_id: str) -> str:
    return base64.urlsafe_b64encode(key_id.encode()).decode().rstrip("=")


def known_hosts(home: Path) -> list[str]:
    """The hosts under ``HOME/hosts`` that have an agent directory, sorted."""
    directory = hosts_dir(home)
    return sorted(p.name for p in directory.iterdir() if (p / "agent").is_dir()) if directory.is_dir() else []


def remove_token(home: Path, host: str) -> None:
    """Drop the host's token if it holds one (after a refused attestation)."""
    try:
        os.unlink(agent_dir(home, host) / "token.jwt")
    except FileNotFoundError:
        pass
