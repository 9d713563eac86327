"""Where a served command's time goes: each step of a round trip to `vtpm serve`, in microseconds.

Starts `vtpm serve` (fresh plain state, journaled: the default) under
``vtpm_step_hook.py``, which times, inside the server, the data channel's
``recv`` and ``sendall``, ``TpmDevice.execute``, the engine and, for commands
that change persistent state, the journal's steps. The client sends each
command of the latency set (``support.tpm_helpers.latency_commands``)
``--rounds`` times over one TCP connection and notes when it started sending
and when the response was in; both processes read the same clock
(CLOCK_MONOTONIC), so every round trip splits into:

- ``to server``: the client's send until the server's ``recv`` returned it
  (socket, scheduler wake-up of the server's thread);
- ``loop in``: from there to ``TpmDevice.execute`` (framing in the data loop);
- ``device``: ``TpmDevice.execute`` apart from the engine (lock, power, size);
- ``engine``: ``Tpm._execute`` or, for a command kept parsed, ``Tpm._execute_parsed``
  (parse, authorize, handler, response);
- ``flush``: ``Tpm.flush_state`` (only for commands that changed persistent
  state), split into ``changes`` (what changed since the last record),
  ``encode`` (JSON), ``seal``, ``pwrite``, ``fdatasync`` and the rest;
- ``execute rest``: ``Tpm.execute`` around the engine and the flush;
- ``loop out``: from ``TpmDevice.execute`` to ``sendall``;
- ``send``: the server's ``sendall``;
- ``to client``: from there until the client had the response (wake-up of
  the client, its reads).

Medians per step (a step's medians need not add up to the round trip's).
``--compare-swtpm`` also times the same commands against swtpm in the same run,
round trips alternating between the servers as in ``vtpm_vs_swtpm.py`` (swtpm:
round trips only, it has no hook). ``--baseline DIR`` adds `vtpm serve` of
another checkout, also under the hook, in the same rounds: before and after,
step by step, under the same machine noise. The timers add about a microsecond per
timed call to the server, so the round trips here are a little slower than in
``vtpm_vs_swtpm.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from time import perf_counter_ns

from support.servers import require_swtpm_or_exit, start_swtpm, start_vtpm
from support.tpm_helpers import TpmConnection, command_sender, latency_commands, prepare_latency_target

HOOK = Path(__file__).resolve().with_name("vtpm_step_hook.py")
JOURNAL_STEPS = ("changes", "encode", "seal", "pwrite", "fdatasync", "note")
COLUMNS = ("round trip", "to server", "loop in", "device", "engine", "flush", *JOURNAL_STEPS, "flush rest",
           "execute rest", "loop out", "send", "to client")


def time_round_trips(conns: dict[str, TpmConnection], variants: tuple[bytes, ...], rounds: int,
                     warmup: int) -> dict[str, list[tuple[int, int]]]:
    """Each server's (start, end) clock readings per round trip; servers alternate every round trip."""
    senders = {name: command_sender(conn, variants) for name, conn in conns.items()}
    for _ in range(warmup):
        for send in senders.values():
            send()
    windows: dict[str, list[tuple[int, int]]] = {name: [] for name in conns}
    for _ in range(rounds):
        for name, send in senders.items():
            start = perf_counter_ns()
            response = send()
            windows[name].append((start, perf_counter_ns()))
            if response[6:10] != bytes(4):
                raise SystemExit(f"{name}: command failed: {response.hex()}")
    return windows


