"""KEK fetches from the KMIP provider: one real `pykmip-server` on loopback, mutual TLS.

One group, two benchmarks over one persistent connection:

- uncached: every get is one KMIP Get at the uid in the key id (the cache is off)
- cached: every get is served from the provider's in-memory KEK cache

Each benchmark also records the round trips and fetches per get in its
``extra_info`` so the table's numbers can be checked against the counters.
"""

from __future__ import annotations


import pytest

from support.kmip_server import make_pki, start_server
from vmcrypt.providers.kmip import KmipKeyProvider, KmipSettings


@pytest.fixture(scope="module")
def kms(tmp_path_factory):
    directory = tmp_path_factory.mktemp("kmip-bench")
    pki = make_pki(directory / "pki")
    server = start_server(directory / "server", pki)
    yield server, pki
    server.stop()


def _provider(kms, cache_seconds: float) -> KmipKeyProvider:
    server, pki = kms
    settings = KmipSettings((server.address,), str(pki.ca), str(pki.client_cert), str(pki.client_key),
                            timeout=2.0, cache_seconds=cache_seconds)
    return KmipKeyProvider("bench-id", "bench", settings)


@pytest.mark.parametrize("cache_seconds", [0, 300], ids=["uncached", "cached"])
def test_kek_fetch(benchmark, kms, cache_seconds: float) -> None:
    provider = _provider(kms, cache_seconds)
    key_id = provider.create_key()
    provider.get_key(key_id)  # connection open and, when caching, the KEK in memory
    start_trips, start_fetches, calls = provider.round_trips, provider.fetches, 0

    def fetch() -> bytes:
        nonlocal calls
        calls += 1
        return provider.get_key(key_id)

    benchmark.group = "kmip-kek-fetch"
    assert len(benchmark(fetch)) == 32
    benchmark.extra_info["round_trips_per_get"] = (provider.round_trips - start_trips) / calls
    benchmark.extra_info["fetches_per_get"] = (provider.fetches - start_fetches) / calls
    if cache_seconds:
        assert provider.round_trips == start_trips
    else:
        assert provider.fetches - start_fetches == calls
        assert provider.round_trips - start_trips == calls  # one round trip per uncached get
    provider.destroy_key(key_id)
    provider.close()
