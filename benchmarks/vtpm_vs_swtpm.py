"""Side by side in one run: command latency of our vTPM server against swtpm over TCP.

Starts both servers on 127.0.0.1 (fresh state in a temporary directory), opens
one persistent connection to each and, after a warm-up, times N round trips of
GetRandom(16), PCR_Extend (sha256, PCR 16, password session) and NV_Write
(32 bytes into an owner-defined index, owner password session; two payloads
in turn so that every write changes the stored data). Round trips alternate
between the servers so that machine noise hits both alike. Prints the median
and 90th percentile of each, the ratio of medians ours/swtpm, the resident
memory of both server processes, and last a line ``ratio: X.XX``: the
geometric mean of the three median ratios.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from support.servers import ServerError, side_by_side, swtpm_path
from support.tpm_helpers import (
    command_sender,
    latency_commands,
    prepare_latency_target,
)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(senders: dict[str, object], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per round trip for each server, alternating servers every round trip."""
    for _ in range(warmup):
        for send in senders.values():
            send()
    samples: dict[str, list[float]] = {name: [] for name in senders}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, send in senders.items():
            start = clock()
            response = send()
            samples[name].append(clock() - start)
            if response[6:10] != b"\x00\x00\x00\x00":
                raise SystemExit(f"{name}: command failed: {response.hex()}")
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="timed round trips per command and server")
    parser.add_argument("--warmup", type=int, default=200, help="untimed round trips first")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 1_000_000 or not 0 <= args.warmup <= 1_000_000:
        parser.error("--rounds must be 1..1000000 and --warmup 0..1000000")
    try:
        swtpm_path()
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="vtpm-vs-swtpm-") as tmp, side_by_side(Path(tmp)) as servers:
        ours, ref = servers["vtpm"], servers["swtpm"]
        conns = {}
        try:
            for name, server in servers.items():
                conns[name] = server.connect()
                prepare_latency_target(conns[name])
            results = {}
            for command, variants in latency_commands().items():
                senders = {name: command_sender(conn, variants) for name, conn in conns.items()}
                results[command] = measure(senders, args.rounds, args.warmup)
            rss = {name: server.rss_kib() for name, server in servers.items()}
        finally:
            for conn in conns.values():
                conn.close()

    print(f"{args.rounds} round trips per command and server after {args.warmup} warm-up, one TCP connection each")
    header = (f"{'command':28} {'vtpm median':>12} {'vtpm p90':>10} {'swtpm median':>13} {'swtpm p90':>10}"
              f" {'ours/swtpm':>11}")
    print(header)
    print("-" * len(header))
    ratios = []
    for command, samples in results.items():
        ours_median = statistics.median(samples["vtpm"])
        ref_median = statistics.median(samples["swtpm"])
        ratio = ours_median / ref_median
        ratios.append(ratio)
        print(f"{command:28} {ours_median * 1e6:9.1f} us {percentile(samples['vtpm'], 0.9) * 1e6:7.1f} us"
              f" {ref_median * 1e6:10.1f} us {percentile(samples['swtpm'], 0.9) * 1e6:7.1f} us {ratio:11.2f}")
    print(f"RSS (VmRSS) after the run: vtpm {rss['vtpm'] / 1024:.1f} MiB (pid {ours.pid}), "
          f"swtpm {rss['swtpm'] / 1024:.1f} MiB (pid {ref.pid})")
    print(f"ratio: {math.exp(sum(math.log(r) for r in ratios) / len(ratios)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
