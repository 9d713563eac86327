"""What the Trust Authority's services cost over the wire, against a bare mutual-TLS request in the same run.

A Trust Authority (native key store, so no KMIP server is timed) serves its attestation and key
provider services from a thread of this process on loopback with mutual TLS; one trusted host is
booted into a real engine. Timed, each on a new connection (a new TLS handshake, as a host agent
makes them):

- ``health``: ``GET /health`` on the key provider service: the reference (handshake + one request);
- ``release``: ``POST /keys/release`` with a token: token verification (ES256), the release rules,
  the key from the key store, the audit line (fsync);
- ``attest``: the host agent's whole attestation: challenge (MakeCredential), the host TPM's
  ActivateCredential and Quote, the verifier, the token, the audit line;
- ``token``: issuing and verifying one token in-process (no network).

Wall-clock medians of ``--number`` runs; printed as milliseconds and as ratios to ``health``.

    python benchmarks/trust_services.py [--number 30]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # support/ (-> tests/support)

import httpx  # noqa: E402

from support.timing import median_ms  # noqa: E402
from support.trust import boot_trusted_host, image, manufacturer  # noqa: E402
from vmcrypt.trust.agent import HostAgent  # noqa: E402
from vmcrypt.trust.authority import TrustAuthority  # noqa: E402
from vmcrypt.trust.collect import HostEvidence  # noqa: E402
from vmcrypt.trust.host_identity import host_ek_certificates  # noqa: E402
from vmcrypt.trust.services import start_in_thread  # noqa: E402
from vmcrypt.trust.workload import export_host_identities, hosts_dir, import_authority  # noqa: E402
from vmcrypt.providers.trusted import TrustedKeyProvider  # noqa: E402


def run(number: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        workload, ta_home = root / "workload", root / "ta"
        booted = boot_trusted_host(workload, "esx-01")
        password = secrets.token_urlsafe(16)
        ta = TrustAuthority(ta_home)
        ta.enable("bench")
        ta.add_admin("ta-admin", password=password)
        admin = ta.admin("ta-admin", password)
        admin.import_hosts(export_host_identities(workload, "wl", {"esx-01": host_ek_certificates(
            hosts_dir(workload) / "esx-01")}))
        admin.add_image(image().manifest.to_json())
        admin.add_manufacturer_ca(manufacturer(workload).certificate_pem())
        admin.use_native_store()
        services = start_in_thread(ta)
        try:
            identity = import_authority(workload, ta.identity({"attestation": services.attestation_url,
                                                               "keys": services.key_provider_url}))
            agent = HostAgent(workload, "esx-01", identity, HostEvidence(booted), version=booted.version)
            agent.attest()
            key_id = TrustedKeyProvider(workload, "bench", "bench", "bench").create_key()
            context = identity.ssl_context(agent.directory)

            def health() -> None:
                with httpx.Client(base_url=services.key_provider_url, verify=context) as client:
                    client.get("/health").raise_for_status()

            issuer, verifier = ta.token_issuer(), identity.token_verifier()

            def token() -> None:
                verifier.verify(issuer.issue(host="esx-01", ek_fingerprint="00", version="8.0.2", cluster="wl"))

            health()  # warm
            figures = {"health": median_ms(health, number),
                       "release": median_ms(lambda: agent.fetch_key(key_id), number),
                       "attest": median_ms(agent.attest, max(5, number // 3)),
                       "token": median_ms(token, number * 10)}
        finally:
            services.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=30, help="timed runs per figure (default 30)")
    args = parser.parse_args(argv)
    figures = run(args.number)
    reference = figures["health"]
    print(f"bare mutual-TLS request (GET /health, new connection): {reference:7.2f} ms   (reference)")
    print(f"key release with token (new connection):               {figures['release']:7.2f} ms   "
          f"x{figures['release'] / reference:.2f}")
    print(f"host attestation, both rounds + TPM work:              {figures['attest']:7.2f} ms   "
          f"x{figures['attest'] / reference:.2f}")
    print(f"token issue + verify in-process:                       {figures['token']:7.3f} ms")
    return 0


def test_trust_services_cost() -> None:
    """pytest: every figure is measured (timings are printed by the script, not asserted)."""
    figures = run(5)
    assert all(value > 0 for value in figures.values())


if __name__ == "__main__":
    sys.exit(main())
