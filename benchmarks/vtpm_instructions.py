"""Instructions per command, counted by valgrind's callgrind: a repeatable figure on a noisy, shared machine.

Wall-clock latency here moves by tens of percent with the other processes;
an instruction count does not. For each command of the latency set
(``support.tpm_helpers.latency_commands``; NV_Write's state goes to a sink that
keeps nothing, so its row is the engine's work alone: the journal's is counted
in docs/persistence.md) a child Python under ``valgrind --tool=callgrind`` sends
``--number`` commands between two calls of ``os.getppid``, where callgrind
dumps its counts (``--dump-before=getppid``): the start-up (imports,
manufacturing the TPM, Startup) and a warm-up are counted apart, and the
instructions of the batch over ``--number`` are one command's cost.

Paths (``--path``, repeatable):

- ``inprocess``: ``Tpm.execute`` directly;
- ``device``: ``TpmDevice.execute`` (the served device: lock, size check);
- ``serve``: the data channel of `vtpm serve` (``sockets.serve_tpm_commands``
  on a thread, blocking socketpair, the client in the main thread: the
  round trip, both sides of the socket, as the benchmark's server runs it);
- ``loop``: the event loop of `vtpm host`/``SwtpmLoopServer`` (``Loop`` and
  ``DataConnection`` over a socketpair, one ``run_once`` per command);
- ``echo``: the floor of ``loop``: the same client, and a server that only
  receives and sends a fixed 10-byte answer in the same thread (what the
  socket and the client cost whatever the server does).

``--child PATH NAMES N`` is the measured process itself (not for direct use).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vtpm.engine import Tpm
    from vtpm.server.device import TpmDevice

PATHS = ("inprocess", "device", "serve", "loop", "echo")


def child(path: str, names: list[str], count: int) -> None:
    """Prepare a TPM, then for each of ``names``: a warm-up, and ``count`` commands along ``path`` between two
    calls of getppid (the markers where callgrind dumps its counts)."""
    from support.tpm_helpers import latency_commands, prepare_latency_target
    from vtpm import wire
    from vtpm.engine import Tpm
    from vtpm.server.device import TpmDevice

    tpm = Tpm(persist=_NoStore())
    tpm.execute(0, wire.startup())

    class InProcess:
        def transact(self, command: bytes) -> bytes:
            return tpm.execute(0, command)

    prepare_latency_target(InProcess())
    send = _sender(path, tpm, TpmDevice(tpm))
    for name in names:
        variants = latency_commands()[name]
        commands = list(itertools.islice(itertools.cycle(variants), count + 2 * len(variants)))
        for command in commands[: 2 * len(variants)]:
            send(command)
        os.getppid()  # callgrind dumps its counts here (--dump-before=getppid)
        for command in commands[2 * len(variants):]:
            send(command)
        os.getppid()


class _NoStore:
    """A state sink that keeps nothing: NV_Write counts the engine (and its change hint), not a store."""

    def persist_state(self, state: object, nv: object = None) -> None:
        return None


def _sender(path: str, tpm: "Tpm", device: "TpmDevice") -> Callable[[bytes], object]:
    """A function sending one command along ``path`` and taking its response."""
    if path == "inprocess":
        return lambda command: tpm.execute(0, command)
    if path == "device":
        return device.execute
    client, server = socket.socketpair()
    if path == "serve":
        from vtpm.server.sockets import serve_tpm_commands

        threading.Thread(target=serve_tpm_commands, args=(server, device), daemon=True).start()

        def send(command: bytes) -> bytes:
            client.sendall(command)
            return _read_response(client)

        return send
    if path == "loop":
        from vtpm.server.loop import DataConnection, Loop

        loop = Loop()
        loop.add(DataConnection(loop, server, lambda: device))

        def send_loop(command: bytes) -> bytes:
            client.sendall(command)
            loop.run_once()
            return _read_response(client)

        return send_loop
    if path == "echo":  # the floor: the same client, a server that only reads and writes a fixed answer
        answer = bytes.fromhex("80010000000a00000000")

        def send_echo(command: bytes) -> bytes:
            client.sendall(command)
            server.recv(65536)
            server.send(answer)
            return _read_response(client)

        return send_echo
    raise SystemExit(f"unknown path {path!r}")


def _read_response(sock: socket.socket) -> bytes:
    data = sock.recv(4096)
    while len(data) < 10 or len(data) < int.from_bytes(data[2:6], "big"):
        data += sock.recv(4096)
    if data[6:10] != bytes(4):
        raise SystemExit(f"command failed: {data.hex()}")
    return data


def count_instructions(root: Path, path: str, names: list[str], count: int) -> list[int]:
    """Instructions callgrind counted for ``count`` commands of each of ``names`` (every thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "tests"),
                                                            os.environ.get("PYTHONPATH", "")]),
                   PYTHONHASHSEED="0")
        subprocess.run(["valgrind", "--tool=callgrind", "--dump-before=getppid", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--child", path, "|".join(names), str(count)],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        totals = []
        for part in sorted(Path(tmp).glob("callgrind.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1])):
            match = re.search(r"^summary: (\d+)", part.read_text(), re.MULTILINE)
            if match is None:
                raise SystemExit(f"callgrind wrote no summary in {part.name}")
            totals.append(int(match.group(1)))
    # parts: start-up and warm-up, then per command its measured batch, then the next warm-up ...
    measured = totals[1::2][: len(names)]
    if len(measured) != len(names):
        raise SystemExit(f"expected {2 * len(names)} callgrind parts, got {len(totals)}")
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("PATH", "NAME", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--path", action="append", choices=PATHS, help="paths to count (default: all)")
    parser.add_argument("--command", action="append", help="commands whose name starts with this (default: all)")
    parser.add_argument("--number", type=int, default=500, help="commands counted of each kind")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout whose vtpm is counted (default: this one)")
    args = parser.parse_args()
    if args.child:
        path, names, count = args.child
        child(path, names.split("|"), int(count))
        return 0
    if not 1 <= args.number <= 1_000_000:
        parser.error("--number must be 1..1000000")
    sys.path[:0] = [str(args.root), str(args.root / "tests")]
    from support.tpm_helpers import latency_commands

    names = [n for n in latency_commands() if not args.command or any(n.startswith(c) for c in args.command)]
    paths = args.path or list(PATHS)
    columns = {path: count_instructions(args.root, path, names, args.number) for path in paths}
    print(f"instructions per command (callgrind, {args.number} commands each), {args.root}")
    print(f"{'command':30} " + " ".join(f"{p:>10}" for p in paths))
    for i, name in enumerate(names):
        print(f"{name:30} " + " ".join(f"{columns[p][i] // args.number:10d}" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
