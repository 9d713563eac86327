"""Microseconds per command through ``Tpm.execute`` in-process: the engine's own cost, no socket.

Runs the commands of the socket benchmark (``support.tpm_helpers.latency_commands``:
GetRandom, PCR_Read, PCR_Extend, NV_Read, NV_Write) against a freshly
manufactured TPM after Startup(CLEAR). The state is serialized after every
command that changes it (``TpmState.to_bytes``, as a served vTPM does) but the
bytes go nowhere, so no disk time is included. Prints the median and the best
of ``--repeat`` batches of ``--number`` commands each, in microseconds per
command of the thread's CPU time (time.thread_time: on a shared machine,
time other processes take is not counted; the best batch is the steadier figure).

The same bytes sent again reuse their parse (``vtpm.engine.REPEATABLE``), as a
served vTPM does for a client that repeats a command; ``--parse-anew`` turns
that off to show what parsing costs.

``--profile NAME`` runs that command under cProfile instead and prints the
functions with the most cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import statistics
import sys
import time

from support.tpm_helpers import latency_commands, prepare_latency_target
from vtpm import engine, wire
from vtpm.engine import Tpm


class InProcess:
    """The one method prepare_latency_target needs, over Tpm.execute."""

    def __init__(self, tpm: Tpm) -> None:
        self.tpm = tpm

    def transact(self, command: bytes) -> bytes:
        return self.tpm.execute(0, command)


def prepared_tpm() -> Tpm:
    tpm = Tpm(persist=lambda raw: None)
    if wire.response_code(tpm.execute(0, wire.startup())) != 0:
        raise SystemExit("Startup failed")
    prepare_latency_target(InProcess(tpm))
    return tpm


def time_command(tpm: Tpm, variants: tuple[bytes, ...], number: int, repeat: int) -> list[float]:
    """Seconds per command in each of ``repeat`` batches of ``number``."""
    execute = tpm.execute
    batches = []
    for _ in range(repeat):
        commands = list(itertools.islice(itertools.cycle(variants), number))
        start = time.thread_time()
        for command in commands:
            execute(0, command)
        batches.append((time.thread_time() - start) / number)
    return batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=300, help="commands per batch")
    parser.add_argument("--repeat", type=int, default=21, help="batches")
    parser.add_argument("--profile", metavar="NAME", help="profile the command whose name starts with NAME")
    parser.add_argument("--parse-anew", action="store_true", help="parse every command (no reuse of a parse)")
    args = parser.parse_args()
    if args.parse_anew:
        engine.REPEATABLE = frozenset()
    if not 1 <= args.number <= 10_000_000 or not 1 <= args.repeat <= 1000:
        parser.error("--number must be 1..10000000 and --repeat 1..1000")
    tpm = prepared_tpm()
    commands = latency_commands()
    for variants in commands.values():  # every command answers success before it is timed
        for command in variants:
            response = tpm.execute(0, command)
            if wire.response_code(response) != 0:
                raise SystemExit(f"command failed: {wire.describe_rc(wire.response_code(response))}")
    if args.profile:
        matches = [name for name in commands if name.startswith(args.profile)]
        if not matches:
            parser.error(f"no command starts with {args.profile!r}: {', '.join(commands)}")
        profiler = cProfile.Profile()
        profiler.enable()
        time_command(tpm, commands[matches[0]], args.number, 1)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)
        return 0
    print(f"in-process Tpm.execute, {args.repeat} batches of {args.number}, us of CPU per command"
          f"{', every command parsed anew' if args.parse_anew else ''}")
    print(f"{'command':30} {'median':>8} {'best':>8}")
    for name, variants in commands.items():
        batches = time_command(tpm, variants, args.number, args.repeat)
        print(f"{name:30} {statistics.median(batches) * 1e6:8.1f} {min(batches) * 1e6:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
