"""The unit lane runs in-process: neither a test here nor the import of its module may start a process.

While this lane's modules are collected and while its tests (fixtures included)
run, subprocess.Popen and the os functions that start programs raise
ProcessRefused. Servers on threads of the test process, on loopback, are fine.
Tests that need another program belong in tests/interop or tests/e2e.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest

from support.clock import FakeClock

OS_LAUNCHERS = ("system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp",
                "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe")


class ProcessRefused(AssertionError):
    """A unit test (or the import of its module) tried to start a process."""


def _refused(what: str, args: object) -> ProcessRefused:
    return ProcessRefused(f"the unit lane runs in-process, but {what} was asked to start {args!r}; "
                          "a test that needs another program belongs in tests/interop or tests/e2e")


class _RefusedPopen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs) -> None:  # noqa: ANN001
        raise _refused("subprocess.Popen", args)


def _refusing(name: str):
    def refuse(*args: object, **kwargs: object):
        raise _refused(f"os.{name}", args[:1])

    return refuse


@contextlib.contextmanager
def processes_refused() -> Iterator[None]:
    saved = {name: getattr(os, name) for name in OS_LAUNCHERS if hasattr(os, name)}
    popen = subprocess.Popen
    subprocess.Popen = _RefusedPopen
    for name in saved:
        setattr(os, name, _refusing(name))
    try:
        yield
    finally:
        subprocess.Popen = popen
        for name, function in saved.items():
            setattr(os, name, function)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    with processes_refused():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    with processes_refused():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    with processes_refused():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    with processes_refused():
        return (yield)


@pytest.fixture
def clock() -> FakeClock:
    """The engine's millisecond clock, moved by the test."""
    return FakeClock()
