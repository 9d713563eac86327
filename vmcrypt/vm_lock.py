"""One lock per VM, shared by its vTPM and by every operation that rewrites the VM's files.

The vTPM server (``vtpm serve --vm``, or the home's ``vtpm host`` for a powered-on
VM) holds it for as long as it serves the VM; encrypt, decrypt, rekey, snapshot, revert, clone, migrate, backup, restore,
delete and vTPM changes hold it while they work. Whoever comes second is refused
at once, told who is in the way: "the VM's vTPM is running (powered on)" or
"another operation on this VM is in progress".

The lock is an flock on the VM's directory, so taking it creates no file. The
vTPM also holds an flock on ``.NAME.vtpm.lock`` (the file earlier builds locked),
which tells a running vTPM apart from another operation. Within one process the
lock is re-entrant: an operation may open the vTPM store of the VM it holds.
When a process first takes the lock, temporary files left in the VM directory by
a writer that died (``.vmcrypt-tmp-*``, complete older copies of the VM's files:
ready-made rollback material) are removed; nobody else can be writing them then.
"""

from __future__ import annotations

import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from durable.atomic import remove_stale_temp_files
from vmcrypt.errors import VmError
from vmcrypt.vm import VmHome

VTPM = "vtpm"  # the purpose of the vTPM server (and of anything else opening the vTPM on its own)


class VmBusyError(VmError):
    """The VM's lock is held by another process: its vTPM runs, or another operation works on it."""


@dataclass
class _Held:
    fd: int
    marker_fd: int | None
    purpose: str
    count: int = 1


_held: dict[tuple[int, int], _Held] = {}
_guard = threading.Lock()


def vtpm_marker(vm: VmHome) -> Path:
    """The marker file a running vTPM holds locked, so other processes see the VM's vTPM is in use."""
    return vm.directory / f".{vm.name}.vtpm.lock"


def _vtpm_running(vm: VmHome) -> bool:
    """True if a vTPM process holds the VM's marker lock (probing creates nothing)."""
    try:
        fd = os.open(vtpm_marker(vm), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _busy(vm: VmHome, purpose: str) -> VmBusyError:
    if _vtpm_running(vm):
        if purpose == VTPM:
            return VmBusyError("the vTPM of this VM is already being served (powered on)", vm.vmx_path)
        return VmBusyError(f"the VM's vTPM is running (powered on); {purpose} refused: power the VM off first",
                           vm.vmx_path)
    if purpose == VTPM:
        return VmBusyError("another operation (encrypt, decrypt, rekey, snapshot, backup, ...) is in progress "
                           "on this VM: its vTPM cannot start until it finishes", vm.vmx_path)
    return VmBusyError(f"another operation on this VM is in progress; {purpose} refused", vm.vmx_path)


class VmLock:
    """A held VM lock; release it (or leave the ``with`` block) when done."""

    def __init__(self, key: tuple[int, int]) -> None:
        self._key = key
        self._released = False

    def mark_vtpm(self, vm: VmHome) -> None:
        """Say that the vTPM is what holds the lock (from now until the lock is released)."""
        with _guard:
            held = _held[self._key]
            if held.marker_fd is not None or held.count > 1:
                return  # marked already, or the vTPM is opened inside another operation of this process
            fd = os.open(vtpm_marker(vm), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # cannot happen while we hold the directory lock and no old build runs
                os.close(fd)
                raise _busy(vm, VTPM) from None
            held.marker_fd = fd

    def release(self) -> None:
        """Release this hold on the VM; the lock is freed when the last hold in the process goes. Calling it again does
        nothing."""
        with _guard:
            if self._released:
                return
            self._released = True
            held = _held[self._key]
            held.count -= 1
            if held.count:
                return
            del _held[self._key]
            if held.marker_fd is not None:
                os.close(held.marker_fd)
            os.close(held.fd)

    def __enter__(self) -> "VmLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_vm(vm: VmHome, purpose: str) -> VmLock:
    """Take the VM's lock for ``purpose`` (``VTPM`` or an operation's name), or raise VmBusyError.

    Re-entrant within a process. Taking it creates no file; the vTPM server then calls
    ``mark_vtpm`` once it is sure to run.
    """
    fd = os.open(vm.directory, os.O_RDONLY | os.O_DIRECTORY)
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    with _guard:
        held = _held.get(key)
        if held is not None:  # this process holds it already
            os.close(fd)
            held.count += 1
            return VmLock(key)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _busy(vm, purpose) from None
            if _vtpm_running(vm):  # a vTPM of an earlier build, which only locked the marker
                raise _busy(vm, purpose)
            remove_stale_temp_files(vm.directory)
        except BaseException:
            os.close(fd)
            raise
        _held[key] = _Held(fd, None, purpose)
        return VmLock(key)
