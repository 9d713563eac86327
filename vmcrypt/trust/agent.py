"""The host agent: on a trusted host, proves what the host booted and fetches the keys of its VMs.

``HostAgent(home, host, authority, evidence)``: ``attest()`` runs the two rounds with the
attestation service (identity → challenge; the host's TPM answers → report) over mutual TLS with
the host's own client certificate, and keeps the token it gets (0600, in the host's agent
directory) until it expires; a refusal removes any older token and keeps the reasons.
``fetch_key(key_id)`` presents the token to the key provider service and returns the key. The
evidence object is the host's (``vmcrypt.trust.collect.HostEvidence``); fetching keys needs only
the token, so the host's vTPM process can fetch without touching the host's TPM.
``agent_for(home, host, authority)`` is the agent of a host whose daemon (``vmcrypt host run``) may
be running: when it answers, its TPM is the evidence, so an expired token is renewed by attesting again.
"""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path
from typing import Any, Protocol

import httpx

from durable.atomic import write_atomic
from vmcrypt.errors import KeyProviderError, VmcryptError
from vmcrypt.trust.evidence import AttestationReport, Challenge, EvidenceError
from vmcrypt.trust.token import TokenError, utc_now
from vmcrypt.trust.workload import AuthorityIdentity, agent_dir, host_token, hosts_dir, remove_token

TIMEOUT = 30.0
RENEW_BEFORE = datetime.timedelta(seconds=30)


class Evidence(Protocol):
    """What the agent attests with: the host's TPM identity and its answers to challenges (``HostEvidence`` in this
    process, ``RemoteHost`` through a running host's daemon)."""

    def identity(self) -> tuple[bytes, bytes]:
        """(EK certificate DER, AK TPM2B_PUBLIC) of the host's TPM."""

    def answer(self, challenge: Challenge, *, host: str, version: str) -> AttestationReport:
        """The host's report for ``challenge``: what its TPM quotes and the logs of what it booted."""


class AttestationRefused(VmcryptError):
    """The attestation service refused the host; ``reasons`` lists every reason it gave."""

    def __init__(self, host: str, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__(f"host {host}: attestation refused: {'; '.join(reasons)}")


def _answer(response: httpx.Response, what: str) -> Any:
    try:
        data = response.json()
    except ValueError:
        raise VmcryptError(f"{what}: the service answered {response.status_code} without JSON") from None
    if response.status_code != 200:
        reasons = data.get("reasons") if isinstance(data, dict) else None
        raise _Refusal(str(data.get("error") if isinstance(data, dict) else data), list(reasons or []))
    return data


class _Refusal(Exception):
    def __init__(self, error: str, reasons: list[str]) -> None:
        self.error = error
        self.reasons = reasons
        super().__init__(error)


class HostAgent:
    """The agent of one host for one imported Trust Authority: attests with the host's evidence and keeps the token,
    then fetches keys against it (see the module's docstring)."""

    def __init__(self, home: Path, host: str, authority: AuthorityIdentity, evidence: Evidence | None = None,
                 *, version: str = "") -> None:
        self.home = Path(home)
        self.host = host
        self.authority = authority
        self.evidence = evidence
        self.version = version

    @property
    def directory(self) -> Path:
        """``HOME/hosts/HOST/agent``: the host's client key and certificate, its token and its last attestation."""
        return agent_dir(self.home, self.host)

    def _client(self, base: str) -> httpx.Client:
        return httpx.Client(base_url=base, verify=self.authority.ssl_context(self.directory), timeout=TIMEOUT)

    def attest(self) -> str:
        """Attest now; the new token, or ``AttestationRefused`` listing every reason."""
        if self.evidence is None:
            raise VmcryptError(f"host {self.host}: the agent has no access to the host's TPM")
        ek, ak = self.evidence.identity()
        try:
            with self._client(self.authority.attestation_url) as client:
                challenge = Challenge.from_json(json.dumps(_answer(client.post("/challenge", json={
                    "ek_certificate": base64.b64encode(ek).decode(), "ak_public": base64.b64encode(ak).decode()}),
                    "challenge")))
                report = self.evidence.answer(challenge, host=self.host, version=self.version)
                answer = _answer(client.post("/attest", content=report.to_json(),
                                             headers={"content-type": "application/json"}), "attest")
        except _Refusal as refusal:
            self._refused(refusal.reasons or [refusal.error])
            raise AttestationRefused(self.host, refusal.reasons or [refusal.error]) from None
        except EvidenceError as exc:
            raise VmcryptError(f"host {self.host}: the attestation service's answer is malformed: {exc}") from None
        except httpx.HTTPError as exc:
            raise VmcryptError(f"host {self.host}: the attestation service of {self.authority.name} is not "
                               f"reachable: {type(exc).__name__}") from None
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str):
            raise VmcryptError(f"host {self.host}: the attestation service answered without a token")
        write_atomic(self.directory / "token.jwt", token.encode(), mode=0o600)
        write_atomic(self.directory / "last-attestation.json", json.dumps(
            {"passed": True, "reasons": [], "verdict": answer.get("verdict"), "time": utc_now().isoformat()}).encode(),
            mode=0o600)
        return token

    def _refused(self, reasons: list[str]) -> None:
        remove_token(self.home, self.host)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.directory / "last-attestation.json", json.dumps(
            {"passed": False, "reasons": reasons, "time": utc_now().isoformat()}).encode(), mode=0o600)

    def token(self) -> str:
        """The current token, attesting again when it is missing or about to expire (if the TPM is at hand)."""
        token = host_token(self.home, self.host)
        if token is not None:
            try:
                claims = self.authority.token_verifier().verify(token)
                if claims.expires - utc_now() > RENEW_BEFORE or self.evidence is None:
                    return token
            except TokenError:
                if self.evidence is None:
                    return token  # the key provider service says why it is refused
        if self.evidence is None:
            raise KeyProviderError(f"host {self.host} holds no attestation token: its agent must attest first")
        return self.attest()

    def fetch_key(self, key_id: str) -> bytes:
        """The key ``key_id`` from the key provider service, released against this host's token."""
        token = self.token()
        try:
            with self._client(self.authority.key_provider_url) as client:
                answer = _answer(client.post("/keys/release", json={"key_id": key_id},
                                             headers={"authorization": f"Bearer {token}"}), "release key")
        except _Refusal as refusal:
            raise KeyProviderError(f"the Trust Authority {self.authority.name} refused key {key_id} to host "
                                   f"{self.host}: {'; '.join([refusal.error, *refusal.reasons])}") from None
        except httpx.HTTPError as exc:
            raise KeyProviderError(f"the key provider service of {self.authority.name} is not reachable: "
                                   f"{type(exc).__name__}") from None
        try:
            return base64.b64decode(answer["key"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise KeyProviderError("the key provider service answered without a key") from None


def agent_for(home: Path, host: str, authority: AuthorityIdentity) -> HostAgent:
    """The host's agent, with the running host's TPM as evidence when its daemon answers (tokens renew)."""
    from vmcrypt.trust.host_endpoint import running_host
    return HostAgent(home, host, authority, running_host(hosts_dir(home) / host))
