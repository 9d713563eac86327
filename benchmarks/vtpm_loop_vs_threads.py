"""Side by side in one run: the event-loop swtpm server against the thread-per-connection one, and swtpm.

Starts three servers on fresh state: our TPM behind ``SwtpmLoopServer`` (what
`vtpm serve` uses), the same behind the threaded ``SwtpmServer``, each in its
own process, and swtpm. One persistent TCP connection to each; round trips of
GetRandom(16) and PCR_Extend alternate between the servers so that machine
noise hits all alike. Prints medians and the last line ``ratio: X.XX`` = the
geometric mean over the commands of loop median / threaded median.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time

from support.servers import (REPO_ROOT, ServerError, add_endpoint_options, next_port_pair, require_swtpm_or_exit,
                             start_swtpm, working_directory)
from vtpm import wire
from vtpm.constants import ALG
from vtpm.transport import SocketTransport, TransportError

SERVER = """
import sys, threading
from vtpm import wire
from vtpm.engine import Tpm
from vtpm.server.device import TpmDevice
from vtpm.server.loop import SwtpmLoopServer
from vtpm.server.sockets import SwtpmServer
tpm = Tpm()
tpm.execute(0, wire.STARTUP_CLEAR)
kind = SwtpmLoopServer if sys.argv[1] == "loop" else SwtpmServer
kind(TpmDevice(tpm), port=int(sys.argv[2])).start()
threading.Event().wait()
"""
COMMANDS = {"GetRandom(16)": wire.get_random(16),
            "PCR_Extend(sha256, PCR 16)": wire.pcr_extend(16, [(ALG.SHA256, bytes(range(32)))])}


def start(kind: str) -> tuple[subprocess.Popen[bytes], SocketTransport]:
    for _ in range(5):
        port = next_port_pair()
        proc = subprocess.Popen([sys.executable, "-c", SERVER, kind, str(port)], cwd=REPO_ROOT,
                                stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                return proc, SocketTransport.tcp(port)
            except TransportError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise ServerError(f"the {kind} server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000, help="timed round trips per command and server")
    parser.add_argument("--warmup", type=int, default=200)
    add_endpoint_options(parser)
    args = parser.parse_args()
    if not 1 <= args.rounds <= 1_000_000 or not 0 <= args.warmup <= 1_000_000:
        parser.error("--rounds must be 1..1000000 and --warmup 0..1000000")
    require_swtpm_or_exit(parser)
    procs = []
    try:
        with working_directory(args, "vtpm-loop-") as tmp, start_swtpm(tmp / "swtpm") as ref:
            servers = {}
            for kind in ("threads", "loop"):
                proc, transport = start(kind)
                procs.append(proc)
                servers[kind] = transport
            servers["swtpm"] = SocketTransport.tcp(ref.port)
            medians: dict[str, dict[str, float]] = {}
            for name, command in COMMANDS.items():
                samples: dict[str, list[float]] = {kind: [] for kind in servers}
                order = list(servers.items())
                for i in range(args.warmup + args.rounds):
                    order.reverse()  # no server always goes first
                    for kind, transport in order:
                        start_time = time.perf_counter()
                        response = transport.transact(command)
                        if i >= args.warmup:
                            samples[kind].append(time.perf_counter() - start_time)
                        if response[6:10] != bytes(4):
                            raise SystemExit(f"{kind}: {name} failed: {response.hex()}")
                medians[name] = {kind: statistics.median(values) for kind, values in samples.items()}
            for transport in servers.values():
                transport.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    print(f"{args.rounds} round trips per command and server after {args.warmup} warm-up, one TCP connection each")
    print(f"{'command':28} {'loop':>10} {'threads':>10} {'swtpm':>10} {'loop/threads':>13}")
    ratios = []
    for name, m in medians.items():
        ratios.append(m["loop"] / m["threads"])
        print(f"{name:28} {m['loop'] * 1e6:7.1f} us {m['threads'] * 1e6:7.1f} us {m['swtpm'] * 1e6:7.1f} us "
              f"{ratios[-1]:13.2f}")
    print(f"ratio: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
