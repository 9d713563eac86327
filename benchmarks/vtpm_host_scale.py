"""Side by side in one run: the memory of 1000 vTPMs in one `vtpm host` against one swtpm process.

Provisions N vTPMs in this process, each manufactured with fresh seeds, an
ECC P-256 EK from the TCG default template and its EK certificate (signed by
a P-384 CA made for the run) in NV 0x01C0000A, two more owner NV indices, and
its own encrypted state file (an EncryptedStateStore under one key file).
Then starts one `vtpm host`, adds all N over its control socket (each on its
own Unix data and control sockets), and touches every one from a client:
Startup(CLEAR), NV_Read of the EK certificate (compared with the one issued)
and PCR_Read. Prints the host's RSS before, after the adds (nothing loaded
yet) and after the touch, the growth per vTPM (target <= 200 KiB), and next
to it the RSS of one swtpm process (which serves one vTPM). Last line:
``ratio: X.XX`` = growth per vTPM / swtpm RSS per process.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from support.pki import make_ca
from support.servers import add_endpoint_options, start_swtpm, start_vtpm_host, require_swtpm_or_exit, working_directory
from vmcrypt.vtpm_key_file import EncryptedStateStore
from vmcrypt.vtpm_provision import IDENTITY, ek_public_key
from certs.ek import build_ek_certificate
from vtpm.client import EK_CERT_NV_ATTRIBUTES, TpmClient
from vtpm.constants import ALG, RH, TPMA_NV
from vtpm.ek import EkKind, ek_template
from vtpm.engine import Tpm
from vtpm.state import TpmState
from vtpm.transport import InProcessTransport

OWNER_NV = (0x01500010, 0x01500011)
OWNER_ATTRS = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA
CERT_INDEX = ek_template(EkKind.ECC_P256).cert_index


def provision(directory: Path, key: bytes, ca: tuple, number: int) -> bytes:
    """One manufactured vTPM with its EK certificate, saved encrypted in ``directory``; the certificate's DER."""
    tpm = Tpm(TpmState.manufacture())
    client = TpmClient(InProcessTransport(tpm))
    client.startup()
    ek = ek_public_key(client, EkKind.ECC_P256)
    cert = build_ek_certificate(ek, IDENTITY, ca[0], ca[1], secrets.randbits(63) | 1 << 62)
    der = cert.public_bytes(serialization.Encoding.DER)
    client.nv_define(CERT_INDEX, EK_CERT_NV_ATTRIBUTES, len(der))
    client.nv_write(CERT_INDEX, der)
    for index in OWNER_NV:
        client.nv_define(index, OWNER_ATTRS, 16, auth_handle=RH.OWNER)
        client.nv_write(index, number.to_bytes(16, "big"), auth_handle=RH.OWNER)
    client.shutdown()
    EncryptedStateStore(directory, key).save(tpm.state.to_bytes())
    return der


def touch(path: Path) -> bytes:
    with TpmClient.swtpm_unix(str(path), timeout=60.0) as client:
        client.startup()
        der = client.nv_read(CERT_INDEX, client.nv_read_public(CERT_INDEX))
        client.pcr_read({ALG.SHA256: range(8)})
        return der


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="vTPMs in the host (default 1000)")
    add_endpoint_options(parser)
    args = parser.parse_args()
    if not 1 <= args.count <= 5000:
        parser.error("--count must be 1..5000")
    require_swtpm_or_exit(parser)
    with working_directory(args, "vtpm-host-scale-") as base:
        key = secrets.token_bytes(32)
        key_file = base / "state.key"
        key_file.write_bytes(key)
        os.chmod(key_file, 0o600)
        ca = make_ca("benchmark EK CA")
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:  # the fsyncs of the saves overlap
            issued = list(pool.map(lambda n: provision(base / f"vtpm{n}", key, ca, n), range(args.count)))
        provisioning = time.perf_counter() - started

        with start_vtpm_host(base / "run" / "host.sock", base / "host.log") as host, \
                start_swtpm(base / "swtpm-state") as swtpm:
            client = host.client()
            client.ping()
            rss_start = host.rss_kib()
            started = time.perf_counter()
            for n in range(args.count):
                client.add(f"vtpm{n}", state=str(base / f"vtpm{n}"), key_file=str(key_file),
                           data_unix=str(base / "run" / f"d{n}"))
            adding = time.perf_counter() - started
            rss_added = host.rss_kib()
            started = time.perf_counter()
            for n in range(args.count):
                if touch(base / "run" / f"d{n}") != issued[n]:
                    raise SystemExit(f"vtpm{n}: the EK certificate read back differs from the one issued")
            touching = time.perf_counter() - started
            rss_touched = host.rss_kib()
            listed = client.list()
            loaded = sum(v["loaded"] for v in listed)
            swtpm_rss = swtpm.rss_kib()

    per_added = (rss_added - rss_start) / args.count
    per_vtpm = (rss_touched - rss_start) / args.count
    print(f"{args.count} vTPMs, each with an ECC P-256 EK certificate, 2 owner NV indices and its own encrypted state")
    print(f"provisioning (in-process)          {provisioning:8.1f} s   ({provisioning / args.count * 1000:.1f} ms per vTPM)")
    print(f"adding to the host                 {adding:8.1f} s   ({adding / args.count * 1000:.1f} ms per vTPM)")
    print(f"touching all (Startup, NV_Read EK cert, PCR_Read)"
          f" {touching:6.1f} s   ({touching / args.count * 1000:.1f} ms per vTPM; {loaded} loaded)")
    print(f"{'':34} {'vtpm host':>12} {'swtpm':>12}")
    print(f"{'RSS at start':34} {rss_start:9d} KiB {swtpm_rss:9d} KiB")
    print(f"{'RSS after adding (none loaded)':34} {rss_added:9d} KiB")
    print(f"{'RSS after touching all':34} {rss_touched:9d} KiB")
    print(f"{'RSS per vTPM, added':34} {per_added:9.1f} KiB")
    print(f"{'RSS per vTPM, loaded and used':34} {per_vtpm:9.1f} KiB {swtpm_rss:9d} KiB  (target <= 200 KiB)")
    print(f"ratio: {per_vtpm / swtpm_rss:.3f}")
    return 0 if per_vtpm <= 200 else 1


if __name__ == "__main__":
    sys.exit(main())
