"""The unit lane's own rule: starting a process from a unit test fails it."""

from __future__ import annotations

import os
import subprocess

import pytest


def test_starting_a_process_is_refused() -> None:
    for start in (lambda: subprocess.run(["true"], check=False), lambda: os.system("true"), os.fork):
        with pytest.raises(AssertionError, match="the unit lane runs in-process"):
            start()
