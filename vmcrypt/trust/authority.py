"""A Trust Authority's home: its CA, token key, configuration, issued keys, attestation records, audit log.

Everything lives in files under ``HOME/trust-authority/`` (0700; files 0600, written with
``durable`` atomic writes): the TLS CA (``ca/``), the token signing key, ``config.json`` (the
trusted workload cluster and its hosts by EK fingerprint, the trusted manufacturer CAs, the
explicit trusted-EK list, the trusted images, the KMIP cluster behind the key provider service),
``keys.json`` (the key ids the key provider service created, by cluster), one record per host's
last attestation, and ``audit.jsonl``.

The configuration changes only through ``TrustAdmin``: a user of the home's inventory who logs in
with a password and is a member of ``TrustedAdmins``. Every change and every refusal is audited.
The audit log is append-only: one JSON line per event, each carrying the SHA-256 of the line before
it, so an edited or removed line breaks the chain (``AuditLog.verify``).
"""

from __future__ import annotations

import base64
import datetime
import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from durable.atomic import fsync_directory, write_atomic
from vmcrypt.errors import VmcryptError
from vmcrypt.inventory import Inventory, InventoryError
from vmcrypt.providers.kmip import KmipSettings, parse_server
from vmcrypt.rbac import TRUSTED_ADMINS_GROUP
from vmcrypt.trust.pki import HOST_PREFIX, MANAGEMENT_PREFIX, TlsCa, cert_pem, key_pem, load_key
from vmcrypt.trust.token import TokenIssuer, TokenVerifier, fingerprint, utc_now

DIRECTORY = "trust-authority"
CONFIG_VERSION = 1
MAX_DETAIL = 4096  # characters of an audit line's detail: callers' strings (a key id, a host name) can be long


class TrustAuthorityError(VmcryptError):
    """The Trust Authority refuses a request or its state is unusable."""


class TrustAdminDenied(TrustAuthorityError):
    """A configuration change by someone who is not an authenticated member of TrustedAdmins."""


def plain_name(what: str, name: str) -> str:
    """``name`` when it is one plain file name (it becomes one: ``attestations/NAME.json``, a certificate's CN)."""
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0:") \
            or len(name) > 255 or not name.isprintable():
        raise TrustAuthorityError(f"{what} name {name!r} is not a plain name")
    return name


def _now_text() -> str:
    return utc_now().isoformat(timespec="seconds")


