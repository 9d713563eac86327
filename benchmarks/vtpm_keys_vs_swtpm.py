"""Side by side in one run: latency of key operations in our vTPM server against swtpm over TCP.

Starts both servers on 127.0.0.1 (fresh state in a temporary directory; ours
as ``python -m vtpm serve --state DIR --port P --startup-clear``), opens one
persistent connection to each and times raw TPM 2.0 commands:

- CreatePrimary ECC NIST P-256 storage key (owner hierarchy, password session,
  restricted|decrypt|fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth,
  AES-128-CFB, NULL scheme). The FlushContext of each new handle is timed on
  its own and shown as a separate row.
- CreatePrimary RSA 2048 with the same attributes:
  * first: the very first command sent to the freshly started TPM (one
    sample per server; identical template, so it also fills our vTPM's cache);
  * cold: every call carries a template whose ``unique`` field (8-byte random
    run tag + 8-byte counter) this TPM has never seen, so the key is derived
    anew and no cache can answer; same server process and state throughout;
  * repeated: the identical template every call (our vTPM caches RSA
    primaries by seed and template).
- Sign of a 32-byte digest with an unrestricted ECC P-256 ECDSA-SHA256 key
  (created and loaded once), NULL hashcheck ticket.
- Quote of PCRs sha256:0-7 with a restricted RSA 2048 RSASSA-SHA256 key.

Round trips alternate between the servers so that machine noise hits both
alike. Every response must be TPM_RC_SUCCESS (only during the setup is a
TPM_RC_RETRY resubmitted, and reported). Prints median and 90th percentile
per operation, the ratio of medians ours/swtpm, the resident memory of both
servers, and last a line ``ratio: X.XX``: the geometric mean of the median
ratios of the five key operations (ECC primary, RSA primary cold, RSA primary
repeated, Sign, Quote; the first-creation and FlushContext rows are shown but
not included).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from support.servers import add_endpoint_options, side_by_side, require_swtpm_or_exit, swtpm_path, working_directory
from support.tpm_helpers import TpmConnection, flush_context
from support.tpm_key_helpers import (
    CommandFailed,
    UniqueSource,
    check,
    create_primary,
    ecc_storage_template,
    out_handle,
    prepare_key_targets,
    quote,
    release_key_targets,
    rsa_storage_template,
    sign,
    transact_resubmitting,
)

SERVERS = ("vtpm", "swtpm")
CONNECTION_TIMEOUT = 120.0  # seconds; generous: a cold RSA 2048 primary on a loaded machine can take a second
clock = time.perf_counter


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def primary_runner(conn: TpmConnection, template_for: Callable[[], bytes], what: str,
                   flush_samples: list[float] | None = None) -> Callable[[], float]:
    """One timed CreatePrimary (template built before the clock starts); then its FlushContext, timed apart."""
    transact = conn.transact

    def run() -> float:
        command = create_primary(template_for())
        start = clock()
        response = transact(command)
        elapsed = clock() - start
        handle = out_handle(check(response, what))
        flush = flush_context(handle)
        start = clock()
        response = transact(flush)
        flush_elapsed = clock() - start
        check(response, f"FlushContext after {what}")
        if flush_samples is not None:
            flush_samples.append(flush_elapsed)
        return elapsed

    return run


def command_runner(conn: TpmConnection, command: bytes, what: str) -> Callable[[], float]:
    transact = conn.transact

    def run() -> float:
        start = clock()
        response = transact(command)
        elapsed = clock() - start
        check(response, what)
        return elapsed

    return run


def measure(runners: dict[str, Callable[[], float]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per timed command for each server, alternating servers every round."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name].append(run())
    return samples


def first_rsa_primary(conn: TpmConnection, notes: list[str]) -> float:
    """The first command on a fresh TPM: CreatePrimary RSA 2048 (identical template), resubmitted on TPM_RC_RETRY."""
    command = create_primary(rsa_storage_template())
    start = clock()
    response = transact_resubmitting(conn, command, "first CreatePrimary(RSA 2048)", notes)
    elapsed = clock() - start
    check(conn.transact(flush_context(out_handle(response))), "FlushContext after the first RSA primary")
    return elapsed


def fmt(seconds: float) -> str:
    if seconds >= 0.1:
        return f"{seconds * 1e3:8.0f} ms"
    if seconds >= 0.001:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds * 1e6:8.1f} us"


def swtpm_version() -> str:
    try:
        out = subprocess.run([swtpm_path(), "--version"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "swtpm (version unknown)"
    return out.splitlines()[0].strip() if out else "swtpm (version unknown)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200,
                        help="timed rounds for ECC CreatePrimary, Sign and Quote (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed rounds before those (default 20)")
    parser.add_argument("--repeat-rounds", type=int, default=40,
                        help="timed rounds of the repeated RSA 2048 CreatePrimary (default 40; 3 warm-up)")
    parser.add_argument("--cold-rounds", type=int, default=40,
                        help="timed rounds of the cold RSA 2048 CreatePrimary (default 40; 1 warm-up)")
    add_endpoint_options(parser)
    args = parser.parse_args()
    for name in ("rounds", "repeat_rounds", "cold_rounds"):
        if not 1 <= getattr(args, name) <= 100_000:
            parser.error(f"--{name.replace('_', '-')} must be 1..100000")
    if not 0 <= args.warmup <= 100_000:
        parser.error("--warmup must be 0..100000")
    require_swtpm_or_exit(parser)

    results: dict[str, dict[str, list[float]]] = {}
    notes: dict[str, list[str]] = {name: [] for name in SERVERS}
    uniques = UniqueSource()
    began = clock()
    with working_directory(args, "vtpm-keys-vs-swtpm-") as tmp, side_by_side(tmp) as servers:
        ours, ref = servers["vtpm"], servers["swtpm"]
        conns: dict[str, TpmConnection] = {}
        try:
            rss_start = {name: server.rss_kib() for name, server in servers.items()}
            for name, server in servers.items():
                conns[name] = server.connect(timeout=CONNECTION_TIMEOUT)
            results["CreatePrimary RSA 2048 first"] = {
                name: [first_rsa_primary(conn, notes[name])] for name, conn in conns.items()}

            targets = {}
            for name, conn in conns.items():
                targets[name] = prepare_key_targets(conn)
                notes[name].extend(targets[name].notes)

            flushes: dict[str, list[float]] = {name: [] for name in SERVERS}
            ecc_template = ecc_storage_template()
            results["CreatePrimary ECC P-256"] = measure(
                {name: primary_runner(conn, lambda: ecc_template, "CreatePrimary(ECC P-256)", flushes[name])
                 for name, conn in conns.items()}, args.rounds, args.warmup)
            results["FlushContext (ECC primary)"] = {name: values[args.warmup:] for name, values in flushes.items()}

            rsa_template = rsa_storage_template()
            results["CreatePrimary RSA 2048 repeated"] = measure(
                {name: primary_runner(conn, lambda: rsa_template, "CreatePrimary(RSA 2048, repeated)")
                 for name, conn in conns.items()}, args.repeat_rounds, 3)

            results["CreatePrimary RSA 2048 cold"] = measure(
                {name: primary_runner(conn, lambda name=name: rsa_storage_template(uniques.next_for(name)),
                                      "CreatePrimary(RSA 2048, cold)")
                 for name, conn in conns.items()}, args.cold_rounds, 1)

            digest = bytes(range(32))
            results["Sign ECDSA P-256 SHA-256"] = measure(
                {name: command_runner(conn, sign(targets[name].signer, digest), "Sign(ECDSA-SHA256)")
                 for name, conn in conns.items()}, args.rounds, args.warmup)
            results["Quote RSA 2048 sha256:0-7"] = measure(
                {name: command_runner(conn, quote(targets[name].attester, b"vtpm-bench-nonce"),
                                      "Quote(RSASSA-SHA256, sha256:0-7)")
                 for name, conn in conns.items()}, args.rounds, args.warmup)

            for name, conn in conns.items():
                release_key_targets(conn, targets[name])
            rss_end = {name: server.rss_kib() for name, server in servers.items()}
        except CommandFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            for conn in conns.values():
                conn.close()
    total = clock() - began

    print(f"vtpm (python -m vtpm serve) against {swtpm_version()}; one TCP connection each, "
          f"servers alternating every round")
    print(f"rounds: ECC primary/Sign/Quote {args.rounds} after {args.warmup} warm-up; "
          f"RSA repeated {args.repeat_rounds} after 3; RSA cold {args.cold_rounds} after 1")
    print("RSA cold = a template whose 16-byte unique field (random run tag + counter) this TPM has never seen,")
    print("           in the same server process and state (no new state per sample); both servers get the same")
    print("           sequence of templates, but their seeds differ, so the prime searches differ too")
    print("RSA first = the first command on the freshly started TPM (1 sample, identical template as 'repeated')")
    header = (f"{'operation':34} {'n':>4} {'vtpm median':>12} {'vtpm p90':>11} {'swtpm median':>13} "
              f"{'swtpm p90':>11} {'ours/swtpm':>11}")
    print(header)
    print("-" * len(header))
    ratios = []
    order = ["CreatePrimary ECC P-256", "FlushContext (ECC primary)", "CreatePrimary RSA 2048 first",
             "CreatePrimary RSA 2048 cold", "CreatePrimary RSA 2048 repeated", "Sign ECDSA P-256 SHA-256",
             "Quote RSA 2048 sha256:0-7"]
    informational = {"FlushContext (ECC primary)", "CreatePrimary RSA 2048 first"}
    for operation in order:
        samples = results[operation]
        ours_median = statistics.median(samples["vtpm"])
        ref_median = statistics.median(samples["swtpm"])
        ratio = ours_median / ref_median
        if operation not in informational:
            ratios.append(ratio)
        mark = " *" if operation in informational else ""
        print(f"{operation:34} {len(samples['vtpm']):4d} {fmt(ours_median):>12} {fmt(percentile(samples['vtpm'], 0.9)):>11}"
              f" {fmt(ref_median):>13} {fmt(percentile(samples['swtpm'], 0.9)):>11} {ratio:11.2f}{mark}")
    print("* shown for information, not part of the geometric mean")
    print(f"RSS (VmRSS) after start: vtpm {rss_start['vtpm'] / 1024:.1f} MiB, swtpm {rss_start['swtpm'] / 1024:.1f} MiB; "
          f"after the run: vtpm {rss_end['vtpm'] / 1024:.1f} MiB (pid {ours.pid}), "
          f"swtpm {rss_end['swtpm'] / 1024:.1f} MiB (pid {ref.pid})")
    for name in SERVERS:
        for note in notes[name]:
            print(f"note: {name}: {note}")
    print(f"total time {total:.1f} s")
    print(f"ratio: {math.exp(sum(math.log(r) for r in ratios) / len(ratios)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
