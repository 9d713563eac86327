"""Benchmark-only: run a vTPM server with timers around each step of a command, for ``vtpm_server_steps.py``.

Used as the server's interpreter entry point (``python vtpm_step_hook.py -m
vmcrypt.vtpm_command serve ...``): it wraps, in this process only, the data
channel's socket (``recv``, ``sendall``), ``TpmDevice.execute``, the engine
(``Tpm.execute``, ``Tpm._execute``, ``Tpm._execute_parsed`` and ``Tpm.flush_state``) and the journal's steps
(``changes``, the JSON encoding, ``Sealer.seal``, ``PreallocatedFile.append``
and ``.sync``, the position recorder's ``note``), then runs the module as
``python -m`` would. Every timed call appends ``(step, start_ns, end_ns)``
(``time.perf_counter_ns``: CLOCK_MONOTONIC, shared with the client process) to
a list that is written as JSON to ``$VTPM_STEP_OUT`` when the server exits.
Nothing of this is in the served code: the production path has no timers.
Each wrapper adds well under a microsecond of its own.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

EVENTS: list[tuple[str, int, int]] = []


def timed(step: str, function: Callable[..., Any]) -> Callable[..., Any]:
    append = EVENTS.append

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = perf_counter_ns()
        try:
            return function(*args, **kwargs)
        finally:
            append((step, start, perf_counter_ns()))

    wrapper.__wrapped__ = function  # type: ignore[attr-defined]
    return wrapper


_DEPTH = {"engine": 0}


def timed_outermost(step: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``timed``, but a call inside another timed call of the same step is not recorded apart (a command
    of a kept shape runs ``Tpm._execute_parsed`` inside ``Tpm._execute``: one engine time, not two)."""
    append = EVENTS.append

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _DEPTH[step]:
            return function(*args, **kwargs)
        _DEPTH[step] += 1
        start = perf_counter_ns()
        try:
            return function(*args, **kwargs)
        finally:
            append((step, start, perf_counter_ns()))
            _DEPTH[step] -= 1

    wrapper.__wrapped__ = function  # type: ignore[attr-defined]
    return wrapper


class TimedSocket:
    """The data connection, with its ``recv`` and ``sendall`` timed; everything else passed through."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.recv = timed("recv", sock.recv)
        self.sendall = timed("send", sock.sendall)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def install() -> None:
    from durable import prealloc
    from vtpm import engine, journal, journal_store
    from vtpm.server import device, sockets

    serve = sockets.serve_tpm_commands

    def serve_timed(sock: Any, *args: Any, **kwargs: Any) -> None:
        serve(TimedSocket(sock), *args, **kwargs)

    sockets.serve_tpm_commands = serve_timed
    device.TpmDevice.execute = timed("device", device.TpmDevice.execute)
    kept_apart = "_execute_parsed" in engine.Tpm.execute.__code__.co_names  # a kept command runs there, not in _execute
    engine.Tpm.execute = timed("execute", engine.Tpm.execute)
    engine.Tpm._execute = timed_outermost("engine", engine.Tpm._execute)
    if kept_apart:
        engine.Tpm._execute_parsed = timed_outermost("engine", engine.Tpm._execute_parsed)
    engine.Tpm.flush_state = timed("flush", engine.Tpm.flush_state)
    if hasattr(journal_store, "changes"):
        journal_store.changes = timed("changes", journal_store.changes)
    if hasattr(journal_store, "nv_change_json"):  # NV_Write & co.: changes and encoding in one step
        journal_store.nv_change_json = timed("changes", journal_store.nv_change_json)
    if hasattr(journal_store, "encode_delta"):
        journal_store.encode_delta = timed("encode", journal_store.encode_delta)
    else:  # before encode_delta: the encoder object
        encoder = journal_store._ENCODER
        encoder.encode = timed("encode", encoder.encode)  # type: ignore[method-assign]
    journal.Sealer.seal = timed("seal", journal.Sealer.seal)
    prealloc.PreallocatedFile.append = timed("pwrite", prealloc.PreallocatedFile.append)
    prealloc.PreallocatedFile.sync = timed("fdatasync", prealloc.PreallocatedFile.sync)
    recorder = getattr(journal_store, "_PositionRecorder", None)
    if recorder is not None:
        recorder.note = timed("note", recorder.note)


def dump() -> None:
    out = os.environ.get("VTPM_STEP_OUT")
    if out:
        with open(out, "w") as handle:
            json.dump(EVENTS, handle)


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit("usage: vtpm_step_hook.py -m MODULE ARGS...")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    install()
    atexit.register(dump)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
