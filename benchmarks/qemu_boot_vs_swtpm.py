"""Side by side in one run: a QEMU guest's boot and PCR reads against our vTPM and against swtpm.

Boots the guest of tests/support/qemu.py (OVMF + Debian kernel + busybox
initramfs, q35, TCG, tpm-crb by default) against each TPM server in turn,
alternating servers every round so that machine noise hits both alike, and
times: QEMU start to the guest's first report (firmware measurements, kernel
boot, 40 PCR reads and the event log), the guest's ``pcrs`` command (the 40
PCR reads alone, 10 PCRs in 4 banks, through the guest's TPM driver), and QMP
``quit`` until the TPM server has exited. Prints the median of each and the
ratio ours/swtpm; last a line ``ratio: X.XX``, the ratio of the ``pcrs``
medians (the boot is dominated by TCG emulation, the same for both).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from support.qemu import GuestError, qemu_missing_reason, running_guest

KINDS = ("swtpm", "vtpm")
PHASES = ("boot", "pcrs", "quit")


def one_round(kind: str, workdir: Path, model: str, reads: int) -> dict[str, float]:
    started = time.perf_counter()
    with running_guest(kind, workdir, "vm", model) as guest:
        guest.wait_booted()
        booted = time.perf_counter()
        pcr_times = []
        for _ in range(reads):
            before = time.perf_counter()
            guest.read_pcrs()
            pcr_times.append(time.perf_counter() - before)
        before = time.perf_counter()
        guest.quit()
        if guest.tpm.wait(60) is None:
            raise GuestError(f"{kind} did not exit after quit")
        quit_time = time.perf_counter() - before
    return {"boot": booted - started, "pcrs": statistics.median(pcr_times), "quit": quit_time}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="boots per server (default 1)")
    parser.add_argument("--reads", type=int, default=5, help="`pcrs` commands per boot (default 5)")
    parser.add_argument("--model", default="tpm-crb", choices=("tpm-crb", "tpm-tis"))
    args = parser.parse_args(argv)
    if (reason := qemu_missing_reason()) is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    results: dict[str, dict[str, list[float]]] = {kind: {phase: [] for phase in PHASES} for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="qemu-bench-") as tmp:
        for number in range(args.rounds):
            for kind in KINDS if number % 2 == 0 else reversed(KINDS):
                workdir = Path(tmp) / f"{kind}-{number}"
                workdir.mkdir()
                for phase, seconds in one_round(kind, workdir, args.model, args.reads).items():
                    results[kind][phase].append(seconds)
    medians = {kind: {phase: statistics.median(values) for phase, values in phases.items()}
               for kind, phases in results.items()}
    print(f"QEMU guest ({args.model}, TCG), {args.rounds} boot(s) per server, {args.reads} `pcrs` reads per boot")
    print(f"{'phase':8} {'vtpm s':>10} {'swtpm s':>10} {'ratio':>8}")
    for phase in PHASES:
        ours, ref = medians["vtpm"][phase], medians["swtpm"][phase]
        print(f"{phase:8} {ours:10.3f} {ref:10.3f} {ours / ref:8.2f}")
    print(f"ratio: {medians['vtpm']['pcrs'] / medians['swtpm']['pcrs']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
