"""scripts/fuzz.py as a command: a small campaign in-process, over a real `vtpm serve` socket and through the
file readers; its JSON report adds up and holds no finding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import vtpm.engine  # noqa: F401  (registers every command in vtpm.core.COMMANDS)
from vtpm import free_port_pair
from vtpm.core import COMMANDS

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "fuzz.py"


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCRYPT_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def test_a_small_campaign_with_tcp_reports_counts_that_add_up(tmp_path: Path) -> None:
    commands, files, cases = 4032, 240, 150
    port = free_port_pair()
    result = run_script("--commands", str(commands), "--files", str(files), "--seed", "7", "--tcp",
                        "--tcp-port", str(port), "--tcp-cases", str(cases), "--rsa-bits", "1024", "--json",
                        "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(result.stdout)
    summary, tpm, files_report, tcp = report["summary"], report["tpm"], report["files"], report["tcp"]

    assert summary["clean"] is True
    assert summary["crashes"] == summary["hangs"] == summary["malformed"] == summary["unexpected"] == 0
    assert tpm["findings"] == files_report["findings"] == tcp["findings"] == []

    assert tpm["total"] == summary["commands_in_process"] == commands
    assert sum(tpm["per_command"].values()) == commands
    assert len(tpm["per_command"]) == len(COMMANDS) == tpm["implemented_commands"]
    assert tpm["per_command_min"] == summary["per_command_min"] >= commands // len(COMMANDS)
    assert sum(tpm["response_classes"].values()) == sum(tpm["response_codes"].values()) == commands
    assert sum(tpm["localities"].values()) == commands
    assert tpm["commands_per_second"] > 0

    assert files_report["total"] == summary["file_inputs"] == files
    assert sum(files_report["per_target"].values()) == sum(files_report["outcomes"].values()) == files

    assert tcp["cases"] == sum(tcp["per_case"].values()) == summary["tcp_cases"] == cases
    assert tcp["probes"] == cases and tcp["server_alive"] and tcp["server_errors"] == 0
    assert f"127.0.0.1:{port} (ctrl {port + 1})" in Path(tcp["server_log"]).read_text()
    assert summary["commands"] == commands + tcp["commands"]
    assert tcp["commands"] == sum(tcp["per_command"].values())
    assert sum(tcp["response_classes"].values()) == tcp["responses"] > 0


def test_the_text_report_and_the_usage() -> None:
    result = run_script("--commands", "500", "--files", "24", "--seed", "3", "--rsa-bits", "1024", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TPM commands: 500 in-process" in result.stdout and result.stdout.rstrip().endswith("clean")
    assert result.stderr == ""
    usage = run_script("--help")
    assert usage.returncode == 0
    for option in ("--commands N", "--files N", "--seed S", "--tcp", "--json"):
        assert option in usage.stdout
    assert run_script("--commands", "-1").returncode == 2
