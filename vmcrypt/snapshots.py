"""VM snapshots of the state a vTPM lives in: the whole .nvram, kept in a .vmsn file.

A snapshot holds the .nvram in clear *inside* the .vmsn, and the .vmsn is an
encrypted home file like the others (same DEK, label bound to its name), so a
deep rekey re-encrypts snapshots too and a revert writes the .nvram back under
the VM's current key. Reverting rolls the vTPM back with the rest of the VM:
NV indices, persistent keys and seeds are those of the snapshot.
"""

from __future__ import annotations

import base64
import datetime
import re
from dataclasses import dataclass
from pathlib import Path

from vmcrypt.errors import VmError
from vmcrypt.keys import KeyManager
from vmcrypt.vm import FileKind, VmFile, VmHome
from vmcrypt.home_json import read_home_json, write_home_json
from vmcrypt.vm_lock import lock_vm
from vmcrypt.vm_vtpm import VmNvramStore

FORMAT = 1


@dataclass(frozen=True)
class Snapshot:
    """A snapshot on disk: its number (1, 2, ...), its .vmsn file and when it was taken (file mtime, UTC)."""

    number: int
    path: Path
    taken: str


def _snapshot_path(vm: VmHome, number: int) -> Path:
    return vm.directory / f"{vm.name}-Snapshot{number}.vmsn"


def list_snapshots(vm: VmHome) -> list[Snapshot]:
    """The VM's snapshots by number, found by file name (nothing is decrypted)."""
    found = []
    pattern = re.compile(re.escape(vm.name) + r"-Snapshot(\d+)\.vmsn$")
    for path in vm.directory.glob(f"{vm.name}-Snapshot*.vmsn"):
        match = pattern.match(path.name)
        if match:
            found.append(Snapshot(int(match.group(1)), path, datetime.datetime.fromtimestamp(
                path.stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")))
    return sorted(found, key=lambda s: s.number)


def take_snapshot(vm: VmHome, home: str) -> Snapshot:
    """Copy the VM's .nvram into a new .vmsn, encrypted under the VM's key, numbered after the last one.

    ``home``: the management home, whose key providers unlock the VM. VmBusyError while the VM is in
    use; the .nvram store's errors (VmError, key provider errors) when it cannot be read."""
    with lock_vm(vm, "snapshot"):
        existing = list_snapshots(vm)
        number = (existing[-1].number + 1) if existing else 1
        path = _snapshot_path(vm, number)
        with VmNvramStore.open(vm.vmx_path, home=home) as store:
            nvram = store.read_plain()
            body = {"format": FORMAT, "vm": vm.name, "nvram": base64.b64encode(nvram).decode(),
                    "taken": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            write_home_json(vm, VmFile(path, FileKind.SNAPSHOT_MEMORY), body, store.key)
        return list_snapshots(vm)[-1]


def revert_snapshot(vm: VmHome, keys: KeyManager, home: str, number: int | None = None) -> Snapshot:
    """Write the snapshot's .nvram back, as a new (higher) generation: a revert is not a rollback."""
    with lock_vm(vm, "revert"):
        return _revert(vm, keys, home, number)


def _revert(vm: VmHome, keys: KeyManager, home: str, number: int | None) -> Snapshot:
    snapshots = list_snapshots(vm)
    if not snapshots:
        raise VmError("the VM has no snapshot", vm.vmx_path)
    chosen = snapshots[-1] if number is None else next((s for s in snapshots if s.number == number), None)
    if chosen is None:
        raise VmError(f"the VM has no snapshot {number}", vm.vmx_path)
    body = read_home_json(vm, VmFile(chosen.path, FileKind.SNAPSHOT_MEMORY), keys, FORMAT, "snapshot")
    try:
        if not isinstance(body.get("nvram"), str):
            raise ValueError("no 'nvram' text")
        nvram = base64.b64decode(body["nvram"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise VmError(f"the snapshot cannot be read ({exc})", chosen.path) from None
    with VmNvramStore.open(vm.vmx_path, home=home) as store:
        store.write_plain(nvram)
    return chosen
