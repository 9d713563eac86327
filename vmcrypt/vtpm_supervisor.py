"""The vTPM processes of powered-on VMs: start, health, stop.

A powered-on VM's vTPM runs as its own process (as the VMX process would run
it), serving the swtpm protocol on a loopback port pair. The supervisor starts
it with a minimal environment (no secrets of the operator's shell), waits until
it logs that it serves, and stops it with SIGTERM (SIGKILL after a grace
period). It knows nothing of privileges or the inventory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from vmcrypt.errors import VmError
from vmcrypt.vm import VmHome
from vtpm.server.sockets import free_port_pair

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL = 0.05
# What a vTPM process gets from our environment: nothing secret (no $VMCRYPT_PASSWORD, no passphrases).
CHILD_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "TMPDIR")


class VtpmSupervisor:
    def __init__(self, home: str | os.PathLike[str], command_line: Callable[..., list[str]]) -> None:
        """``command_line(*args)``: the argv of the `vtpm` command with ``args`` (vmcrypt.vtpm_command's)."""
        self.home = Path(home)
        self.command_line = command_line

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    def start(self, vm: VmHome) -> tuple[int, int]:
        """Serve the VM's vTPM; (pid, port) once it serves. Refused with the vTPM's own reason if it stops first."""
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        log = self.run_dir / f"{vm.name}.vtpm.log"
        port = free_port_pair()
        env = {name: os.environ[name] for name in CHILD_ENVIRONMENT if name in os.environ}
        env["VMCRYPT_HOME"] = str(self.home)
        with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            process = subprocess.Popen(
                self.command_line("serve", "--vm", str(vm.vmx_path), "--port", str(port)),
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "serving on" in text:
                return process.pid, port
            if process.poll() is not None:
                last = text.strip().splitlines()[-1] if text.strip() else "no output"
                raise VmError(f"the vTPM did not start: {last.removeprefix('error: vtpm serve: ')}", vm.vmx_path)
            time.sleep(POLL)
        process.kill()
        raise VmError("the vTPM did not start in time", vm.vmx_path)

    @staticmethod
    def running(pid: int | None) -> bool:
        """Whether the vTPM process ``pid`` is still there (a zombie child counts as gone)."""
        if not pid:
            return False
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            return done == 0
        except ChildProcessError:  # not our child (another process powered it on)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True

    def stop(self, pid: int | None) -> None:
        """SIGTERM, then SIGKILL if it has not ended within the grace period."""
        if not pid:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running(pid):
                return
            time.sleep(POLL)
        os.kill(pid, signal.SIGKILL)
