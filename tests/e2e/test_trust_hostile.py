"""The Trust Authority's services tried by an attacker, over real sockets with mutual TLS.

Two hosts of one workload cluster boot real TPMs (both trusted); the attestation and key provider
services run on uvicorn with mutual TLS (``start_in_thread``: the same ``mtls_config`` and apps as
``vmcrypt trust serve``, in a thread so the tests can shorten the time limits). Each test is one
attack by a hostile host holding its own valid certificate, by a peer without one, or by someone
who can write the hosts' files: every one refused with its reason, nothing released, and the
services still serve the honest host afterwards.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import select
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.trust import boot_trusted_host, image, manufacturer
from vmcrypt.inventory import Inventory
from vmcrypt.errors import KeyProviderError
from vmcrypt.trust import serving, services
from vmcrypt.trust.agent import HostAgent
from vmcrypt.trust.authority import TrustAuthority, TrustAuthorityError
from vmcrypt.trust.collect import HostEvidence
from vmcrypt.trust.evidence import Challenge
from vmcrypt.trust.host_boot import BootedHost
from vmcrypt.trust.host_identity import host_ek_certificates
from vmcrypt.trust.pki import load_key
from vmcrypt.trust.token import AUDIENCE, TokenIssuer, fingerprint
from vmcrypt.trust.workload import (AuthorityIdentity, HostNotTrusted, WorkloadTrustError, agent_dir, check_attested,
                                    cluster_dir, export_host_identities, import_authority)

pytestmark = pytest.mark.slow  # two host boots and the services; the time-limit tests wait a second or two each
PASSWORD = "a long enough password"
A, B = "esx-a", "esx-b"


@dataclass
class World:
    workload: Path
    ta: TrustAuthority
    running: services.RunningServices
    identity: AuthorityIdentity
    hosts: dict[str, BootedHost]
    evidence: dict[str, HostEvidence]
    key_id: str

    def client(self, url: str, host: str | None) -> httpx.Client:
        """A client of ``url`` with ``host``'s certificate (None: the management plane's)."""
        directory = agent_dir(self.workload, host) if host else cluster_dir(self.workload)
        return httpx.Client(base_url=url, verify=self.identity.ssl_context(directory), timeout=30)

    def tls_socket(self, url: str, host: str) -> ssl.SSLSocket:
        """A raw mutual-TLS connection as ``host`` (for what an HTTP client library will not send)."""
        parts = urlsplit(url)
        context = self.identity.ssl_context(agent_dir(self.workload, host))
        raw = socket.create_connection((parts.hostname, parts.port), timeout=30)
        return context.wrap_socket(raw, server_hostname=parts.hostname)

    def token(self, host: str, **claims: object) -> str:
        """A token signed with the Trust Authority's own key (what a holder of that key could mint)."""
        now = int(time.time())
        body = {"iss": self.ta.issuer_name, "aud": AUDIENCE, "sub": host,
                "ek": fingerprint(host_ek_certificates(self.workload / "hosts" / host)[0]), "ver": "8.0.2",
                "verdict": "passed", "cluster": "wl", "iat": now, "exp": now + 60, "jti": "00" * 16, **claims}
        key = load_key(self.ta.token_key_path)
        return jwt.encode(body, key, algorithm="ES256", headers={"kid": TokenIssuer(key, "x").key_id})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("ta-hostile")
    workload, ta_home = root / "workload", root / "ta"
    ta_home.mkdir(mode=0o700)
    hosts = {name: boot_trusted_host(workload, name) for name in (A, B)}
    bundle = export_host_identities(workload, "wl", {n: host_ek_certificates(workload / "hosts" / n) for n in hosts})
    ta = TrustAuthority(ta_home)
    ta.enable("ta1")
    ta.add_admin("ta-admin", password=PASSWORD)
    with Inventory(ta_home, create=False) as inventory:
        inventory.add_user("operator", PASSWORD)
    admin = ta.admin("ta-admin", PASSWORD)
    admin.import_hosts(bundle)
    admin.add_image(image().manifest.to_json())
    admin.add_manufacturer_ca(manufacturer(workload).certificate_pem())
    admin.use_native_store()
    running = services.start_in_thread(ta)
    try:
        identity = import_authority(workload, ta.identity({"attestation": running.attestation_url,
                                                            "keys": running.key_provider_url}))
        world = World(workload, ta, running, identity, hosts, {n: HostEvidence(h) for n, h in hosts.items()}, "")
        with world.client(running.key_provider_url, None) as client:
            world.key_id = client.post("/keys").json()["key_id"]
        yield world
    finally:
        running.stop()


