"""The vTPMs of powered-on VMs: one `vtpm host` process per management home.

Power-on makes sure the home's host runs (``HOME/run/vtpm/host.sock``, the
directory 0700, the socket 0600) and adds the VM's vTPM to it: the host opens
the VM's store (checks its files, unlocks its key, takes the VM's lock) and
serves it on a loopback TCP pair and a Unix control socket next to the host's;
the TPM state itself is read at the first command. Power-off removes it:
Shutdown if the guest did not send one, state saved, sockets closed, lock
released, before the call returns. The host is started with a minimal
environment (no secrets of the operator's shell) and ends by itself when its
last vTPM is removed (or the add it was started for is refused). Operations on
the host are serialized across processes by an flock next to its socket. The
supervisor knows nothing of privileges or the inventory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vmcrypt.errors import VmError
from vmcrypt.vm import VmHome
from vtpm.host_protocol import HostClient, HostError, HostUnavailable
from vtpm.server.sockets import free_port_pair

START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 60.0  # adding a VM unlocks its key at the key provider (a KMIP server may be slow)
POLL = 0.05
PORT_ATTEMPTS = 5
# What the host process gets from our environment: nothing secret (no $VMCRYPT_PASSWORD, no passphrases).
CHILD_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "TMPDIR")
PORT_TAKEN = "Address already in use"
ANOTHER_HOST = "another vtpm host serves"
_PLAIN_SOCKET_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,47}")
_DIGEST_NAME = re.compile(r"vm-[0-9a-f]{20}")  # the digest form: never taken by a plain name


class VtpmSupervisor:
    """Starts and stops the vTPMs of one management home's VMs in its `vtpm host` process (see the module)."""

    def __init__(self, home: str | os.PathLike[str], command_line: Callable[..., list[str]]) -> None:
        """``command_line(*args)``: the argv of the `vtpm` command with ``args`` (vmcrypt.vtpm_command's)."""
        self.home = Path(home)
        self.command_line = command_line

    @property
    def run_dir(self) -> Path:
        """``HOME/run``: runtime files of the home (sockets, locks), not part of its data."""
        return self.home / "run"

    @property
    def host_dir(self) -> Path:
        """``HOME/run/vtpm`` (0700): the host's socket, its lock and the vTPMs' control sockets."""
        return self.run_dir / "vtpm"

    @property
    def data_socket_dir(self) -> Path:
        """Where the management service puts the vTPM data sockets its callers name (0700, created on use)."""
        return self.host_dir / "data"

    def data_socket(self, vm_name: str) -> Path:
        """The data socket the service serves ``vm_name``'s vTPM on when asked for one: the name itself
        when it is short and plain, else a digest of it (a Unix socket path is at most 107 bytes)."""
        if _PLAIN_SOCKET_NAME.fullmatch(vm_name) and not _DIGEST_NAME.fullmatch(vm_name):
            return self.data_socket_dir / f"{vm_name}.sock"
        return self.data_socket_dir / f"vm-{hashlib.sha256(vm_name.encode()).hexdigest()[:20]}.sock"

    @property
    def socket_path(self) -> Path:
        """The host's control socket (0600)."""
        return self.host_dir / "host.sock"

    def client(self) -> HostClient:
        """A client of the home's host, with a timeout long enough for a slow key provider; it does not
        start the host."""
        return HostClient(self.socket_path, timeout=REQUEST_TIMEOUT)

    @contextlib.contextmanager
    def _serialized(self) -> Iterator[None]:
        """One supervisor at a time talks to (or starts) the home's host."""
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        self.host_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.host_dir, 0o700)
        self.data_socket_dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.host_dir / "ops.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def vtpm_name(vm: VmHome) -> str:
        """The VM's vTPM in the host: its name, or a digest of its path when the name is long."""
        name = vm.name
        if len(name.encode()) <= 48 and name.isprintable():
            return name
        return "vm-" + hashlib.sha256(str(vm.vmx_path).encode()).hexdigest()[:20]

    def start(self, vm: VmHome, *, port: int | None = None, data_unix: str | None = None) -> tuple[int, int]:
        """Serve the VM's vTPM; (host pid, TCP data port). Refused with the host's reason.

        ``port``: the TCP data port (control on port + 1) the caller chose; by default a
        free pair is picked (and picked again if another process takes it first).
        ``data_unix``: also serve the data channel on this Unix socket path.
        """
        name = self.vtpm_name(vm)
        extra = {"data_unix": os.path.abspath(data_unix)} if data_unix is not None else {}
        with self._serialized():
            for _ in range(PORT_ATTEMPTS):
                client, pid = self._ensure_host(vm)
                chosen = port if port is not None else free_port_pair()
                try:
                    client.add(name, vm=os.path.abspath(vm.vmx_path), tcp_port=chosen,
                               ctrl_unix=str(self.host_dir / f"{name}.ctrl"), **extra)
                    return pid, chosen
                except HostUnavailable:
                    continue  # the host was ending (its last vTPM was just removed): start another
                except HostError as exc:
                    if PORT_TAKEN in str(exc) and port is None:
                        continue  # another process took the port meanwhile
                    if "is already hosted" in str(exc):  # left from a power-on the inventory never recorded
                        client.remove(name)
                        continue
                    raise VmError(f"the vTPM did not start: {exc}", vm.vmx_path) from None
        raise VmError("the vTPM did not start: no free port pair", vm.vmx_path)

    def _ensure_host(self, vm: VmHome) -> tuple[HostClient, int]:
        """The home's host, started if none answers."""
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                return client, int(client.ping()["pid"])
            except HostUnavailable:
                pass
            self._spawn(vm, deadline)
            if time.monotonic() >= deadline:
                raise VmError("the vTPM host did not start in time", vm.vmx_path)

    def _spawn(self, vm: VmHome, deadline: float) -> None:
        """Start a host and wait until it answers (or has ended: then another host may have won)."""
        log = self.host_dir / "host.log"
        env = {name: os.environ[name] for name in CHILD_ENVIRONMENT if name in os.environ}
        env["VMCRYPT_HOME"] = str(self.home)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        start = os.lseek(fd, 0, os.SEEK_END)
        with open(fd, "wb") as handle:
            process = subprocess.Popen(
                self.command_line("host", "--socket", str(self.socket_path), "--exit-when-empty"),
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
            )
        client = self.client()
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except HostUnavailable:
                pass
            if process.poll() is not None:
                with open(log, "rb") as reader:
                    reader.seek(start)
                    text = reader.read().decode(errors="replace").strip()
                if ANOTHER_HOST in text:
                    return  # one started meanwhile: ping it again
                last = text.splitlines()[-1] if text else "no output"
                raise VmError(f"the vTPM host did not start: {last.removeprefix('error: vtpm host: ')}", vm.vmx_path)
            time.sleep(POLL)
        process.kill()

    @staticmethod
    def running(pid: int | None) -> bool:
        """Whether the process ``pid`` is still there (a zombie child counts as gone)."""
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

    def stop(self, vm: VmHome) -> None:
        """Remove the VM's vTPM from the host: Shutdown if needed, state saved, lock released.
        Nothing to do when no host runs or it does not serve the VM (it ended, or crashed)."""
        with self._serialized():
            try:
                self.client().remove(self.vtpm_name(vm))
            except HostUnavailable:
                return
            except HostError as exc:
                if "no vTPM named" in str(exc):
                    return
                raise VmError(f"the vTPM did not stop cleanly: {exc}", vm.vmx_path) from None
