"""Side by side in one run: command latency of our vTPM server against swtpm over TCP or Unix sockets.

Starts both servers (fresh state in a temporary directory), opens one
persistent connection to each and, after a warm-up, times N round trips of
each of these commands (the acceptance set of the vTPM's hot path):

- GetRandom(16)
- PCR_Read of sha256 PCR 16
- PCR_Extend (sha256, PCR 16, password session)
- NV_Read of 32 bytes from an owner-defined index (owner password session)
- NV_Write of 32 bytes into that index (owner password session; two payloads
  in turn so that every write changes the stored data)

Round trips alternate between the servers so that machine noise hits both
alike, in every order in turn (what ran just before a round trip changes its
time: a server that always follows the same one is favoured or not). Prints
the median and 90th percentile of each, the ratio of medians ours/swtpm, and
the resident memory of both server processes.

NV_Write is not like for like: swtpm writes its state file with a temporary
file and a rename and never fsyncs, ours makes the write durable. So the
NV_Write rounds also time the durable floor as a third turn of each round:
one ``os.fdatasync`` after writing 4 KiB into a preallocated file in our
server's state directory (a block of its own each time); the report prints our
NV_Write over that floor, both from the same rounds (``journal_latency.py``
gives the same figure with the floor of a socket round trip beside it).

Last, cold RSA-2048 CreatePrimary (owner hierarchy, storage key template):
every call carries a template whose 16-byte ``unique`` field (random run tag
+ counter) this TPM has never seen, so the key is derived anew from the seed
and no cache can answer; same server process and state throughout, both
servers get the same sequence of templates (their seeds differ, so their
prime searches differ: the median over many calls is what compares).

``--transport`` chooses the servers and the socket: ``tcp`` (the default),
`vtpm serve` and `swtpm socket` on 127.0.0.1; ``unix``, the path QEMU drives:
`vtpm socket` and `swtpm socket` with libvirt's options and a Unix data socket
(the same kernel path as the socketpair QEMU passes with CMD_SET_DATAFD). A
Unix round trip is shorter than a TCP one, so the same work in the server is
a larger share of it.

``--baseline DIR`` (TCP only) also serves the vtpm package of another checkout DIR (a
third server, alternating with the other two: a before/after comparison in
one run) and prints its medians and ratios as well.

The last line ``ratio: X.XX`` is the geometric mean of the median ratios of
GetRandom, PCR_Read, PCR_Extend, NV_Read and cold RSA CreatePrimary.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from support.servers import (
    add_endpoint_options,
    require_swtpm_or_exit,
    side_by_side,
    side_by_side_unix,
    start_vtpm,
    working_directory,
)
from support.timing import FdatasyncReference
from support.tpm_helpers import (
    command_sender,
    flush_context,
    latency_commands,
    prepare_latency_target,
)
from support.tpm_key_helpers import UniqueSource, check, create_primary, out_handle, rsa_storage_template
from vtpm.transport import SocketTransport

NV_WRITE = "NV_Write(32 B)"
FLOOR = "durable floor"
COLD_RSA = "CreatePrimary RSA 2048 cold"
FLOOR_ANSWER = bytes.fromhex("80010000000a00000000")
CONNECTION_TIMEOUT = 120.0  # seconds: a cold RSA primary may take long on a loaded machine
clock = time.perf_counter


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(senders: dict[str, Callable[[], bytes]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per round trip for each server, alternating servers every round trip; each round takes
    the next order of the servers (all orders in turn), so that no server always follows the same one
    (what ran just before, a Python server or swtpm, changes what is still in the CPU caches)."""
    for _ in range(warmup):
        for send in senders.values():
            send()
    samples: dict[str, list[float]] = {name: [] for name in senders}
    orders = list(itertools.permutations(senders.items()))
    for round_ in range(rounds):
        for name, send in orders[round_ % len(orders)]:
            start = clock()
            response = send()
            samples[name].append(clock() - start)
            if response[6:10] != b"\x00\x00\x00\x00":
                raise SystemExit(f"{name}: command failed: {response.hex()}")
    return samples


def measure_cold_primaries(conns: dict[str, SocketTransport], rounds: int) -> dict[str, list[float]]:
    """Seconds per cold CreatePrimary; the template is built and the previous handle flushed off the clock."""
    uniques = UniqueSource()
    samples: dict[str, list[float]] = {name: [] for name in conns}
    for _ in range(rounds):
        for name, conn in conns.items():
            command = create_primary(rsa_storage_template(uniques.next_for(name)))
            start = clock()
            response = conn.transact(command)
            samples[name].append(clock() - start)
            check(conn.transact(flush_context(out_handle(check(response, "CreatePrimary(RSA 2048, cold)")))),
                  "FlushContext after the cold RSA primary")
    return samples


