"""Interop lane fixtures: the differential pair of TPMs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.differential import Differential, verified
from support.peers import Pair, peer_pair
from support.servers import require_swtpm, side_by_side


@pytest.fixture
def tpms(tmp_path: Path):
    """A fresh swtpm and a fresh vTPM, both after Startup(CLEAR), stopped (SIGTERM, then SIGKILL) afterwards.

    A difference a test recorded and did not report with ``assert_identical()`` fails it at teardown.
    """
    require_swtpm()
    with side_by_side(tmp_path) as servers:
        yield from verified(Differential(servers["vtpm"], servers["swtpm"]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test that left differences unreported fails itself, instead of passing and erring at teardown."""
    result = yield
    diff = getattr(item, "funcargs", {}).get("tpms")
    if isinstance(diff, Differential):
        diff.assert_all_reported()
    return result


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """Our vTPM and swtpm as peers for the same raw commands and tpm2-tools steps."""
    require_swtpm()
    with peer_pair(tmp_path) as peers:
        yield peers
