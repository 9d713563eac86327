"""The benchmarks that start servers take where those listen: ``--port-base`` (TCP pairs from there up)
and ``--dir`` (state, logs and Unix sockets, kept); a port below 1024 is a usage error (exit 2)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

from support.servers import REPO_ROOT, require_swtpm
from vtpm import free_port_pair


def _bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_side_by_side_benchmark_listens_where_told(tmp_path: Path) -> None:
    require_swtpm()
    port, work = free_port_pair(), tmp_path / "bench"
    done = _bench("vtpm_vs_swtpm.py", "--rounds", "3", "--warmup", "0", "--cold-rounds", "1",
                  "--port-base", str(port), "--dir", str(work))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("ratio: ")
    assert "NV_Write ours / durable floor: " in done.stdout  # the floor took its turns in the NV_Write rounds
    assert not (work / "vtpm-state" / ".fdatasync-floor").exists()
    assert f"serving on swtpm tcp 127.0.0.1:{port} (ctrl {port + 1})" in (work / "vtpm.log").read_text()
    assert (work / "swtpm-state").is_dir()  # the reference's state is kept with it

    refused = _bench("vtpm_vs_swtpm.py", "--port-base", "80")
    assert refused.returncode == 2 and "--port-base: must be between 1024 and 65534" in refused.stderr


def test_side_by_side_benchmark_over_unix_sockets_runs_both_socket_commands(tmp_path: Path) -> None:
    """``--transport unix``: `vtpm socket` and `swtpm socket` in libvirt's shape, each with its Unix data and
    control sockets and its state in --dir; every command row and the durable floor printed; --baseline
    (a `vtpm serve` of another checkout) is refused with it."""
    require_swtpm()
    work = tmp_path / "bench"
    done = _bench("vtpm_vs_swtpm.py", "--transport", "unix", "--rounds", "3", "--warmup", "0", "--cold-rounds", "1",
                  "--dir", str(work))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "vtpm socket and swtpm socket in libvirt's shape, one Unix data socket each" in lines[0]
    rows = [line.split()[0] for line in lines[3:10]]
    assert rows == ["GetRandom(16)", "PCR_Read(sha256,", "PCR_Extend(sha256,", "PCR_Extend(new", "NV_Read(32",
                    "NV_Write(32", "CreatePrimary"]
    assert "NV_Write ours / durable floor: " in done.stdout and lines[-1].startswith("ratio: ")
    assert {p.name for p in work.iterdir()} >= {"vtpm-state", "swtpm-state", "vtpm.log", "swtpm.log"}
    assert f"serving on data unix {work / 'vtpm.sock'} and ctrl unix {work / 'vtpm.ctrl'}" in (
        work / "vtpm.log").read_text()
    assert (work / "vtpm-state" / "tpm2-state.json").is_file()  # our state went where --tpmstate named it

    refused = _bench("vtpm_vs_swtpm.py", "--transport", "unix", "--baseline", str(tmp_path))
    assert refused.returncode == 2 and "use it with --transport tcp" in refused.stderr


def test_migration_benchmark_puts_its_unix_sockets_in_dir(tmp_path: Path) -> None:
    require_swtpm()
    work = tmp_path / "m"
    done = _bench("migration_vs_swtpm.py", "--rounds", "1", "--dir", str(work))
    assert done.returncode == 0, done.stderr
    assert {p.name for p in work.glob("*.log")} >= {"vtpm-a.log", "vtpm-b.log", "swtpm-a.log", "swtpm-b.log"}


def test_journal_benchmark_times_the_durable_echo_floor_beside_the_served_write(tmp_path: Path) -> None:
    """The acceptance pass of journal_latency.py: reference, served NV_Write and swtpm in the same rounds,
    and the floor pass with the durable echo servers (Python and C, built by the benchmark), each a real
    process; every kind printed with its ratio, the last line the served one."""
    require_swtpm()
    done = _bench("journal_latency.py", "--rounds", "3", "--warmup", "1", "--repeat", "2", "--dir", str(tmp_path),
                  "--port-base", str(free_port_pair()))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    first = lines[lines.index("acceptance pass 1 of 2 (like for like):") + 2:][:3]
    assert [line.split()[0] for line in first] == ["fdatasync", "served", "swtpm"]
    assert float(first[0].split()[-1]) == 1.0
    floor = lines[[i for i, line in enumerate(lines) if line.startswith("floor pass")][0] + 2:][:5]
    assert [line[2:26].strip() for line in floor] == [
        "fdatasync 4 KiB", "durable echo", "durable echo (C)", "served (journal)", "swtpm"]
    assert all(float(line[26:].split()[2]) > 0 for line in floor)  # median, "us", then the ratio
    assert any(line.startswith("durable echo ratio (the socket's floor): ") and ", in C " in line for line in lines)
    served = [float(r) for r in lines[-2].split(": ")[1].split(", ")]
    assert len(served) == 2 and lines[-1].startswith("ratio: ")
    assert abs(float(lines[-1].split()[-1]) - statistics.median(served)) <= 0.01  # the median of the passes
    assert not list(tmp_path.iterdir())  # the temporary directory inside --dir is gone
