"""scripts/soak.py: a short soak (vTPMs in one host, concurrent clients, SIGKILLs) ends with nothing lost,
and its reconciliation does tell a lost acknowledged write and a foreign value from a clean restart."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.tpm_helpers import started_client

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "soak.py"


def load_soak():
    if "soak" in sys.modules:
        return sys.modules["soak"]
    spec = importlib.util.spec_from_file_location("soak", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_short_soak_with_kills_loses_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCRYPT_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--vtpms", "12", "--clients", "4", "--duration", "12", "--kill-every", "4",
         "--seed", "3", "--json", "--work", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert report["lost_acknowledged_writes"] == 0 and report["divergences"] == 0, report["details"]
    assert report["kills"] >= 3  # two during the load, one before the final check
    assert report["acknowledged_writes"] > 0
    assert set(report["operations"]) == set(load_soak().OPERATIONS)  # every kind of operation ran
    assert sum(report["operations"].values()) == report["operations_total"]
    for key_file in (tmp_path / "keys").iterdir():
        assert key_file.stat().st_mode & 0o077 == 0


def test_reconciliation_tells_lost_and_foreign_values_from_a_clean_restart() -> None:
    soak = load_soak()
    client = started_client()
    report = soak.Report()
    worker = soak.Worker.__new__(soak.Worker)  # only its set-up and operations, no thread
    worker.clients, worker.random = {}, __import__("random").Random(5)
    worker.client = lambda model: client
    model = soak.Model("vm")
    worker.prepare(model)
    worker.nv_write(client, model)
    worker.increment(client, model)
    worker.pcr_extend(client, model)
    worker.pcr_read(client, model)
    client.call(soak.wire.shutdown())
    client.tpm.power_cycle()
    client.startup()

    soak.reconcile(client, model, report)  # a clean restart: acknowledged values there, PCR back to zero
    assert report.lost_writes == [] and report.divergences == []

    held = model.nv
    model.nv_history.append(held)
    model.nv = os.urandom(soak.DATA_SIZE)  # the model holds a newer acknowledged write than the TPM
    model.counter += 5
    soak.reconcile(client, model, report)
    assert len(report.lost_writes) == 2  # the NV value went back, the counter is below the acknowledged one
    assert model.nv == held

    model.nv_history.clear()
    model.nv = os.urandom(soak.DATA_SIZE)  # the TPM holds a value the model never had
    soak.reconcile(client, model, report)
    assert len(report.divergences) == 1

    model.nv_pending = os.urandom(soak.DATA_SIZE)  # an in-flight write that did not land is no loss
    soak.reconcile(client, model, report)
    assert len(report.lost_writes) == 2 and len(report.divergences) == 1 and model.nv_pending is None
