"""Measured boot of ESXi-like hosts: tpm2-tools reads the logs we write and agrees with our replay and the TPM."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest

from support.tools import needs_tools
from support.trust import boot_tampered_host, boot_trusted_host
from vtpm.constants import ALG
from vtpm.eventlog import bank_name, parse_event_log, replay
from vtpm.ima import parse_ima_log, replay_ima

pytestmark = needs_tools("tpm2_eventlog")


def tpm2_eventlog(path: Path) -> tuple[str, str, dict[str, dict[int, bytes]]]:
    """(stdout, stderr, the ``pcrs:`` section: bank -> PCR -> value) of `tpm2_eventlog FILE`."""
    result = subprocess.run(["tpm2_eventlog", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    banks: dict[str, dict[int, bytes]] = {}
    bank = ""
    for line in result.stdout[result.stdout.index("\npcrs:"):].splitlines()[2:]:
        if match := re.fullmatch(r"  (\w+):", line):
            bank = match.group(1)
        elif match := re.fullmatch(r"\s+(\d+)\s*: 0x([0-9a-fA-F]+)", line):
            banks.setdefault(bank, {})[int(match.group(1))] = bytes.fromhex(match.group(2))
    return result.stdout, result.stderr, banks


@pytest.mark.parametrize("tamper", [None, "modified-vib", "secure-boot-off"])
def test_tpm2_eventlog_parses_the_host_log_and_agrees_with_replay_and_tpm(tmp_path: Path, tamper: str | None) -> None:
    host = boot_trusted_host(tmp_path) if tamper is None else boot_tampered_host(tmp_path, tamper)
    out, err, theirs = tpm2_eventlog(host.event_log_path)
    assert "WARN" not in err and "ERROR" not in err, err  # digests of PCR 8 strings and UEFI data check out
    ours = replay(parse_event_log(host.event_log))
    tpm = host.client.pcr_read({ALG.SHA1: range(11), ALG.SHA256: range(11)})
    for alg in (ALG.SHA1, ALG.SHA256):
        for pcr in range(10):
            assert theirs[bank_name(alg)][pcr] == ours[alg][pcr] == tpm[alg][pcr], (bank_name(alg), pcr)
    assert replay_ima(parse_ima_log(host.ima_log), (ALG.SHA1, ALG.SHA256)) == {alg: tpm[alg][10] for alg in tpm}
    on = tamper != "secure-boot-off"  # tpm2-tools 5.4 prints the byte, later versions Enabled: 'Yes'/'No'
    assert re.search(r"UnicodeName: SecureBoot\n    VariableData:\s*(\"01\"|\n\s+Enabled: 'Yes')" if on else
                     r"UnicodeName: SecureBoot\n    VariableData:\s*(\"00\"|\n\s+Enabled: 'No')", out)
    assert 45 <= len(parse_event_log(host.event_log).events) <= 60 and len(parse_ima_log(host.ima_log)) >= 100
    for path in (host.event_log_path, host.ima_log_path, host.directory / "tpm" / "tpm2-state.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_reboot_resets_the_pcrs_and_measures_the_same_chain(tmp_path: Path) -> None:
    first = boot_trusted_host(tmp_path)
    values = first.client.pcr_read({ALG.SHA256: range(11)})
    again = boot_trusted_host(tmp_path)
    assert again.client.pcr_read({ALG.SHA256: range(11)}) == values
    assert again.ek_certificates == first.ek_certificates and len(first.ek_certificates) == 2
