"""Round-trip latency of single TPM commands over TCP: our vTPM server next to swtpm in the same run.

Each server runs as its own process on 127.0.0.1 and is driven over one
persistent connection. Each command is one benchmark group holding both
servers, so the table shows them side by side:

- GetRandom(16)
- PCR_Read, sha256 PCR 16
- PCR_Extend, sha256 digest into PCR 16, password session
- NV_Read, 32 bytes from an owner-defined NV index, owner password session
- NV_Write, 32 bytes into that NV index, owner password session
  (two payloads in turn, so that every write changes the stored data)

Needs `swtpm`; without it the benchmarks fail (never skip).
"""

from __future__ import annotations


import pytest

from support.servers import require_swtpm, side_by_side
from support.tpm_helpers import (
    command_sender,
    latency_commands,
    prepare_latency_target,
    response_code,
)

SERVERS = ("vtpm", "swtpm")
COMMANDS = latency_commands()


@pytest.fixture(scope="module")
def connections(tmp_path_factory):
    """One started server of each kind with a persistent, prepared connection to it."""
    require_swtpm()
    base = tmp_path_factory.mktemp("tpm-latency")
    conns = {}
    with side_by_side(base) as servers:
        try:
            for name, server in servers.items():
                conns[name] = server.connect()
                prepare_latency_target(conns[name])
            yield conns
        finally:
            for conn in conns.values():
                conn.close()


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_latency(benchmark, connections, command: str, server: str) -> None:
    variants = COMMANDS[command]
    benchmark.group = command
    benchmark.name = f"{server}: {command}"
    benchmark.extra_info["server"] = server
    benchmark.extra_info["command_bytes"] = len(variants[0])
    response = benchmark(command_sender(connections[server], variants))
    assert response_code(response) == 0, f"{server} {command}: response {response.hex()}"