def split(windows: list[tuple[int, int]], events: list[tuple[str, int, int]]) -> dict[str, list[float]]:
    """Per step, the microseconds of each round trip (events assigned to the window their end falls in)."""
    events = sorted(events, key=lambda e: e[2])
    steps: dict[str, list[float]] = defaultdict(list)
    i = 0
    for start, end in windows:
        while i < len(events) and events[i][2] < start:
            i += 1
        mine: dict[str, tuple[int, int]] = {}
        sums: dict[str, int] = defaultdict(int)
        while i < len(events) and events[i][2] <= end:
            name, s, e = events[i]
            mine.setdefault(name, (s, e))
            sums[name] += e - s
            i += 1
        if not {"recv", "device", "execute", "engine", "send"} <= mine.keys():
            continue  # a round trip the server's timers did not see whole (should not happen)
        us = 1e-3
        recv_end = mine["recv"][1]
        device_start, device_end = mine["device"]
        send_start, send_end = mine["send"]
        flush = sums.get("flush", 0)
        steps["round trip"].append((end - start) * us)
        steps["to server"].append((recv_end - start) * us)
        steps["loop in"].append((device_start - recv_end) * us)
        execute = sums.get("execute", 0)
        steps["device"].append((device_end - device_start - execute) * us)
        steps["engine"].append(sums["engine"] * us)
        steps["execute rest"].append((execute - sums["engine"] - flush) * us)
        if flush:
            steps["flush"].append(flush * us)
            for name in JOURNAL_STEPS:
                if name in sums:
                    steps[name].append(sums[name] * us)
            steps["flush rest"].append((flush - sum(sums.get(n, 0) for n in JOURNAL_STEPS)) * us)
        steps["loop out"].append((send_start - device_end) * us)
        steps["send"].append((send_end - send_start) * us)
        steps["to client"].append((end - send_end) * us)
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--compare-swtpm", action="store_true", help="time swtpm's round trips too")
    parser.add_argument("--json", action="store_true", help="print the medians as JSON")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="also serve, under the hook, the vtpm package of the checkout DIR (a third server in "
                             "the same rounds: a before/after comparison step by step)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 1_000_000 or not 0 <= args.warmup <= 1_000_000:
        parser.error("--rounds must be 1..1000000 and --warmup 0..1000000")
    if args.compare_swtpm:
        require_swtpm_or_exit(parser)
    commands = latency_commands()
    hooked = {"vtpm": None, **({"before": args.baseline.resolve()} if args.baseline else {})}
    with tempfile.TemporaryDirectory(prefix="vtpm-steps-") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        servers = {}
        for name, checkout in hooked.items():
            launcher = base / f"{name}-python"
            # the checkout first on the import path (the hook is a script: its own directory comes first,
            # not the working directory, which `python -m` would put first)
            path = f'export PYTHONPATH="{checkout}"\n' if checkout else ""
            launcher.write_text(f'#!/bin/sh\n{path}exec "{sys.executable}" "{HOOK}" "$@"\n')
            launcher.chmod(0o700)
            os.environ["VTPM_STEP_OUT"] = str(base / f"{name}-steps.json")  # read by the hook in the server
            servers[name] = stack.enter_context(start_vtpm(["--state", str(base / f"{name}-state"), "--startup-clear"],
                                                           base / f"{name}.log", python=str(launcher)))
        if args.compare_swtpm:
            servers["swtpm"] = stack.enter_context(start_swtpm(base / "swtpm-state"))
        conns = {name: stack.enter_context(contextlib.closing(server.connect())) for name, server in servers.items()}
        for conn in conns.values():
            prepare_latency_target(conn)
        trips = {name: time_round_trips(conns, variants, args.rounds, args.warmup) for name, variants in commands.items()}
        stack.close()  # the servers write their step times as they exit
        events = {}
        for name in hooked:
            out = base / f"{name}-steps.json"
            if not out.exists():
                raise SystemExit(f"{name}: the server wrote no step times; its log:\n{(base / f'{name}.log').read_text()}")
            events[name] = [tuple(e) for e in json.loads(out.read_text())]
    tables = {server: {name: {step: statistics.median(values)
                              for step, values in split(trips[name][server], events[server]).items()}  # type: ignore[arg-type]
                       for name in commands}
              for server in hooked}
    reference = {name: statistics.median((e - s) * 1e-3 for s, e in trips[name]["swtpm"]) for name in commands} \
        if args.compare_swtpm else {}
    if args.json:
        print(json.dumps({"medians_us": tables, "swtpm_round_trip_us": reference}))
        return 0
    print(f"{args.rounds} round trips per command after {args.warmup} warm-up, servers alternating "
          f"({', '.join(servers)}); medians in microseconds")
    for server, table in tables.items():
        label = "this checkout" if server == "vtpm" else f"baseline {hooked[server]}"
        print(f"vtpm serve of {label}, under the step hook")
        shown = [c for c in COLUMNS if any(c in row for row in table.values())]
        print(f"{'step':14}" + "".join(f"{n.split('(')[0]:>12}" for n in commands))
        for step in shown:
            print(f"{step:14}" + "".join(f"{table[n][step]:12.1f}" if step in table[n] else f"{'':>12}" for n in commands))
        if reference:
            print(f"{'swtpm trip':14}" + "".join(f"{reference[n]:12.1f}" for n in commands))
            print(f"{'trip / swtpm':14}" + "".join(f"{table[n]['round trip'] / reference[n]:12.2f}" for n in commands))
    return 0


if __name__ == "__main__":
    sys.exit(main())