class AuditLog:
    """Append-only JSON lines, each chained to the previous line by SHA-256."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, actor: str, action: str, outcome: str, detail: str = "") -> None:
        """Append one entry chained to the last line by its SHA-256, under an exclusive lock, then fsync; a detail over
        ``MAX_DETAIL`` characters is cut."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            previous = _last_line(fd)
            if len(detail) > MAX_DETAIL:
                detail = detail[:MAX_DETAIL] + f"... ({len(detail) - MAX_DETAIL} more characters)"
            entry = {"time": _now_text(), "actor": actor[:MAX_DETAIL], "action": action, "outcome": outcome,
                     "detail": detail,
                     "prev": hashlib.sha256(previous).hexdigest()}
            os.write(fd, json.dumps(entry, sort_keys=True).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (none before the first append); the chain is not checked here, see ``verify``."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_bytes().splitlines() if line]

    def _lines(self) -> list[bytes]:
        return [line for line in self.path.read_bytes().splitlines() if line] if self.path.exists() else []

    def head(self) -> str:
        """``COUNT:SHA256`` of the last line: an anchor to keep outside the Trust Authority's home. The chain
        alone cannot show that its tail was cut; ``verify(anchor)`` can, against an anchor kept elsewhere."""
        lines = self._lines()
        return f"{len(lines)}:{hashlib.sha256(lines[-1] if lines else b'').hexdigest()}"

    def verify(self, anchor: str | None = None) -> bool:
        """Whether every line names the digest of the line before it (nothing edited or removed inside) and,
        given an ``anchor`` from ``head()``, whether the line it names is still there unchanged (nothing cut)."""
        lines = self._lines()
        previous = b""
        for line in lines:
            try:
                if json.loads(line)["prev"] != hashlib.sha256(previous).hexdigest():
                    return False
            except (ValueError, KeyError, TypeError):
                return False
            previous = line
        if anchor is None:
            return True
        count, _, digest = anchor.partition(":")
        if not count.isdigit() or len(digest) != 64:
            raise TrustAuthorityError(f"audit anchor {anchor[:80]!r} is not COUNT:SHA256 (from `trust audit`)")
        number = int(count)
        if number == 0:
            return True
        return number <= len(lines) and hmac.compare_digest(hashlib.sha256(lines[number - 1]).hexdigest(), digest)


def _last_line(fd: int) -> bytes:
    """The whole last line, however long (read backwards until the newline before it)."""
    size = os.lseek(fd, 0, os.SEEK_END)
    data = b""
    position = size
    while position > 0:
        chunk = min(position, 65536)
        position -= chunk
        data = os.pread(fd, chunk, position) + data
        if b"\n" in data.rstrip(b"\n"):
            break
    return data.rstrip(b"\n").rsplit(b"\n", 1)[-1]


@dataclass(frozen=True)
class HostIdentity:
    """What a workload cluster exports about one host: its name, EK certificates and a client CSR."""

    name: str
    ek_certificates: tuple[bytes, ...]  # DER, one per EK the host's TPM has (RSA, ECC)
    csr: bytes  # PEM, common name host:NAME


def parse_cluster_bundle(data: Any) -> tuple[str, bytes, list[HostIdentity]]:
    """The workload cluster's export: (cluster name, management CSR, hosts); TrustAuthorityError if malformed."""
    try:
        if set(data) != {"cluster", "management_csr", "hosts"} or not isinstance(data["hosts"], list):
            raise TypeError("expected cluster, management_csr and a list of hosts")
        hosts = []
        for entry in data["hosts"]:
            if set(entry) != {"name", "ek_certificates", "csr"} or not isinstance(entry["ek_certificates"], list):
                raise TypeError("each host needs exactly name, a list of ek_certificates and csr")
            hosts.append(HostIdentity(plain_name("host", entry["name"]), tuple(base64.b64decode(e, validate=True)
                                                                for e in entry["ek_certificates"]),
                                      str(entry["csr"]).encode()))
        cluster, csr = data["cluster"], data["management_csr"]
        if not isinstance(cluster, str) or not cluster or not isinstance(csr, str):
            raise TypeError("cluster and management_csr must be text")
        return plain_name("cluster", cluster), csr.encode(), hosts
    except TrustAuthorityError as exc:
        raise TrustAuthorityError(f"the host identity export is malformed: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise TrustAuthorityError(f"the host identity export is malformed: {exc}") from None


class TrustAuthority:
    """One Trust Authority's state, opened from its home."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.home = Path(home)
        self.root = self.home / DIRECTORY
        self.ca = TlsCa(self.root / "ca")
        self.audit = AuditLog(self.root / "audit.jsonl")

    # ----------------------------------------------------------------- files

    @property
    def config_path(self) -> Path:
        """``trust-authority/config.json``: name, cluster, imported hosts, trusted CAs, EKs and images, KMIP settings,
        token lifetime."""
        return self.root / "config.json"

    @property
    def keys_path(self) -> Path:
        """``trust-authority/keys.json``: each key created through the key provider service and the cluster it was
        created for."""
        return self.root / "keys.json"

    @property
    def token_key_path(self) -> Path:
        """``trust-authority/token-key.pem`` (0600): the P-256 key that signs attestation tokens."""
        return self.root / "token-key.pem"

    def enabled(self) -> bool:
        """Whether ``enable`` has run in this home (its configuration exists)."""
        return self.config_path.exists()

    def enable(self, name: str) -> dict[str, Any]:
        """Create the CA, the token key and an empty configuration (once)."""
        if self.enabled():
            raise TrustAuthorityError(f"the trust services are already enabled in {self.home}")
        if not name or any(c in name for c in "/\\\0"):
            raise TrustAuthorityError(f"Trust Authority name {name!r} is not a plain name")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.ca.create(f"{name} Trust Authority CA")
        write_atomic(self.token_key_path, key_pem(ec.generate_private_key(ec.SECP256R1())), mode=0o600)
        config = {"version": CONFIG_VERSION, "name": name, "cluster": None, "hosts": {}, "manufacturer_cas": [],
                  "trusted_eks": [], "images": [], "kmip": None, "token_minutes": 5}
        self._write_config(config)
        self.audit.append("local administrator", "enable trust services", "ok", name)
        return config

    def config(self) -> dict[str, Any]:
        """The configuration; TrustAuthorityError when the services are not enabled or the file is not a configuration
        of this version."""
        if not self.enabled():
            raise TrustAuthorityError(f"the trust services are not enabled in {self.home} (run `vmcrypt trust enable`)")
        try:
            config = json.loads(self.config_path.read_bytes())
        except ValueError:
            raise TrustAuthorityError(f"{self.config_path} is not JSON") from None
        if not isinstance(config, dict) or config.get("version") != CONFIG_VERSION:
            raise TrustAuthorityError(f"{self.config_path} is not a Trust Authority configuration")
        return config

    def _write_config(self, config: dict[str, Any]) -> None:
        write_atomic(self.config_path, json.dumps(config, indent=2, sort_keys=True).encode(), mode=0o600)

    # ----------------------------------------------------------------- tokens

    @property
    def issuer_name(self) -> str:
        """The ``iss`` of this Trust Authority's tokens: ``vmcrypt-trust-authority:NAME``."""
        return f"vmcrypt-trust-authority:{self.config()['name']}"

    def token_issuer(self) -> TokenIssuer:
        """Signs tokens with the token key, each living the configured number of minutes."""
        config = self.config()
        return TokenIssuer(load_key(self.token_key_path), self.issuer_name,
                           lifetime=datetime.timedelta(minutes=config["token_minutes"]))

    def token_verifier(self) -> TokenVerifier:
        """Accepts no token that lives longer than this Trust Authority issues them."""
        minutes = self.config()["token_minutes"]
        return TokenVerifier(load_key(self.token_key_path).public_key(), self.issuer_name,
                             max_lifetime=datetime.timedelta(minutes=minutes))

    # ----------------------------------------------------------------- policy

    def policy(self) -> Any:
        """The verifier's ``TrustPolicy`` built from the configuration."""
        from vmcrypt.trust.trust_policy import build_policy
        config = self.config()
        return build_policy([c.encode() for c in config["manufacturer_cas"]],
                            [base64.b64decode(e) for e in config["trusted_eks"]], list(config["images"]))

    # ----------------------------------------------------------------- keys issued

    def issued_keys(self) -> dict[str, dict[str, str]]:
        """Each key id created through the key provider service, with its cluster and creation time."""
        if not self.keys_path.exists():
            return {}
        return json.loads(self.keys_path.read_bytes())

    def record_key(self, key_id: str, cluster: str) -> None:
        """Remember that ``key_id`` was created for ``cluster``: the key is released only to that cluster's attested
        hosts. Read, change, write: the caller keeps writers apart."""
        keys = self.issued_keys()
        keys[key_id] = {"cluster": cluster, "created": _now_text()}
        write_atomic(self.keys_path, json.dumps(keys, indent=2, sort_keys=True).encode(), mode=0o600)

    # ----------------------------------------------------------------- attestation records

    def record_attestation(self, host: str, record: dict[str, Any]) -> None:
        """Keep ``record`` as the last attestation of ``host`` (``attestations/HOST.json``, 0600); TrustAuthorityError
        when the host's name is not a plain name."""
        directory = self.root / "attestations"
        directory.mkdir(mode=0o700, exist_ok=True)
        write_atomic(directory / f"{plain_name('host', host)}.json", json.dumps(record, indent=2, sort_keys=True).encode(), mode=0o600)

    def attestation(self, host: str) -> dict[str, Any] | None:
        """The last attestation record of ``host``, or None when it never attested here."""
        path = self.root / "attestations" / f"{plain_name('host', host)}.json"
        return json.loads(path.read_bytes()) if path.exists() else None

    # ----------------------------------------------------------------- identity export

    def identity(self, services: dict[str, str]) -> dict[str, Any]:
        """What the workload cluster imports: name, CA, token key, service URLs, the certificates it was issued."""
        config = self.config()
        if not config["cluster"]:
            raise TrustAuthorityError("no host identities imported yet: import the workload cluster's hosts first")
        issued = json.loads((self.root / "issued.json").read_bytes())
        from cryptography.hazmat.primitives import serialization
        public = load_key(self.token_key_path).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {"name": config["name"], "issuer": self.issuer_name, "cluster": config["cluster"],
                "ca": cert_pem(self.ca.certificate()).decode(), "token_key": public.decode(),
                "attestation_url": services["attestation"], "key_provider_url": services["keys"],
                "management_certificate": issued["management"], "host_certificates": issued["hosts"]}

    def add_admin(self, user: str, *, password: str | None = None) -> None:
        """Put ``user`` into TrustedAdmins, audited in the inventory's log and the Trust Authority's.
        With ``password`` the user is created first (and the home's inventory, if it has none yet);
        without it the user must exist in an existing inventory."""
        with Inventory(self.home, create=password is not None) as inventory:
            if password is not None:
                inventory.add_user(user, password)
            inventory.add_to_group(TRUSTED_ADMINS_GROUP, user)
            inventory.audit("local administrator", "add to TrustedAdmins", "root", "ok", user)
        self.audit.append("local administrator", "add to TrustedAdmins", "ok", user)

    def admin(self, user: str, password: str) -> "TrustAdmin":
        """A configuration session; refused (and audited) unless ``user`` logs in and is in TrustedAdmins."""
        try:
            with Inventory(self.home, create=False) as inventory:
                inventory.authenticate(user, password)
                groups = inventory.groups_of(user)
        except InventoryError:
            self.audit.append(user, "log in to configure", "denied", "bad user name or password")
            raise TrustAdminDenied(f"'{user}' may not configure the Trust Authority: bad user name or password") \
                from None
        if TRUSTED_ADMINS_GROUP not in groups:
            self.audit.append(user, "log in to configure", "denied", f"not a member of {TRUSTED_ADMINS_GROUP}")
            raise TrustAdminDenied(f"'{user}' may not configure the Trust Authority: not a member of "
                                   f"{TRUSTED_ADMINS_GROUP}")
        return TrustAdmin(self, user)


class TrustAdmin:
    """The configuration changes of one authenticated TrustedAdmins member; each audited."""

    def __init__(self, authority: TrustAuthority, user: str) -> None:
        self.ta = authority
        self.user = user

    @contextmanager
    def _change(self, action: str, detail: str) -> Iterator[dict[str, Any]]:
        """Read the configuration, let the caller change it, write it back atomically; audit the outcome."""
        try:
            config = self.ta.config()
            yield config
            self.ta._write_config(config)
        except Exception as exc:
            self.ta.audit.append(self.user, action, "failed", f"{detail}: {exc}")
            raise
        self.ta.audit.append(self.user, action, "ok", detail)

    def add_manufacturer_ca(self, pem: bytes) -> str:
        """Trust EK certificates issued by this TPM manufacturer CA; returns its subject."""
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            self.ta.audit.append(self.user, "add manufacturer CA", "failed", "not a PEM certificate")
            raise TrustAuthorityError("the manufacturer CA is not a PEM certificate") from None
        subject = cert.subject.rfc4514_string()
        with self._change("add manufacturer CA", subject) as config:
            text = cert_pem(cert).decode()
            if text not in config["manufacturer_cas"]:
                config["manufacturer_cas"].append(text)
        return subject

    def add_trusted_ek(self, der: bytes) -> str:
        """Trust this one EK certificate (a TPM whose manufacturer CA is not trusted)."""
        try:
            x509.load_der_x509_certificate(der)
        except ValueError:
            self.ta.audit.append(self.user, "add trusted EK", "failed", "not a DER certificate")
            raise TrustAuthorityError("the trusted EK is not a DER certificate") from None
        with self._change("add trusted EK", fingerprint(der)) as config:
            text = base64.b64encode(der).decode()
            if text not in config["trusted_eks"]:
                config["trusted_eks"].append(text)
        return fingerprint(der)

    def add_image(self, manifest_json: str) -> str:
        """Trust an image manifest (a version and its component digests); returns the version."""
        from vmcrypt.trust.trust_policy import image_version
        try:
            version = image_version(manifest_json)
        except Exception as exc:  # the manifest parser's own error says what is wrong
            self.ta.audit.append(self.user, "add trusted image", "failed", str(exc))
            raise TrustAuthorityError(f"the image manifest is refused: {exc}") from None
        with self._change("add trusted image", version) as config:
            config["images"] = [m for m in config["images"] if image_version(m) != version] + [manifest_json]
        return version

    def remove_image(self, version: str) -> None:
        """Stop trusting a version: hosts booted from it fail their next attestation."""
        from vmcrypt.trust.trust_policy import image_version
        with self._change("remove trusted image", version) as config:
            kept = [m for m in config["images"] if image_version(m) != version]
            if len(kept) == len(config["images"]):
                raise TrustAuthorityError(f"version {version} is not trusted")
            config["images"] = kept

    def set_kmip(self, settings: dict[str, Any]) -> None:
        """The KMIP cluster behind the key provider service (paths to its CA, client cert and key)."""
        detail = ", ".join(settings.get("servers", [])) if isinstance(settings, dict) else ""
        with self._change("set KMIP cluster", detail) as config:
            parsed = KmipSettings.from_dict(settings)
            for server in parsed.servers:
                parse_server(server)
            for path in (parsed.ca, parsed.cert, parsed.key):
                if not Path(path).is_file():
                    raise TrustAuthorityError(f"KMIP file not found: {path}")
            config["kmip"] = {**settings, "ca": str(Path(parsed.ca).resolve()), "cert": str(Path(parsed.cert).resolve()),
                              "key": str(Path(parsed.key).resolve())}

    def use_native_store(self) -> None:
        """Keep the keys in a native key store under the Trust Authority's home instead of a KMIP cluster
        (a single-node Trust Authority, or a demonstration): same release rules."""
        with self._change("use native key store", "keys under the Trust Authority's home") as config:
            config["kmip"] = {"native": True}

    def import_hosts(self, bundle: Any) -> list[str]:
        """Import a workload cluster's host identities: trust its hosts' EKs (by fingerprint), sign the
        hosts' and the management plane's client certificates. One workload cluster per Trust Authority."""
        try:
            cluster, management_csr, hosts = parse_cluster_bundle(bundle)
        except TrustAuthorityError as exc:
            self.ta.audit.append(self.user, "import host identities", "failed", str(exc))
            raise
        names = [h.name for h in hosts]
        with self._change("import host identities", f"cluster {cluster}: {', '.join(names)}") as config:
            if config["cluster"] not in (None, cluster):
                raise TrustAuthorityError(f"this Trust Authority already serves cluster {config['cluster']!r}")
            issued_path = self.ta.root / "issued.json"
            issued = json.loads(issued_path.read_bytes()) if issued_path.exists() else {"management": "", "hosts": {}}
            issued["management"] = self.ta.ca.sign_client(management_csr, MANAGEMENT_PREFIX + cluster).decode()
            for host in hosts:
                if not host.ek_certificates:
                    raise TrustAuthorityError(f"host {host.name}: no EK certificate")
                for der in host.ek_certificates:
                    try:
                        x509.load_der_x509_certificate(der)
                    except ValueError:
                        raise TrustAuthorityError(f"host {host.name}: an EK certificate is not DER") from None
                issued["hosts"][host.name] = self.ta.ca.sign_client(host.csr, HOST_PREFIX + host.name).decode()
                config["hosts"][host.name] = sorted(fingerprint(der) for der in host.ek_certificates)
            config["cluster"] = cluster
            write_atomic(issued_path, json.dumps(issued, indent=2, sort_keys=True).encode(), mode=0o600)
            fsync_directory(self.ta.root)
        return names
