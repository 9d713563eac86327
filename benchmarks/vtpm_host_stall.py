"""Side by side in one run: a vTPM's latency in a `vtpm host` with and without stalled clients on its neighbours.

Starts one `vtpm host` with N vTPMs (plain state, each on its own Unix data
socket) and one swtpm. A client on vTPM 0 times GetRandom(16) and PCR_Read
(SHA-256, PCRs 0-7) round trips in blocks that alternate between "quiet" and
"stalled": during a stalled block, every other vTPM has clients that sent
half a command and then nothing (each block opens fresh ones, so the host's
mid-command timeout never ends them during the block). Prints the median and
90th percentile of each command in both conditions, swtpm's median on the
same commands for reference, and last ``ratio: X.XX`` = the larger of the
stalled/quiet median ratios (target <= 1.10).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

from support.servers import add_endpoint_options, start_swtpm, start_vtpm_host, require_swtpm_or_exit, working_directory
from vtpm import wire
from vtpm.constants import ALG
from vtpm.transport import SocketTransport

COMMANDS = {"GetRandom(16)": wire.get_random(16), "PCR_Read(sha256, 0-7)": wire.pcr_read({ALG.SHA256: range(8)})}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed(transport: SocketTransport, command: bytes, rounds: int, into: list[float]) -> None:
    clock = time.perf_counter
    for _ in range(rounds):
        start = clock()
        response = transport.transact(command)
        into.append(clock() - start)
        if response[6:10] != bytes(4):
            raise SystemExit(f"command failed: {response.hex()}")


def stall(paths: list[Path], per_vtpm: int) -> list[socket.socket]:
    """Clients that send half a command to each vTPM in ``paths`` and then nothing."""
    stalled = []
    for path in paths:
        for _ in range(per_vtpm):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(path))
            sock.sendall(wire.get_random(16)[:6])
            stalled.append(sock)
    return stalled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vtpms", type=int, default=20, help="vTPMs in the host (default 20)")
    parser.add_argument("--stalled", type=int, default=3, help="stalled clients per other vTPM (default 3)")
    parser.add_argument("--blocks", type=int, default=10, help="blocks per condition (default 10)")
    parser.add_argument("--rounds", type=int, default=200, help="round trips per command and block (default 200)")
    add_endpoint_options(parser)
    args = parser.parse_args()
    if not 2 <= args.vtpms <= 1000 or not 1 <= args.stalled <= 20 or not 1 <= args.blocks <= 1000 \
            or not 1 <= args.rounds <= 100_000:
        parser.error("--vtpms 2..1000, --stalled 1..20, --blocks 1..1000, --rounds 1..100000")
    require_swtpm_or_exit(parser)
    quiet: dict[str, list[float]] = {name: [] for name in COMMANDS}
    stalled: dict[str, list[float]] = {name: [] for name in COMMANDS}
    reference: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with working_directory(args, "vtpm-host-stall-") as base:
        with start_vtpm_host(base / "host.sock", base / "host.log") as host, \
                start_swtpm(base / "swtpm-state") as swtpm:
            client = host.client()
            paths = [base / f"d{n}" for n in range(args.vtpms)]
            for n, path in enumerate(paths):
                client.add(f"vtpm{n}", state=str(base / f"s{n}"), data_unix=str(path), startup_clear=True)
            ours = SocketTransport.unix(str(paths[0]))
            ref = SocketTransport.tcp(swtpm.port)
            for command in COMMANDS.values():  # warm-up (and the first command loads vTPM 0)
                timed(ours, command, 50, [])
                timed(ref, command, 50, [])
            for _ in range(args.blocks):
                for condition in (quiet, stalled):
                    hostile = stall(paths[1:], args.stalled) if condition is stalled else []
                    time.sleep(0.05)  # both conditions: the host has accepted the stalled clients before timing
                    try:
                        for name, command in COMMANDS.items():
                            timed(ours, command, args.rounds, condition[name])
                            timed(ref, command, args.rounds // 4 or 1, reference[name])
                    finally:
                        for sock in hostile:
                            sock.close()
            ours.close()
            ref.close()
            alive = host.proc.poll() is None

    print(f"{args.vtpms} vTPMs in one host; vTPM 0 timed; stalled blocks: {args.stalled} half-command clients "
          f"on each of the other {args.vtpms - 1}; {args.blocks} blocks x {args.rounds} round trips per condition")
    print(f"{'command':24} {'quiet median':>13} {'quiet p90':>10} {'stalled median':>15} {'stalled p90':>12} "
          f"{'swtpm median':>13} {'stalled/quiet':>14}")
    ratios = []
    for name in COMMANDS:
        q, s, r = statistics.median(quiet[name]), statistics.median(stalled[name]), statistics.median(reference[name])
        ratios.append(s / q)
        print(f"{name:24} {q * 1e6:10.1f} us {percentile(quiet[name], 0.9) * 1e6:7.1f} us {s * 1e6:12.1f} us "
              f"{percentile(stalled[name], 0.9) * 1e6:9.1f} us {r * 1e6:10.1f} us {s / q:14.2f}")
    print(f"host still running after the run: {alive}")
    print(f"ratio: {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
