"""QEMU boots a Linux guest against a TPM server started in libvirt's shape: swtpm (the reference) and ours.

Each test runs against both servers, so a failure shows whether the harness
(support.qemu) or our server is at fault. The guest (OVMF + a Debian kernel +
a busybox initramfs, q35, TCG) prints its PCRs and the firmware event log on the
serial console; PCRs 0-7 of every bank must equal the replay of that log
(vtpm.eventlog), QMP ``quit`` must shut the TPM down cleanly, and a live
migration to a second QEMU with its own TPM server must keep the guest's PCRs.
The third kind, ``vtpm-host``, is a vTPM in a `vtpm host` (the event loop's
control channel): booted with tpm-crb only, and migrated between two vTPMs in
two hosts (one per QEMU, as on two machines).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.qemu import (CLEAN_SHUTDOWN_FAILURE, GuestReport, Qemu, migrate, qemu_missing_reason, running_guest,
                          tpm_server_kinds)
from vtpm.eventlog import bank_name, parse_event_log, replay

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(qemu_missing_reason() is not None, reason=qemu_missing_reason() or "")]

TPM_EXIT_TIMEOUT = 60.0  # seconds for the TPM server to end by itself once QEMU has gone (--terminate)


def assert_pcrs_match_event_log(report: GuestReport) -> None:
    assert report.eventlog, "the guest read an empty event log"
    log = parse_event_log(report.eventlog)
    replayed = {bank_name(alg): values for alg, values in replay(log).items()}
    assert set(report.pcrs) == set(replayed), "the banks the guest reads are the banks in the log"
    assert "sha256" in replayed
    for bank, values in replayed.items():
        for index in range(8):
            assert report.pcrs[bank][index] == values[index], f"{bank} PCR {index}"


def assert_clean_shutdown(guest: Qemu) -> None:
    """QMP quit: QEMU exits 0 without a tpm-emulator complaint, and the TPM server then exits 0 by itself."""
    assert guest.quit() == 0, guest.diagnostics()
    stderr = guest.stderr()
    assert CLEAN_SHUTDOWN_FAILURE not in stderr, guest.diagnostics()
    assert "tpm-emulator" not in stderr, guest.diagnostics()
    status = guest.tpm.wait(TPM_EXIT_TIMEOUT)
    assert status == 0, f"{guest.tpm.kind} exit status {status} after QEMU quit\n{guest.diagnostics()}"


def assert_state_private(guest: Qemu) -> None:
    """The TPM state was written, with the mode libvirt asks for (``--tpmstate mode=0600``; swtpm's empty
    ``.lock`` file is 0640 and holds nothing)."""
    files = [path for path in guest.tpm.state.iterdir() if path.is_file() and path.stat().st_size]
    assert files, f"{guest.tpm.kind} wrote no state"
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in files} == {path.name: "0o600" for path in files}


BOOTS = [(kind, model) for kind in tpm_server_kinds() for model in ("tpm-crb", "tpm-tis")
         if kind != "vtpm-host" or model == "tpm-crb"]  # the device model does not depend on the transport


@pytest.mark.parametrize(("kind", "model"), BOOTS)
def test_boot_pcrs_replay_the_event_log_and_quit_shuts_the_tpm_down(tmp_path: Path, kind: str, model: str) -> None:
    with running_guest(kind, tmp_path, "vm", model) as guest:
        report = guest.wait_booted()
        assert_pcrs_match_event_log(report)
        assert guest.read_pcrs() == report.pcrs  # the console command answers with the same values
        assert_clean_shutdown(guest)
        assert_state_private(guest)


@pytest.mark.parametrize("kind", tpm_server_kinds())
def test_live_migration_keeps_the_guest_pcrs(tmp_path: Path, kind: str) -> None:
    with running_guest(kind, tmp_path, "src", "tpm-crb") as source:
        report = source.wait_booted()
        assert_pcrs_match_event_log(report)
        with running_guest(kind, tmp_path, "dst", "tpm-crb", incoming="defer") as destination:
            migrate(source, destination, f"unix:{tmp_path / 'mig.sock'}")
            assert source.status() == "postmigrate"
            assert_clean_shutdown(source)
            assert destination.read_pcrs() == report.pcrs, destination.diagnostics()
            assert_clean_shutdown(destination)
            assert_state_private(destination)
