"""Latency of TPM key operations over TCP: our vTPM server next to swtpm in the same run.

Each server runs as its own process on 127.0.0.1 and is driven with raw TPM
2.0 commands over one persistent connection. Each operation is one benchmark
group holding both servers, so the table shows them side by side:

- CreatePrimary ECC NIST P-256 storage key (owner hierarchy, password session,
  restricted|decrypt|fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth,
  AES-128-CFB, NULL scheme); the new handle is flushed before the next round,
  outside the timing
- FlushContext of such a primary (created before each round, outside the timing)
- CreatePrimary RSA 2048 with the same attributes, cold: every call carries a
  template whose ``unique`` field the TPM has never seen (same server and state)
- CreatePrimary RSA 2048, repeated: the identical template every call (our
  vTPM caches RSA primaries by seed and template)
- Sign of a 32-byte digest, unrestricted ECC P-256 ECDSA-SHA256 key, NULL ticket
- Quote of PCRs sha256:0-7 with a restricted RSA 2048 RSASSA-SHA256 key

Every response must be TPM_RC_SUCCESS. The CreatePrimary benchmarks use
``benchmark.pedantic`` with few rounds. Needs `swtpm`; without it the
benchmarks fail (never skip).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from support.servers import require_swtpm, side_by_side
from support.tpm_helpers import TpmConnection, flush_context, response_code
from support.tpm_key_helpers import (
    KeyTargets,
    UniqueSource,
    check,
    create_primary,
    ecc_storage_template,
    out_handle,
    prepare_key_targets,
    quote_sender,
    release_key_targets,
    rsa_storage_template,
    sign_sender,
)

SERVERS = ("vtpm", "swtpm")
CONNECTION_TIMEOUT = 120.0  # seconds; a cold RSA 2048 primary in our vTPM takes up to a few seconds
ECC_TEMPLATE = ecc_storage_template()
RSA_TEMPLATE = rsa_storage_template()


@dataclass
class Target:
    conn: TpmConnection
    keys: KeyTargets


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """One started server of each kind, a persistent connection to it, and its signing keys loaded."""
    require_swtpm()
    base = tmp_path_factory.mktemp("tpm-key-ops")
    prepared: dict[str, Target] = {}
    with side_by_side(base) as servers:
        try:
            for name, server in servers.items():
                conn = server.connect(timeout=CONNECTION_TIMEOUT)
                prepared[name] = Target(conn, prepare_key_targets(conn))
            yield prepared
        finally:
            for target in prepared.values():
                try:
                    release_key_targets(target.conn, target.keys)
                finally:
                    target.conn.close()


@pytest.fixture(scope="module")
def uniques() -> UniqueSource:
    return UniqueSource()


def _label(benchmark, server: str, group: str) -> None:
    benchmark.group = group
    benchmark.name = f"{server}: {group}"
    benchmark.extra_info["server"] = server


def _pedantic_primary(benchmark, conn: TpmConnection, template_for, what: str, rounds: int, warmup: int) -> None:
    """Time CreatePrimary only: the handle of the previous round is flushed in the (untimed) setup."""
    created: list[int] = []
    transact = conn.transact

    def flush_previous():
        while created:
            check(transact(flush_context(created.pop())), f"FlushContext after {what}")
        return (create_primary(template_for()),), {}

    def create_one(command: bytes) -> bytes:
        response = transact(command)
        created.append(out_handle(check(response, what)))
        return response

    try:
        response = benchmark.pedantic(create_one, setup=flush_previous, rounds=rounds, warmup_rounds=warmup,
                                      iterations=1)
    finally:
        flush_previous()
    assert response_code(response) == 0


@pytest.mark.parametrize("server", SERVERS)
def test_create_primary_ecc(benchmark, targets, server: str) -> None:
    _label(benchmark, server, "CreatePrimary ECC P-256 storage")
    _pedantic_primary(benchmark, targets[server].conn, lambda: ECC_TEMPLATE, "CreatePrimary(ECC P-256)",
                      rounds=100, warmup=10)


@pytest.mark.parametrize("server", SERVERS)
def test_flush_context(benchmark, targets, server: str) -> None:
    _label(benchmark, server, "FlushContext of an ECC primary")
    transact = targets[server].conn.transact

    def new_primary():
        handle = out_handle(check(transact(create_primary(ECC_TEMPLATE)), "CreatePrimary(ECC P-256)"))
        return (flush_context(handle),), {}

    def flush(command: bytes) -> bytes:
        return check(transact(command), "FlushContext")

    response = benchmark.pedantic(flush, setup=new_primary, rounds=100, warmup_rounds=10, iterations=1)
    assert response_code(response) == 0


@pytest.mark.parametrize("server", SERVERS)
def test_create_primary_rsa_cold(benchmark, targets, uniques, server: str) -> None:
    _label(benchmark, server, "CreatePrimary RSA 2048 cold (new unique each call)")
    benchmark.extra_info["cold"] = "unique = 8-byte run tag + 8-byte counter, never repeated; same server and state"
    _pedantic_primary(benchmark, targets[server].conn, lambda: rsa_storage_template(uniques.next_for(server)),
                      "CreatePrimary(RSA 2048, cold)", rounds=6, warmup=1)


@pytest.mark.parametrize("server", SERVERS)
def test_create_primary_rsa_repeated(benchmark, targets, server: str) -> None:
    _label(benchmark, server, "CreatePrimary RSA 2048 repeated (identical template)")
    _pedantic_primary(benchmark, targets[server].conn, lambda: RSA_TEMPLATE, "CreatePrimary(RSA 2048, repeated)",
                      rounds=20, warmup=2)


@pytest.mark.parametrize("server", SERVERS)
def test_sign_ecdsa(benchmark, targets, server: str) -> None:
    _label(benchmark, server, "Sign ECDSA P-256 SHA-256 (32-byte digest)")
    target = targets[server]
    response = benchmark(sign_sender(target.conn, target.keys.signer))
    assert response_code(response) == 0


@pytest.mark.parametrize("server", SERVERS)
def test_quote_rsa(benchmark, targets, server: str) -> None:
    _label(benchmark, server, "Quote RSA 2048 RSASSA-SHA256 sha256:0-7")
    target = targets[server]
    response = benchmark(quote_sender(target.conn, target.keys.attester))
    assert response_code(response) == 0
