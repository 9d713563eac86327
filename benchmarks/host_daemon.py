"""What asking a running host over its endpoint costs, against the same attestation in-process, same run.

Two hosts of one management home boot the same image: one in this process (``boot_host``), one as
its own process (``vmcrypt host run``). Timed with the 6.7 view's attester (``tpm_attester``: challenge
with MakeCredential, the host's ActivateCredential and Quote, the verifier, the VIB signature check):

- ``in-process``: the host booted here (the reference);
- ``daemon``: the host behind ``HOME/hosts/NAME/run/host.sock`` (describe, identity, answer: three
  line-JSON round trips on a Unix socket, the report's logs in base64);
- ``ping``: one round trip to the daemon (a new connection, one line each way).

Wall-clock medians of ``--number`` runs; printed as milliseconds and as ratios to ``in-process``.

    python benchmarks/host_daemon.py [--number 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # support/ (-> tests/support)

from support.host_daemon import start_host  # noqa: E402
from support.timing import median_ms  # noqa: E402
from support.trust import boot_trusted_host, image, manufacturer  # noqa: E402
from vmcrypt.trust.host_attestation import HostAttestationSettings, host_directory, tpm_attester  # noqa: E402
from vmcrypt.trust.host_endpoint import RemoteHost  # noqa: E402


def run(number: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        home = Path(directory) / "home"
        local = boot_trusted_host(home, "esx-local")
        manifest = Path(directory) / "image.json"
        manifest.write_text(image().manifest.to_json())
        settings = HostAttestationSettings((manufacturer(home).certificate_pem(),), ())
        attester = tpm_attester(settings, {"esx-local": local})
        with start_host(home, "esx-daemon", "--image", str(manifest)):
            for name in ("esx-local", "esx-daemon"):
                outcome = attester(name, host_directory(home, name))
                assert outcome is not None and outcome.passed, (name, outcome)
            remote = RemoteHost(host_directory(home, "esx-daemon"))
            return {
                "in-process": median_ms(lambda: attester("esx-local", host_directory(home, "esx-local")), number),
                "daemon": median_ms(lambda: attester("esx-daemon", host_directory(home, "esx-daemon")), number),
                "ping": median_ms(remote.ping, number),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20, help="runs per measurement (default 20)")
    args = parser.parse_args()
    results = run(args.number)
    reference = results["in-process"]
    for name, ms in results.items():
        print(f"{name:12} {ms:8.2f} ms   x{ms / reference:5.2f} of in-process")


if __name__ == "__main__":
    main()
