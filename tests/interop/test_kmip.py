"""The KMIP key provider against real `pykmip-server` processes on loopback, mutual TLS.

Bad inputs tried: a destroyed key, a server whose certificate our CA did not
issue, a killed first server (failover), every server down (clear error, VM
files untouched).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.files import snapshot
from support.kmip_server import KmipServer, Pki, make_pki, register_copy, start_server
from vmcrypt.errors import KeyNotFoundError, KeyProviderError
from vmcrypt.providers.kmip import KmipKeyProvider, KmipSettings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("kmip-pki"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[KmipServer]:
    served = start_server(tmp_path_factory.mktemp("kmip-server"), pki)
    yield served
    served.stop()


def provider_for(pki: Pki, *servers: str, cache_seconds: float = 300, ca: Path | None = None) -> KmipKeyProvider:
    settings = KmipSettings(tuple(servers), str(ca or pki.ca), str(pki.client_cert), str(pki.client_key),
                            timeout=2.0, cache_seconds=cache_seconds)
    return KmipKeyProvider("kmip-test-id", "kmip-test", settings)


def test_create_get_destroy(pki: Pki, server: KmipServer) -> None:
    provider = provider_for(pki, server.address, cache_seconds=0)
    key_id = provider.create_key()
    material = provider.get_key(key_id)
    assert len(material) == 32
    assert provider.get_key(key_id) == material
    assert key_id in [info.key_id for info in provider.list_keys()]
    provider.destroy_key(key_id)
    with pytest.raises(KeyNotFoundError, match=key_id):
        provider.get_key(key_id)
    with pytest.raises(KeyNotFoundError):
        provider.destroy_key(key_id)
    provider.close()
    log = server.log.read_text()
    assert key_id in log or "Locate" in log
    assert material.hex() not in log and repr(material)[2:-1] not in log


def test_cache_avoids_round_trips(pki: Pki, server: KmipServer) -> None:
    provider = provider_for(pki, server.address, cache_seconds=300)
    key_id = provider.create_key()
    before = (provider.round_trips, provider.fetches)
    first = provider.get_key(key_id)
    assert provider.fetches - before[1] == 1
    assert provider.round_trips - before[0] == 1  # one Get at the uid the creating server gave
    middle = provider.round_trips
    assert provider.get_key(key_id) == first
    assert provider.round_trips == middle  # served from memory: no round trip at all
    provider.destroy_key(key_id)  # also drops the cached copy
    with pytest.raises(KeyNotFoundError):
        provider.get_key(key_id)
    provider.close()


def test_wrong_ca_is_refused(tmp_path: Path, pki: Pki, server: KmipServer) -> None:
    other = make_pki(tmp_path / "other-pki", ca_name="some other CA")
    provider = provider_for(pki, server.address, ca=other.ca)
    with pytest.raises(KeyProviderError) as caught:
        provider.create_key()
    message = str(caught.value)
    assert server.address in message and "TLS" in message and "CERTIFICATE_VERIFY_FAILED" in message


@pytest.mark.slow
def test_cli_encrypts_and_decrypts_a_vm(tmp_path: Path, pki: Pki, server: KmipServer, vmcrypt_cli) -> None:
    vmcrypt_cli("provider", "add-kmip", "kms", "--server", server.address, "--ca", str(pki.ca),
                "--cert", str(pki.client_cert), "--key", str(pki.client_key), "--timeout", "2", check=True)
    probe = json.loads(vmcrypt_cli("provider", "test", "kms", "--json", check=True).stdout)
    assert probe["ok"] and probe["server"] == server.address and probe["round_trips"] > 0
    vm = tmp_path / "ds" / "vm1"
    vmcrypt_cli("vm", "create", str(vm), check=True)
    clear = snapshot(vm)
    vmcrypt_cli("encrypt", str(vm), "--provider", "kms", check=True)
    assert snapshot(vm)["vm1.nvram"] != clear["vm1.nvram"]
    info = json.loads(vmcrypt_cli("describe", str(vm), "--json", check=True).stdout)
    assert info["key_provider"]["name"] == "kms" and info["key_id"]
    vmcrypt_cli("decrypt", str(vm), check=True)
    assert snapshot(vm)["vm1.nvram"] == clear["vm1.nvram"]
    vmcrypt_cli("provider", "set-default", "kms", check=True)
    rows = json.loads(vmcrypt_cli("provider", "list", "--json", check=True).stdout)
    assert [r["name"] for r in rows if r["default"]] == ["kms"]


@pytest.mark.slow
def test_failover_then_all_servers_down(tmp_path: Path, pki: Pki, vmcrypt_cli) -> None:
    first = start_server(tmp_path / "kms1", pki)
    second = start_server(tmp_path / "kms2", pki)
    try:
        vmcrypt_cli("provider", "add-kmip", "cluster", "--server", first.address, "--server", second.address,
                    "--ca", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key),
                    "--cache-seconds", "0", check=True)
        vm = tmp_path / "ds" / "vm2"
        vmcrypt_cli("vm", "create", str(vm), check=True)
        vmcrypt_cli("encrypt", str(vm), "--provider", "cluster", check=True)
        key_id = json.loads(vmcrypt_cli("describe", str(vm), "--json", check=True).stdout)["key_id"]
        provider = provider_for(pki, first.address, second.address, cache_seconds=0)
        material = provider.get_key(key_id)
        assert provider.last_server == first.address
        register_copy(pki, second, key_id, material)

        first.kill()
        assert provider.get_key(key_id) == material
        assert provider.last_server == second.address

        provider.close()  # a server waits for open sessions before it stops
        second.stop()
        before = snapshot(vm)
        result = vmcrypt_cli("decrypt", str(vm))
        assert result.returncode == 1
        assert "no KMIP server of provider 'cluster' answered" in result.stderr
        assert first.address in result.stderr and second.address in result.stderr
        assert snapshot(vm) == before
        with pytest.raises(KeyProviderError, match="connection refused"):
            provider.get_key(key_id)
    finally:
        first.stop()
        second.stop()