def _challenge(world: World, as_host: str, for_host: str) -> httpx.Response:
    ek, ak = world.evidence[for_host].identity()
    with world.client(world.running.attestation_url, as_host) as client:
        return client.post("/challenge", json={"ek_certificate": base64.b64encode(ek).decode(),
                                               "ak_public": base64.b64encode(ak).decode()})


def _report(world: World, host: str) -> bytes:
    """A fresh, honest attestation report of ``host`` (challenge asked with its own certificate)."""
    answer = _challenge(world, host, host)
    assert answer.status_code == 200, answer.text
    challenge = Challenge.from_json(answer.text)
    return world.evidence[host].answer(challenge, host=host, version=world.hosts[host].version).to_json().encode()


def _release(world: World, host: str, token: str | None, key_id: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with world.client(world.running.key_provider_url, host) as client:
        return client.post("/keys/release", json={"key_id": key_id or world.key_id}, headers=headers)


def _good_token(world: World, host: str) -> str:
    with world.client(world.running.attestation_url, host) as client:
        answer = client.post("/attest", content=_report(world, host), headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


# ---------------------------------------------------------------------------------------------- tokens

def test_tokens_that_are_not_this_hosts_passed_short_lived_token_release_nothing(world: World) -> None:
    token_a = _good_token(world, A)
    assert base64.b64decode(_release(world, A, token_a).json()["key"])  # the honest host gets its key

    refusals = {}
    refusals["A's token from B"] = _release(world, B, token_a)
    other = ec.generate_private_key(ec.SECP256R1())  # another Trust Authority, same names
    refusals["other Trust Authority"] = _release(world, A, TokenIssuer(other, world.ta.issuer_name).issue(
        host=A, ek_fingerprint="00", version="8.0.2", cluster="wl"))
    refusals["failed verdict"] = _release(world, A, world.token(A, verdict="failed"))
    refusals["ten-year expiry"] = _release(world, A, world.token(A, exp=int(time.time()) + 10 * 365 * 86400))
    refusals["other cluster"] = _release(world, A, world.token(A, cluster="another-cluster"))
    unsigned = jwt.encode({"sub": A}, None, algorithm="none")
    refusals["alg none"] = _release(world, A, unsigned)
    public = load_key(world.ta.token_key_path).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    claims = jwt.decode(token_a, options={"verify_signature": False})
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    confused = signing_input + "." + b64(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())
    refusals["HS256 keyed with the public key"] = _release(world, A, confused)

    expected = {"A's token from B": "the token is for host 'esx-a'",
                "other Trust Authority": "issued by another Trust Authority",
                "failed verdict": "does not carry a passed verdict",
                "ten-year expiry": "lifetime is longer than the Trust Authority issues",
                "other cluster": "not the trusted cluster",
                "alg none": "algorithm is not ES256",
                "HS256 keyed with the public key": "algorithm is not ES256"}
    for attack, answer in refusals.items():
        assert answer.status_code == 403, (attack, answer.text)
        assert "key" not in answer.json(), attack
        assert expected[attack] in json.dumps(answer.json()), (attack, answer.json())
    details = [e["detail"] for e in world.ta.audit.entries() if e["action"] == "release key" and e["outcome"] == "refused"]
    assert len([d for d in details if world.key_id in d]) >= len(refusals)


def test_a_token_of_a_host_no_longer_configured_is_refused(world: World) -> None:
    token_b = _good_token(world, B)
    config = world.ta.config()
    removed = {**config, "hosts": {k: v for k, v in config["hosts"].items() if k != B}}
    world.ta._write_config(removed)  # the host's configuration removed from the Trust Authority
    try:
        answer = _release(world, B, token_b)
        assert answer.status_code == 403 and "not an imported host" in answer.json()["error"]
        assert _challenge(world, B, B).status_code == 403
    finally:
        world.ta._write_config(config)
    assert _release(world, B, token_b).status_code == 200


def test_a_token_file_swapped_between_hosts_is_refused_by_placement_and_release(world: World) -> None:
    token_a = _good_token(world, A)
    b_token = agent_dir(world.workload, B) / "token.jwt"
    saved = b_token.read_bytes() if b_token.exists() else None
    b_token.write_text(token_a)  # someone with write access to the hosts' directories
    try:
        with pytest.raises(HostNotTrusted, match="its token is for host esx-a"):
            check_attested(world.identity, B)
        with pytest.raises(KeyProviderError, match="the token is for host 'esx-a'"):
            HostAgent(world.workload, B, world.identity).fetch_key(world.key_id)
    finally:
        b_token.unlink()
        if saved is not None:
            b_token.write_bytes(saved)


def test_a_token_that_expires_between_placement_check_and_key_fetch_gets_no_key(world: World) -> None:
    short = TokenIssuer(load_key(world.ta.token_key_path), world.ta.issuer_name,
                        lifetime=datetime.timedelta(seconds=2)).issue(
        host=A, ek_fingerprint=fingerprint(host_ek_certificates(world.workload / "hosts" / A)[0]),
        version="8.0.2", cluster="wl")
    (agent_dir(world.workload, A) / "token.jwt").write_text(short)
    assert check_attested(world.identity, A).host == A  # placement says yes now
    time.sleep(max(0.0, check_attested(world.identity, A).expires.timestamp() - time.time()) + 0.1)
    with pytest.raises(KeyProviderError, match="expired"):  # the agent without its TPM cannot renew it
        HostAgent(world.workload, A, world.identity).fetch_key(world.key_id)


# ------------------------------------------------------------------------------------------ challenges

def test_a_challenge_for_another_hosts_ek_and_an_answer_given_twice_are_refused(world: World) -> None:
    stolen = _challenge(world, B, A)  # host B asks to be challenged with host A's EK
    assert stolen.status_code == 403 and "not the one imported for this host" in stolen.text
    report = _report(world, A)
    with world.client(world.running.attestation_url, A) as client:
        first = client.post("/attest", content=report, headers={"content-type": "application/json"})
        again = client.post("/attest", content=report, headers={"content-type": "application/json"})
    assert first.status_code == 200
    assert again.status_code == 403 and "nonce: unknown or already used" in again.text and "token" not in again.json()
    with world.client(world.running.attestation_url, B) as client:  # A's report sent by B
        relayed = client.post("/attest", content=_report(world, A), headers={"content-type": "application/json"})
    assert relayed.status_code == 403 and "the report names host 'esx-a' but the client is host 'esx-b'" in relayed.text


def test_a_host_flooding_challenges_is_bounded_and_does_not_starve_another(world: World) -> None:
    limit = services.MAX_CHALLENGES_PER_HOST
    held = [Challenge.from_json(_challenge(world, B, B).text) for _ in range(limit)]
    flood = _challenge(world, B, B)
    assert flood.status_code == 429 and f"already holds {limit} unanswered challenges" in flood.text
    assert _good_token(world, A)  # host A's challenge is still issued and honoured
    report = world.evidence[B].answer(held[-1], host=B, version=world.hosts[B].version)
    with world.client(world.running.attestation_url, B) as client:  # answering one frees its place
        assert client.post("/attest", content=report.to_json(), headers={"content-type": "application/json"}
                           ).status_code == 200
    assert _challenge(world, B, B).status_code == 200
    assert _challenge(world, B, B).status_code == 429
    world.ta._write_config(world.ta.config())  # a configuration change: a new verifier, the old challenges void
    assert _challenge(world, B, B).status_code == 200


# -------------------------------------------------------------------------------- oversized and slow

def _wire(head: str) -> bytes:
    return head.replace("\n", "\r\n").encode()


def _raw_request(sock: ssl.SSLSocket, head: str) -> None:
    sock.sendall(_wire(head))


@dataclass
class _Refusal:
    answer: bytes  # what the server said before closing; empty if its close cut the connection first
    stopped_early: bool  # the server answered or closed before the client got all of its data out


def _send_until_refused(sock: ssl.SSLSocket, data: bytes, piece: int = 16 * 1024) -> _Refusal:
    """Send `data` piece by piece and stop as soon as the server answers or closes.

    A server that refuses early answers and closes while the client is still sending; the close
    of a socket with unread bytes resets the connection, which may reach the client before or
    after the answer. Both are a refusal, provided the server did not first take all of `data`."""
    sent, early = 0, b""
    while sent < len(data):
        if select.select([sock], [], [], 0)[0]:  # readable may be only a TLS session ticket
            timeout = sock.gettimeout()
            sock.setblocking(False)
            try:
                early = sock.recv(65536)
                break  # an answer, or b"" for a closed connection
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLError, ConnectionError):
                break
            finally:
                sock.settimeout(timeout)
        try:
            sent += sock.send(data[sent:sent + piece])
        except (ssl.SSLError, ConnectionError):
            break
    return _Refusal(early + _read_answer(sock), stopped_early=sent < len(data))


def _assert_refused(refusal: _Refusal, status: bytes) -> None:
    if refusal.answer:
        assert refusal.answer.startswith(b"HTTP/1.1 " + status), refusal.answer[:200]
    else:  # reset before the answer arrived: only a refusal if the server stopped reading early
        assert refusal.stopped_early, "the server read everything and never answered"


def _read_answer(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data


def test_an_oversized_body_is_refused_before_it_is_read(world: World) -> None:
    url = world.running.attestation_url
    with world.tls_socket(url, A) as sock:  # 100 MB announced, not one byte sent: answered at once
        started = time.monotonic()
        _raw_request(sock, f"POST /attest HTTP/1.1\nHost: x\nContent-Type: application/json\n"
                           f"Content-Length: {100 * 1024 * 1024}\n\n")
        answer = _read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 413") and b"larger than" in answer
        assert time.monotonic() - started < 5
    with world.tls_socket(url, A) as sock:  # no length announced: cut off once past the limit
        _raw_request(sock, "POST /attest HTTP/1.1\nHost: x\nContent-Type: application/json\n"
                           "Transfer-Encoding: chunked\n\n")
        chunk = b"x" * (1024 * 1024)
        body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * (services.MAX_BODY // len(chunk) + 1)
        _assert_refused(_send_until_refused(sock, body), b"413")
    with world.tls_socket(url, A) as sock:  # a head far larger than the limit: refused by the HTTP parser
        head = _wire(f"POST /attest HTTP/1.1\nHost: x\nX-Padding: {'a' * (64 * serving.MAX_HEAD)}\n\n")
        _assert_refused(_send_until_refused(sock, head), b"400")
    assert _good_token(world, A)


def test_long_strings_from_a_host_do_not_break_or_bloat_the_audit_chain(world: World) -> None:
    """Refusals are audited with what the caller sent in them; a megabyte of it must neither break the
    chain (each line hashes the whole previous line) nor land whole in the log."""
    size_before = world.ta.audit.path.stat().st_size
    answer = _release(world, B, None, "k" * 100_000)
    assert answer.status_code == 422 and "at most 256 characters" in answer.text
    report = json.loads(_report(world, A))
    report["host"] = "h" * 1_000_000
    with world.client(world.running.attestation_url, A) as client:
        refused = client.post("/attest", content=json.dumps(report), headers={"content-type": "application/json"})
    assert refused.status_code == 403 and "the report names host" in refused.text
    assert _good_token(world, A)
    assert world.ta.audit.verify()
    assert world.ta.audit.path.stat().st_size - size_before < 50_000
    last = world.ta.audit.entries()[-2]
    assert last["outcome"] == "refused" and "more characters)" in last["detail"]


def test_deeply_nested_json_is_refused_as_malformed_everywhere(world: World) -> None:
    nested = b"[" * 200_000 + b"]" * 200_000
    token = _good_token(world, A)
    with world.client(world.running.attestation_url, A) as client:
        for path in ("/challenge", "/attest"):
            answer = client.post(path, content=nested, headers={"content-type": "application/json"})
            assert answer.status_code == 422, (path, answer.text)
    with world.client(world.running.key_provider_url, A) as client:
        answer = client.post("/keys/release", content=nested, headers={"authorization": f"Bearer {token}"})
        assert answer.status_code == 422 and "not JSON" in answer.text


def test_slow_clients_are_cut_off(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "HEAD_TIMEOUT", 1.0)
    monkeypatch.setattr(services, "BODY_TIMEOUT", 1.0)
    url = world.running.attestation_url
    with world.tls_socket(url, A) as sock:  # connects and says nothing
        started = time.monotonic()
        assert _read_answer(sock) == b""
        assert time.monotonic() - started < 10
    with world.tls_socket(url, A) as sock:  # a head dripped a byte at a time
        started = time.monotonic()
        closed = False
        for byte in b"POST /attest HTTP/1.1\r\nHost: x\r\n":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        assert closed or _read_answer(sock) == b""
        assert time.monotonic() - started < 10
    with world.tls_socket(url, A) as sock:  # a head, then a body that never finishes
        _raw_request(sock, "POST /attest HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: 100\n\n{")
        answer = _read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert _good_token(world, A)


def test_connections_beyond_the_limit_are_answered_503(world: World) -> None:
    url = world.running.key_provider_url
    held = [world.tls_socket(url, A) for _ in range(serving.MAX_CONNECTIONS)]  # idle, holding their places
    try:
        with world.client(url, A) as client:
            assert client.get("/health").status_code == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the server notices the closed connections on its next loop turns
        with world.client(url, A) as client:
            status = client.get("/health").status_code
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200


# ------------------------------------------------------------------------------------------ key release

def test_key_ids_of_another_cluster_and_unknown_ones_answer_alike(world: World) -> None:
    world.ta.record_key("other-cluster-key", "another-cluster")
    token = _good_token(world, A)
    foreign, unknown = (_release(world, A, token, k) for k in ("other-cluster-key", "no-such-key"))
    assert foreign.status_code == unknown.status_code == 403
    assert (foreign.text.replace("other-cluster-key", "K") == unknown.text.replace("no-such-key", "K"))
    assert "not created for the trusted cluster" in foreign.text
    # without a token the answer does not depend on the key id at all
    refused = [_release(world, B, None, k) for k in (world.key_id, "no-such-key")]
    assert {r.status_code for r in refused} == {401}
    assert refused[0].text.replace(world.key_id, "K") == refused[1].text.replace("no-such-key", "K")
    with world.client(world.running.key_provider_url, None) as client:  # the management plane: never material
        answer = client.post("/keys/release", json={"key_id": world.key_id}, headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 403 and "key" not in answer.json()
    with world.client(world.running.key_provider_url, A) as client:  # a host may not create keys
        assert client.post("/keys").status_code == 403


# ------------------------------------------------------------------------------------- names and files

def test_host_names_with_path_characters_are_refused(world: World) -> None:
    before = world.ta.config_path.read_bytes()
    bundle = {"cluster": "wl", "management_csr": "x", "hosts": [
        {"name": "../../escape", "ek_certificates": [], "csr": "x"}]}
    with pytest.raises(TrustAuthorityError, match="not a plain name"):
        world.ta.admin("ta-admin", PASSWORD).import_hosts(bundle)
    assert world.ta.config_path.read_bytes() == before
    with pytest.raises(TrustAuthorityError, match="not a plain name"):
        world.ta.record_attestation("../escape", {})
    with pytest.raises(WorkloadTrustError, match="not a plain name"):
        agent_dir(world.workload, "../../etc")
    assert not (world.ta.root.parent / "escape.json").exists()


def test_files_at_rest_are_private(world: World) -> None:
    HostAgent(world.workload, A, world.identity, world.evidence[A], version=world.hosts[A].version).attest()
    root = world.ta.root
    private_files = [root / "token-key.pem", root / "config.json", root / "audit.jsonl", root / "issued.json",
                     root / "keys.json", root / "attestations" / f"{A}.json", world.ta.ca.key_path,
                     agent_dir(world.workload, A) / "token.jwt", agent_dir(world.workload, A) / "client-key.pem",
                     cluster_dir(world.workload) / "client-key.pem"]
    for path in private_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for directory in (root, root / "attestations", world.ta.ca.key_path.parent, agent_dir(world.workload, A)):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_an_edited_deleted_or_cut_audit_line_is_reported(world: World, tmp_path: Path) -> None:
    home = tmp_path / "copy"
    shutil.copytree(world.ta.root, home / "trust-authority")
    audit = TrustAuthority(home).audit
    lines = audit.path.read_bytes().splitlines(keepends=True)
    anchor = audit.head()  # what an operator keeps outside the Trust Authority's home
    assert len(lines) > 3 and audit.verify(anchor) and anchor == f"{len(lines)}:{hashlib.sha256(lines[-1].rstrip()).hexdigest()}"
    audit.path.write_bytes(b"".join(lines[:1] + lines[2:]))  # a refusal deleted from the middle
    assert not audit.verify()
    audit.path.write_bytes(b"".join(lines[:-2]))  # the tail cut: the chain alone still holds ...
    assert audit.verify()
    assert not audit.verify(anchor)  # ... the anchor kept elsewhere does not
    done = subprocess.run([sys.executable, "-m", "vmcrypt", "--home", str(home), "trust", "audit", "--json",
                           "--anchor", anchor], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["intact"] is False
    audit.path.write_bytes(b"".join(lines) + lines[-1])  # appended lines keep an older anchor valid
    assert not audit.verify()  # (a duplicated line breaks the chain)
    audit.path.write_bytes(b"".join(lines))
    audit.append("someone", "later event", "ok")
    assert audit.verify(anchor)
    with pytest.raises(TrustAuthorityError, match="not COUNT:SHA256"):
        audit.verify("the last line")
