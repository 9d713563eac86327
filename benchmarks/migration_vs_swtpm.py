"""Side by side in one run: the TPM's share of a live migration's downtime, `vtpm socket` against swtpm.

Starts two `vtpm socket` and two `swtpm socket` processes the way libvirt does
(Unix control socket, data channel passed by CMD_SET_DATAFD), runs QEMU's
start-up sequence, gives the first of each pair some guest state (PCR
extends, an NV index, a loaded HMAC key, an HMAC and a policy session), then
migrates it back and forth N times with QEMU's control commands: on the
source CMD_GET_STATEBLOB x3 (QEMU's pre_save), on the destination CMD_STOP,
CMD_SET_STATEBLOB per non-empty blob and CMD_INIT (post_load). Rounds
alternate between the implementations so that machine noise hits both alike.
Prints the median save and load times, the blob sizes, and last a line
``ratio: X.XX``: median (save + load) ours / swtpm.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from support.qemu_ctrl import QemuControl
from support.servers import (SocketProcess, add_endpoint_options, require_swtpm_or_exit, start_swtpm_socket,
                             start_vtpm_socket, unix_socket_ready)
from vtpm import wire
from vtpm.constants import ALG, CC, RH


def start(impl: str, base: Path, name: str) -> tuple[SocketProcess, QemuControl]:
    ctrl, state = base / f"{name}.ctrl", base / f"{name}-state"
    state.mkdir()
    args = ["--ctrl", f"type=unixio,path={ctrl},mode=0600", "--tpmstate", f"dir={state},mode=0600",
            "--log", f"file={base / (name + '.log')}", "--terminate", "--tpm2"]
    starter = start_vtpm_socket if impl == "vtpm" else start_swtpm_socket
    process = starter(args, base / f"{name}.out", unix_socket_ready(ctrl))
    qemu = QemuControl.unix(str(ctrl))
    qemu.startup_sequence()
    return process, qemu


def guest_activity(qemu: QemuControl) -> None:
    def ok(command: bytes) -> bytes:
        for _ in range(5):
            response = qemu.transact(command)
            if wire.response_code(response) != 0x922:  # TPM_RC_RETRY
                break
        if wire.response_code(response) != 0:
            raise SystemExit(f"guest command failed: {wire.describe_rc(wire.response_code(response))}")
        return response

    ok(wire.STARTUP_CLEAR)
    for pcr in range(8):
        ok(wire.pcr_extend(pcr, {ALG.SHA256: bytes([pcr]) * 32, ALG.SHA1: bytes([pcr]) * 20}))
    ok(wire.nv_define_space(0x01500030, 0x0006_0006, 64))
    template = ((0x0008).to_bytes(2, "big") + ALG.SHA256.to_bytes(2, "big") + (0x00040072).to_bytes(4, "big")
                + wire.tpm2b(b"") + (0x0005).to_bytes(2, "big") + ALG.SHA256.to_bytes(2, "big") + wire.tpm2b(b""))
    ok(wire.create_primary(template, RH.OWNER))
    for kind in (0, 1):
        ok(wire.build_command(CC.StartAuthSession, [RH.NULL, RH.NULL], wire.tpm2b(bytes(32)) + wire.tpm2b(b"")
                              + bytes([kind]) + ALG.NULL.to_bytes(2, "big") + ALG.SHA256.to_bytes(2, "big")))


def migrate(src: QemuControl, dst: QemuControl) -> tuple[float, float, list[int]]:
    clock = time.perf_counter
    start = clock()
    blobs = src.get_state_blobs()
    saved = clock()
    dst.set_state_blobs(blobs)
    loaded = clock()
    return saved - start, loaded - saved, [len(blob) for _, blob in blobs.values()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="migrations per implementation (default 20)")
    add_endpoint_options(parser, ports=False)  # every socket here is a Unix socket under --dir
    args = parser.parse_args()
    require_swtpm_or_exit(parser)
    base = args.dir.absolute() if args.dir else Path(tempfile.mkdtemp(prefix="vmig", dir="/tmp"))  # short socket paths
    base.mkdir(parents=True, exist_ok=True)
    processes: list[SocketProcess] = []
    try:
        pairs = {}
        for impl in ("vtpm", "swtpm"):
            a, qa = start(impl, base, f"{impl}-a")
            b, qb = start(impl, base, f"{impl}-b")
            processes += [a, b]
            guest_activity(qa)
            pairs[impl] = [qa, qb]
        samples: dict[str, list[tuple[float, float]]] = {impl: [] for impl in pairs}
        sizes: dict[str, list[int]] = {}
        for _ in range(args.rounds):
            for impl, (src, dst) in pairs.items():
                save, load, sizes[impl] = migrate(src, dst)
                samples[impl].append((save, load))
                pairs[impl] = [dst, src]
        totals = {}
        for impl, values in samples.items():
            save = statistics.median(v[0] for v in values) * 1000
            load = statistics.median(v[1] for v in values) * 1000
            totals[impl] = statistics.median(v[0] + v[1] for v in values)
            print(f"{impl:6}  save {save:7.2f} ms  load+init {load:7.2f} ms  "
                  f"blobs permanent/volatile/savestate {'/'.join(map(str, sizes[impl]))} bytes")
        for qemu_pair in pairs.values():
            for qemu in qemu_pair:
                qemu.shutdown()
                qemu.close()
        print(f"ratio: {totals['vtpm'] / totals['swtpm']:.2f}")
        return 0
    finally:
        for process in processes:
            process.stop()
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
