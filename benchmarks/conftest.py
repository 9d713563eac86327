"""The pytest-benchmark modules' choice of where their servers listen: ``--port-base PORT`` (as the
benchmark scripts take it; default: free port pairs)."""

from __future__ import annotations

import pytest

from support.servers import use_ports_from


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--port-base", type=int, default=None, metavar="PORT",
                     help="servers listen on PORT/PORT+1, PORT+2/PORT+3, ... (default: free pairs)")


def pytest_configure(config: pytest.Config) -> None:
    first = config.getoption("--port-base")
    if first is not None and not 1024 <= first <= 65534:
        raise pytest.UsageError("--port-base must be between 1024 and 65534 (each server takes PORT and PORT+1)")
    use_ports_from(first)
