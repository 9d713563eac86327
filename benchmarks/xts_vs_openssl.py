"""Side by side in one run: `openssl speed -evp aes-256-xts` against vmcrypt's XTS engine.

Both encrypt 4 KiB data units on one core. openssl speed runs one EVP update
per 4 KiB buffer; vmcrypt runs its whole-run call (1 MiB of 4 KiB units per
call) and, for comparison, one call per 4 KiB unit. Rounds alternate so that
machine noise hits both sides alike; medians are reported. The last line is
``ratio: X.XX`` (vmcrypt 1 MiB runs / openssl).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import time

from vmcrypt import xts

UNIT = 4096


def openssl_speed(seconds: int) -> float:
    """Bytes per second from `openssl speed` at 4 KiB buffers."""
    out = subprocess.run(
        ["openssl", "speed", "-evp", "aes-256-xts", "-bytes", str(UNIT), "-seconds", str(seconds)],
        capture_output=True, text=True, check=True,
    ).stdout
    match = re.search(r"^AES-256-XTS\s+([\d.]+)k", out, re.MULTILINE)
    if not match:
        raise RuntimeError(f"cannot read openssl speed output:\n{out}")
    return float(match.group(1)) * 1000


def engine_speed(seconds: float, run_bytes: int) -> float:
    cipher = xts.XtsCipher(os.urandom(64))
    data = os.urandom(run_bytes)
    done, unit = 0, 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(max(1, (8 << 20) // run_bytes)):
            cipher.encrypt_units(unit, data, UNIT)
            unit += run_bytes // UNIT
            done += run_bytes
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=1)
    args = parser.parse_args()
    ref, ours, ours_unit = [], [], []
    for _ in range(args.rounds):
        ref.append(openssl_speed(args.seconds))
        ours.append(engine_speed(args.seconds, 1 << 20))
        ours_unit.append(engine_speed(args.seconds, UNIT))
    ref_m, ours_m, unit_m = (statistics.median(v) for v in (ref, ours, ours_unit))
    print(f"XTS backend: {xts.BACKEND}")
    print(f"openssl speed -evp aes-256-xts, 4 KiB buffers: {ref_m / 1e9:6.2f} GB/s")
    print(f"vmcrypt, 1 MiB runs of 4 KiB units:           {ours_m / 1e9:6.2f} GB/s  ({ours_m / ref_m:.2f}x)")
    print(f"vmcrypt, one 4 KiB unit per call:             {unit_m / 1e9:6.2f} GB/s  ({unit_m / ref_m:.2f}x)")
    print(f"ratio: {ours_m / ref_m:.2f}")


if __name__ == "__main__":
    main()
