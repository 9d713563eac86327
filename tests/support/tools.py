"""tpm2-tools against a served TPM: one tool at a time, or a runner bound to a directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from support.servers import TpmServer


def needs_tools(binary: str) -> pytest.MarkDecorator:
    """Skip unless tpm2-tools, recognised by one of its binaries, are installed."""
    return pytest.mark.skipif(shutil.which(binary) is None,
                              reason="tpm2-tools are not installed (scripts/bootstrap.sh installs them)")


def tools(server: TpmServer, *args: str, check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), env=server.tools_env(), capture_output=True, timeout=60,
        input=stdin.decode() if stdin else None, text=True,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr}\nserver log:\n{server.log_text()}")
    return result


class Tools:
    """tpm2-tools in one directory; transient objects are flushed after each tool (no resource manager)."""

    def __init__(self, tpm: TpmServer, cwd: Path) -> None:
        self.tpm, self.cwd = tpm, cwd

    def __call__(self, *args: str, check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(args), env=self.tpm.tools_env(), cwd=self.cwd, capture_output=True, text=True,
                                timeout=120, input=stdin.decode() if stdin else None)
        subprocess.run(["tpm2_flushcontext", "-t"], env=self.tpm.tools_env(), cwd=self.cwd, capture_output=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{result.stderr}\nserver:\n{self.tpm.log_text()[-3000:]}")
        return result
