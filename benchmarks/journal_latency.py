"""Durable NV_Write against one fdatasync of 4 KiB, measured in the same run in the same directory.

Passes of ``--rounds`` rounds; in each round every kind of the pass takes one turn, in a shuffled
order, so that machine noise hits all alike; medians. Each pass times the reference again. How many
kinds share the rounds matters: the more there are, the longer each server sleeps between its turns
and the slower (colder) its next one, for swtpm as for ours; so each comparison has a pass of its own.

The acceptance pass, ``--repeat`` times (like for like, nothing else in the rounds, as
``vtpm_vs_swtpm.py`` times its NV_Write rounds):

- ``fdatasync 4 KiB``: the reference: a preallocated, zero-filled file, 4 KiB pwrite + os.fdatasync;
- ``served (journal)``: NV_Write round trip over TCP to a real ``vtpm serve`` (journal on: the default);
- ``swtpm``: swtpm's NV_Write over TCP. swtpm does not fsync: its writes are NOT durable.

The floor pass: the same three and ``durable echo``, ``durable_echo_server.py``: a Python TCP server
that makes one 273-byte record durable (pwrite + fdatasync) per request and answers a fixed
response; no TPM: what the socket round trip costs here around the journal's write; and
``durable echo (C)``, the same server in C (``durable_echo.c``, built with Python's C compiler): the
round trip with no interpreter either, the floor of any server, however it is written.

The other kinds, with their own reference:

- ``O_DSYNC direct 4 KiB``: the same block written by one pwrite on an ``O_DIRECT | O_DSYNC`` descriptor
  (what ``durable.prealloc``'s direct mode does);
- ``in-process plain`` / ``in-process sealed``: ``Tpm.execute(NV_Write)`` with a JournaledStore over a
  plain state directory / over a key-file directory (AES-GCM records); durable on return;
- ``in-process not persisted``: the same command with no store: the engine's own CPU time, the floor
  under every durable variant;
- ``host (journal)``: the same to one vTPM of a real ``vtpm host`` (group commit on its event loop);
- ``socket (journal)``: the same to a real ``vtpm socket --flags not-need-init,startup-clear``;
- ``served (no journal)``: the same with ``--no-journal`` (the whole state rewritten atomically);
- ``served before`` (with ``--baseline DIR``): ``vtpm serve`` of the checkout DIR.

Also: the append strategies the journal could use (append + fdatasync, overwrite of preallocated
zero-filled blocks + fdatasync, overwrite of fallocate'd blocks + fdatasync; a journal record of 282
bytes appended to a ``PreallocatedFile`` through the page cache + fdatasync, its default, and in direct
mode, one O_DIRECT | O_DSYNC write of the tail blocks), and group commit: 8 vTPMs
in one process, each round one NV_Write on each (deferred) then one ``JournalGroup.commit()``, with the
syncs in parallel threads and one after the other; printed as vTPM commits per fdatasync-time.

The last line is ``ratio: X.XX``: the median over the acceptance passes of served (journal)
NV_Write median / fdatasync median (target <= 1.5).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from support.servers import (
    start_durable_echo,
    start_swtpm,
    start_vtpm,
    start_vtpm_host,
    start_vtpm_socket,
    require_swtpm_or_exit,
    unix_socket_ready,
    add_endpoint_options,
    next_port_pair,
    use_ports_from,
)
from support.timing import FdatasyncReference
from support.tpm_helpers import TpmConnection, latency_commands, prepare_latency_target
from durable.prealloc import PreallocatedFile
from vmcrypt.vtpm_key_file import EncryptedStateStore
from vtpm import wire
from vtpm.engine import Tpm
from vtpm.journal_store import JournaledStore, JournalGroup
from vtpm.state import TpmState
from vtpm.storage import PlainStateStore
from vtpm.transport import InProcessTransport

NV_WRITES = latency_commands()["NV_Write(32 B)"]


def record_appender(path: Path, *, direct: bool) -> Callable[[], None]:
    """One journal-sized record (282 bytes) appended to a ``PreallocatedFile`` and synced, per call."""
    file = PreallocatedFile.create(path, bytes(4096), size=1 << 22, direct=direct)
    record = os.urandom(282)

    def append() -> None:
        file.append(record)
        file.sync()

    return append


def in_process(store: JournaledStore | None) -> Callable[[], None]:
    """NV_Write through ``Tpm.execute`` journaled by ``store`` (None: not persisted at all)."""
    if store is None:
        state = TpmState.manufacture()
    else:
        state = store.load()
        if state is None:
            store.save(TpmState.manufacture().to_bytes())
            state = store.load()
    tpm = Tpm(state, persist=store)
    conn = InProcessTransport(tpm)
    conn.transact(wire.STARTUP_CLEAR)
    prepare_latency_target(conn)
    return sender(conn.transact)


def sender(transact: Callable[[bytes], bytes]) -> Callable[[], None]:
    """NV_Write of the two payloads in turn (each write changes the data), the response checked."""
    turn = [0]

    def send() -> None:
        response = transact(NV_WRITES[turn[0] % 2])
        turn[0] += 1
        if response[6:10] != bytes(4):
            raise SystemExit(f"NV_Write failed: {response.hex()}")

    return send


def measure(kinds: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        for run in kinds.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in kinds}
    clock = time.perf_counter
    order = list(kinds.items())
    shuffle = random.Random(1).shuffle
    for _ in range(rounds):
        shuffle(order)  # no kind always follows the same one (a sync right after another sync costs more)
        for name, run in order:
            start = clock()
            run()
            samples[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def group_commit(directory: Path, rounds: int, parallel: bool) -> tuple[float, float, int]:
    """8 vTPMs, each round one NV_Write on each (deferred) then one group commit: the medians of the
    whole round and of the commit alone, and the fdatasyncs per round."""
    group = JournalGroup(parallel=parallel)
    tpms = []
    for i in range(8):
        store = JournaledStore(PlainStateStore(directory / f"{'par' if parallel else 'seq'}{i}"))
        send = in_process(store)
        group.add(store)
        tpms.append((send, store))
    rounds_s, commits_s = [], []
    syncs_before = sum(store.syncs for _, store in tpms)
    clock = time.perf_counter
    for _ in range(rounds):
        start = clock()
        for send, _ in tpms:
            send()  # deferred: sealed in memory; the response would wait for the commit
        middle = clock()
        group.commit()
        end = clock()
        rounds_s.append(end - start)
        commits_s.append(end - middle)
    syncs = (sum(store.syncs for _, store in tpms) - syncs_before) // rounds
    group.close()
    return statistics.median(rounds_s), statistics.median(commits_s), syncs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="acceptance passes (the last line: their median)")
    parser.add_argument("--dir", type=Path, default=None, help="directory to measure in (default: a temp dir)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="also time `vtpm serve` of the checkout DIR in the same rounds (before/after)")
    add_endpoint_options(parser, directory=False)
    args = parser.parse_args()
    use_ports_from(args.port_base)
    if not 1 <= args.rounds <= 1_000_000 or not 0 <= args.warmup <= 1_000_000 or not 1 <= args.repeat <= 100:
        parser.error("--rounds must be 1..1000000, --warmup 0..1000000 and --repeat 1..100")
    require_swtpm_or_exit(parser)
    with tempfile.TemporaryDirectory(prefix="journal-bench-", dir=args.dir) as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        served = stack.enter_context(start_vtpm(["--state", str(base / "served"), "--startup-clear"], base / "s.log"))
        before = None
        if args.baseline is not None:
            launcher = base / "baseline-python"  # runs in the checkout, its package first on the path
            checkout = args.baseline.resolve()
            launcher.write_text(f'#!/bin/sh\ncd "{checkout}" || exit 1\nexport PYTHONPATH="{checkout}"\n'
                                f'exec "{sys.executable}" "$@"\n')
            launcher.chmod(0o700)
            before = stack.enter_context(start_vtpm(["--state", str(base / "before"), "--startup-clear"],
                                                    base / "b.log", python=str(launcher)))
        unjournaled = stack.enter_context(start_vtpm(["--state", str(base / "plain"), "--startup-clear", "--no-journal"],
                                                     base / "p.log"))
        swtpm = stack.enter_context(start_swtpm(base / "swtpm-state"))
        host = stack.enter_context(start_vtpm_host(base / "run" / "host.sock", base / "h.log"))
        host_port = next_port_pair()
        host.client().add("bench", state=str(base / "hosted"), tcp_port=host_port, startup_clear=True)
        socket_port = next_port_pair()
        (base / "socket").mkdir()
        stack.enter_context(start_vtpm_socket(
            ["--tpm2", "--tpmstate", f"dir={base / 'socket'}", "--server", f"type=tcp,port={socket_port}",
             "--ctrl", f"type=unixio,path={base / 'socket.ctrl'}", "--flags", "not-need-init,startup-clear"],
            base / "k.log", unix_socket_ready(base / "socket.ctrl")))
        echo = stack.enter_context(start_durable_echo(base, base / "e.log"))
        native_echo = stack.enter_context(start_durable_echo(base, base / "c.log", native=True))
        conns = {}
        servers = [("served (journal)", served), ("served (no journal)", unjournaled), ("swtpm", swtpm),
                   ("durable echo", echo), ("durable echo (C)", native_echo)]
        if before is not None:
            servers.append(("served before", before))
        for name, server in servers:
            conns[name] = stack.enter_context(contextlib.closing(server.connect()))
        conns["host (journal)"] = stack.enter_context(contextlib.closing(TpmConnection(host_port)))
        conns["socket (journal)"] = stack.enter_context(contextlib.closing(TpmConnection(socket_port)))
        for name, conn in conns.items():
            if not name.startswith("durable echo"):
                prepare_latency_target(conn)
        senders = {name: sender(conn.transact) for name, conn in conns.items()}
        served_send, swtpm_send, echo_send, native_echo_send = (
            senders.pop(name) for name in ("served (journal)", "swtpm", "durable echo", "durable echo (C)"))
        acceptance = [measure({"fdatasync 4 KiB": FdatasyncReference(base, f"reference{run}.bin"), "served (journal)": served_send,
                               "swtpm": swtpm_send}, args.rounds, args.warmup) for run in range(args.repeat)]
        floor = measure({"fdatasync 4 KiB": FdatasyncReference(base, "floor.bin"), "durable echo": echo_send,
                         "durable echo (C)": native_echo_send,
                         "served (journal)": served_send, "swtpm": swtpm_send}, args.rounds, args.warmup)
        others = measure({
            "fdatasync 4 KiB": FdatasyncReference(base, "others.bin"),
            "O_DSYNC direct 4 KiB": FdatasyncReference(base, "direct.bin", "direct"),
            "in-process plain": in_process(JournaledStore(PlainStateStore(base / "inproc"))),
            "in-process sealed": in_process(JournaledStore(EncryptedStateStore(base / "sealed", os.urandom(32)))),
            "in-process not persisted": in_process(None),
            **senders,
        }, args.rounds, args.warmup)
        strategies = measure({
            "overwrite preallocated": FdatasyncReference(base, "s1.bin"),
            "append": FdatasyncReference(base, "s2.bin", "append"),
            "overwrite fallocated": FdatasyncReference(base, "s3.bin", "fallocate"),
            "record, page cache": record_appender(base / "s4.bin", direct=False),
            "record, direct": record_appender(base / "s5.bin", direct=True),
        }, max(args.rounds // 2, 1), args.warmup)
        group_rounds = max(args.rounds // 8, 1)
        reference_again = measure({"fdatasync": FdatasyncReference(base, "r2.bin")}, group_rounds, 10)["fdatasync"]
        parallel, parallel_commit, syncs = group_commit(base, group_rounds, parallel=True)
        sequential, sequential_commit, _ = group_commit(base, group_rounds, parallel=False)

    print(f"{args.rounds} rounds after {args.warmup} warm-up per pass; every kind of a pass once per round; "
          f"directory on {'a temp dir' if args.dir is None else args.dir}")
    passes = [(f"acceptance pass {run + 1} of {args.repeat} (like for like)", medians)
              for run, medians in enumerate(acceptance)]
    passes += [("floor pass (the same with the durable echo server in the rounds)", floor), ("other kinds", others)]
    for title, medians in passes:
        reference = medians["fdatasync 4 KiB"]
        print(f"{title}:")
        print(f"  {'kind':24} {'median':>10} {'/ fdatasync':>12}")
        for name, value in medians.items():
            note = "  (not durable: swtpm does not fsync)" if name == "swtpm" else ""
            print(f"  {name:24} {value * 1e6:7.1f} us {value / reference:11.2f}{note}")
    print("journal write strategies (300 B... 4 KiB + fdatasync), medians:")
    for name, value in strategies.items():
        print(f"  {name:24} {value * 1e6:7.1f} us")
    print(f"group commit, 8 vTPMs, one NV_Write each per round, {syncs} fdatasyncs per round "
          f"(one fdatasync alone: {reference_again * 1e6:.0f} us):")
    for name, whole, commit in (("parallel syncs", parallel, parallel_commit),
                                ("sequential syncs", sequential, sequential_commit)):
        print(f"  {name:17} round {whole * 1e6:6.0f} us, commit() {commit * 1e6:6.0f} us = "
              f"{commit / reference_again:.2f} fdatasyncs; vTPM commits per fdatasync-time: "
              f"{8 * reference_again / commit:.2f}")
    second = others["fdatasync 4 KiB"]
    print(f"in-process ratio: {others['in-process plain'] / second:.2f}")
    print(f"host ratio: {others['host (journal)'] / second:.2f}")
    print(f"socket ratio: {others['socket (journal)'] / second:.2f}")
    if "served before" in others:
        print(f"served before ratio: {others['served before'] / second:.2f}")
    floor_reference = floor["fdatasync 4 KiB"]
    print(f"durable echo ratio (the socket's floor): {floor['durable echo'] / floor_reference:.2f}, in C "
          f"{floor['durable echo (C)'] / floor_reference:.2f}, served beside them "
          f"{floor['served (journal)'] / floor_reference:.2f}, swtpm {floor['swtpm'] / floor_reference:.2f}")
    served = [medians["served (journal)"] / medians["fdatasync 4 KiB"] for medians in acceptance]
    swtpm = [medians["swtpm"] / medians["fdatasync 4 KiB"] for medians in acceptance]
    print(f"swtpm ratio (not durable), median of {args.repeat} passes: {statistics.median(swtpm):.2f}")
    print(f"served ratios of the acceptance passes: {', '.join(f'{r:.2f}' for r in served)}")
    print(f"ratio: {statistics.median(served):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