def fmt(seconds: float) -> str:
    if seconds >= 0.01:
        return f"{seconds * 1e3:8.1f} ms"
    return f"{seconds * 1e6:8.1f} us"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="timed round trips per command and server")
    parser.add_argument("--warmup", type=int, default=200, help="untimed round trips first")
    parser.add_argument("--cold-rounds", type=int, default=30, help="timed cold RSA 2048 CreatePrimary per server")
    add_endpoint_options(parser)
    parser.add_argument("--transport", choices=("tcp", "unix"), default="tcp",
                        help="tcp: vtpm serve and swtpm socket over TCP; unix: vtpm socket and swtpm socket "
                             "in libvirt's shape over Unix data sockets (default: tcp)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="also serve the vtpm package of the checkout DIR (before/after in one run)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 1_000_000 or not 0 <= args.warmup <= 1_000_000:
        parser.error("--rounds must be 1..1000000 and --warmup 0..1000000")
    if not 0 <= args.cold_rounds <= 10_000:
        parser.error("--cold-rounds must be 0..10000")
    if args.baseline is not None and args.transport != "tcp":
        parser.error("--baseline serves the other checkout with `vtpm serve`: use it with --transport tcp")
    require_swtpm_or_exit(parser)
    servers_of = side_by_side if args.transport == "tcp" else side_by_side_unix

    with working_directory(args, "vtpm-vs-swtpm-") as tmp, servers_of(tmp) as servers, \
            contextlib.ExitStack() as stack:
        ours, ref = servers["vtpm"], servers["swtpm"]
        if args.baseline is not None:
            launcher = Path(tmp) / "baseline-python"
            # in the checkout, as `python -m` puts the working directory first on the import path
            checkout = args.baseline.resolve()
            launcher.write_text(f'#!/bin/sh\ncd "{checkout}" || exit 1\nexport PYTHONPATH="{checkout}"\n'
                                f'exec "{sys.executable}" "$@"\n')
            launcher.chmod(0o700)
            servers = {**servers, "before": stack.enter_context(start_vtpm(
                ["--state", str(Path(tmp) / "before-state"), "--startup-clear"], Path(tmp) / "before.log",
                python=str(launcher)))}
        conns: dict[str, SocketTransport] = {}
        try:
            for name, server in servers.items():
                conns[name] = server.connect(timeout=CONNECTION_TIMEOUT)
                prepare_latency_target(conns[name])
            results = {}
            reference = stack.enter_context(contextlib.closing(
                FdatasyncReference(Path(tmp) / "vtpm-state", ".fdatasync-floor")))

            def durable_floor() -> bytes:  # a turn in ``measure`` with the servers: answered like a success
                reference()
                return FLOOR_ANSWER

            for command, variants in latency_commands().items():
                senders = {name: command_sender(conn, variants) for name, conn in conns.items()}
                if command == NV_WRITE:
                    senders[FLOOR] = durable_floor
                results[command] = measure(senders, args.rounds, args.warmup)
            floor = results[NV_WRITE].pop(FLOOR)
            if args.cold_rounds:
                results[COLD_RSA] = measure_cold_primaries(conns, args.cold_rounds)
            rss = {name: server.rss_kib() for name, server in servers.items()}
        finally:
            for conn in conns.values():
                conn.close()

    shape = ("vtpm serve and swtpm socket, one TCP connection each" if args.transport == "tcp" else
             "vtpm socket and swtpm socket in libvirt's shape, one Unix data socket each")
    print(f"{args.rounds} round trips per command and server after {args.warmup} warm-up, {shape},"
          f" servers alternating")
    header = (f"{'command':30} {'n':>5} {'vtpm median':>12} {'vtpm p90':>11} {'swtpm median':>13} {'swtpm p90':>11}"
              f" {'ours/swtpm':>11}")
    print(header)
    print("-" * len(header))
    ratios = []
    for command, samples in results.items():
        ours_median = statistics.median(samples["vtpm"])
        ref_median = statistics.median(samples["swtpm"])
        ratio = ours_median / ref_median
        mark = " *" if command == NV_WRITE else ""
        if command != NV_WRITE:
            ratios.append(ratio)
        print(f"{command:30} {len(samples['vtpm']):5d} {fmt(ours_median):>12} {fmt(percentile(samples['vtpm'], 0.9)):>11}"
              f" {fmt(ref_median):>13} {fmt(percentile(samples['swtpm'], 0.9)):>11} {ratio:11.2f}{mark}")
    if "before" in rss:
        print(f"baseline {args.baseline}: the same commands in the same rounds")
        for command, samples in results.items():
            before = statistics.median(samples["before"])
            print(f"{command:30} before {fmt(before):>12}  before/swtpm {before / statistics.median(samples['swtpm']):5.2f}"
                  f"  after/before {statistics.median(samples['vtpm']) / before:5.2f}")
    floor_median = statistics.median(floor)
    nv_write = statistics.median(results[NV_WRITE]["vtpm"])
    print("* not like for like: swtpm does not fsync (its state file is written to a temporary file and renamed)")
    print(f"durable floor: pwrite 4 KiB + os.fdatasync in the vTPM state directory, a turn of each NV_Write round, "
          f"median of {len(floor)}: "
          f"{fmt(floor_median).strip()} (p90 {fmt(percentile(floor, 0.9)).strip()})")
    print(f"NV_Write ours / durable floor: {nv_write / floor_median:.2f}")
    if args.cold_rounds:
        print(f"{COLD_RSA}: every call a template with a 16-byte unique (random run tag + counter) this TPM has "
              f"never seen, so no cache can answer; same process and state; FlushContext off the clock")
    print(f"RSS (VmRSS) after the run: vtpm {rss['vtpm'] / 1024:.1f} MiB (pid {ours.pid}), "
          f"swtpm {rss['swtpm'] / 1024:.1f} MiB (pid {ref.pid})")
    print(f"ratio: {math.exp(sum(math.log(r) for r in ratios) / len(ratios)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
