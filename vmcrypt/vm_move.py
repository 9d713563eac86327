"""Moving a powered-off VM's directory: to another datastore, or to another management home.

One way for both cold migrations: under the VM's lock, copy the directory (files
with their holes: disks stay sparse) to a staging name beside the destination, rename it into place, let the caller adopt
the copy (register it in an inventory), and only then remove the source. The
source stays whole until the copy is complete and adopted; a failed adoption
removes the copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vmcrypt import disk_stream
from vmcrypt.errors import VmError
from vmcrypt.vm import VmHome
from vmcrypt.vm_lock import lock_vm

T = TypeVar("T")


def _copy_keeping_holes(source: str, destination: str) -> str:
    """``copytree``'s copy: the contents with their holes (a sparse disk stays sparse), then mode and times."""
    disk_stream.copy_sparse(Path(source), Path(destination))
    shutil.copystat(source, destination)
    return destination


def move_vm(vm: VmHome, destination: Path, adopt: Callable[[Path], T]) -> T:
    """Move ``vm``'s directory to ``destination``; ``adopt(new .vmx path)`` registers the copy before the source goes."""
    if destination.exists():
        raise VmError(f"{destination} already exists", destination)
    with lock_vm(vm, "migrate"):
        staging = destination.with_name(f".{destination.name}.migrating")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(vm.directory, staging, copy_function=_copy_keeping_holes)
        staging.rename(destination)
        try:
            adopted = adopt(destination / vm.vmx_path.name)
        except BaseException:
            shutil.rmtree(destination, ignore_errors=True)
            raise
        shutil.rmtree(vm.directory)
    return adopted
