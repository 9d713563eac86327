"""TPM server processes for tests and benchmarks: our vTPM (`python -m vtpm serve`) and swtpm.

Both listen on loopback, on a free port pair: P for TPM commands and P + 1 for
the control channel (swtpm protocol) or the platform port (mssim protocol).
A launcher returns only once the server is ready to answer: `vtpm serve` has
logged "serving on" (it does so after binding both ports, with the TPM
loaded), swtpm has answered a control-channel command. Readiness is polled
until a deadline, never waited for with a fixed sleep. A server that exits
first, or is not ready by the deadline, raises ServerError with its log; one
that exits because another process took its port meanwhile is started again
on another port.

A started server is a context manager: leaving the block stops it (SIGTERM,
then SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from support.tpm_helpers import HOST, ServerError, TpmConnection
from vtpm.host_protocol import HostClient
from vtpm.server.sockets import free_port_pair
from vtpm.transport import SocketTransport

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0  # seconds; a loaded 2-core machine starts a Python server in well under that
POLL_INTERVAL = 0.02
PORT_TAKEN = "Address already in use"  # what both servers log when their port was taken
CTRL_GET_CAPABILITY = 0x00000001


@dataclass
class ChildProcess:
    """A process a test started, with its output in a log file: the one set of process helpers."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    stop_timeout = 10.0  # seconds between SIGTERM and SIGKILL in ``stop``

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def rss_kib(self) -> int:
        """Resident set size from /proc/PID/status (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise ServerError(f"{self.name}: no VmRSS for pid {self.pid}")

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds; the exit status."""
        return stop_process(self.proc, self.stop_timeout if timeout is None else timeout)

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass
class TpmServer(ChildProcess):
    """A running TPM server process with a TCP port pair (``port``, ``port`` + 1) and a log file."""

    port: int = 0
    protocol: str = "swtpm"  # what a TCTI speaks to it: "swtpm" or "mssim"

    @property
    def tcti(self) -> str:
        return f"{self.protocol}:host={HOST},port={self.port}"

    def tools_env(self) -> dict[str, str]:
        """The environment for tpm2-tools talking to this server."""
        return {**os.environ, "TPM2TOOLS_TCTI": self.tcti}

    def connect(self, timeout: float = 10.0) -> TpmConnection:
        return TpmConnection(self.port, timeout=timeout)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds; the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)
    return proc.returncode


# ----------------------------------------------------------------------------- where servers listen

_next_pair: list[int] = []  # the next pair of a range a run chose (--port-base); empty: the OS picks free pairs


def use_ports_from(first: int | None) -> None:
    """Start the servers launched from now on at ``first``/``first``+1, then +2/+3 and so on (None: free pairs)."""
    _next_pair[:] = [] if first is None else [first]


def next_port_pair() -> int:
    """The data port of the next server: the next pair of the chosen range, else a free pair."""
    if not _next_pair:
        return free_port_pair()
    port = _next_pair[0]
    if port + 1 > 65535:
        raise ServerError("the chosen port range (--port-base) ran out")
    _next_pair[0] = port + 2
    return port


def _port_base(text: str) -> int:
    port = int(text)
    if not 1024 <= port <= 65534:
        raise argparse.ArgumentTypeError("must be between 1024 and 65534 (each server takes PORT and PORT+1)")
    return port


def add_endpoint_options(parser: argparse.ArgumentParser, *, ports: bool = True, directory: bool = True) -> None:
    """A benchmark's choice of where its servers listen: ``--port-base`` (TCP pairs from there up) and
    ``--dir`` (state, logs and Unix sockets; without it a temp directory, removed at the end)."""
    if ports:
        parser.add_argument("--port-base", type=_port_base, metavar="PORT",
                            help="TCP servers listen on PORT/PORT+1, PORT+2/PORT+3, ... (default: free pairs)")
    if directory:
        parser.add_argument("--dir", type=Path, metavar="DIR",
                            help="where state, logs and Unix sockets go, kept afterwards (default: a temp dir)")


@contextlib.contextmanager
def working_directory(args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    """Apply ``add_endpoint_options``' choices: the port range, and the directory to work in (``--dir``,
    created when absent and kept; else a new temp directory, removed on leaving)."""
    use_ports_from(getattr(args, "port_base", None))
    chosen = getattr(args, "dir", None)
    if chosen is not None:
        chosen.mkdir(parents=True, exist_ok=True)
        yield chosen.absolute()
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


# ----------------------------------------------------------------------------- readiness


def _wait_until_ready(server: TpmServer, ready: Callable[[TpmServer], bool], timeout: float) -> bool:
    """Poll ``ready(server)`` until the deadline; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while server.proc.poll() is None:
        if ready(server):
            return True
        if time.monotonic() >= deadline:
            server.stop()
            raise ServerError(f"{server.name} was not ready within {timeout:.0f} s; its log ({server.log_path}):\n"
                              f"{server.log_text()}")
        time.sleep(POLL_INTERVAL)
    return False


def _logged_serving(server: TpmServer) -> bool:
    return "vtpm: serving on" in server.log_text()


def _ctrl_answers(server: TpmServer) -> bool:
    """The control channel (port + 1) answers CMD_GET_CAPABILITY with success."""
    try:
        with socket.create_connection((HOST, server.port + 1), timeout=1.0) as sock:
            sock.sendall(CTRL_GET_CAPABILITY.to_bytes(4, "big"))
            answer = sock.recv(8, socket.MSG_WAITALL)
    except OSError:
        return False
    return len(answer) == 8 and answer[:4] == bytes(4)


def _launch(name: str, argv_for_port: Callable[[int], list[str]], log: Path, ready: Callable[[TpmServer], bool], *,
            protocol: str = "swtpm", port: int | None = None, env: dict[str, str] | None = None,
            timeout: float = READY_TIMEOUT, attempts: int = 5) -> TpmServer:
    log.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts if port is None else 1):
        chosen = port or next_port_pair()
        with open(log, "wb") as handle:  # the child keeps its own descriptor
            proc = subprocess.Popen(argv_for_port(chosen), stdin=subprocess.DEVNULL, stdout=handle,
                                    stderr=subprocess.STDOUT, env=env)
        server = TpmServer(name, proc, log, port=chosen, protocol=protocol)
        try:
            if _wait_until_ready(server, ready, timeout):
                return server
        except BaseException:
            server.stop()
            raise
        server.stop()
        if PORT_TAKEN not in server.log_text():
            break
    raise ServerError(f"{name} exited with status {server.proc.returncode} before it was ready; its log ({log}):\n"
                      f"{server.log_text()}")


# ----------------------------------------------------------------------------- our vTPM


def start_vtpm(args: Sequence[str | os.PathLike[str]], log: Path, protocol: str = "swtpm", *,
               port: int | None = None, python: str | None = None, timeout: float = READY_TIMEOUT) -> TpmServer:
    """`python -m vtpm serve ARGS` on 127.0.0.1, port ``port`` (a free pair when None), its output in ``log``.

    ARGS name the state (``--state DIR`` or ``--vm VMX``, maybe ``--key-file``) and
    options such as ``--startup-clear``; ``protocol`` is "swtpm" or "mssim". A
    ``--state`` directory that does not exist yet is created (``--create``): tests
    start from a new TPM. The child imports this checkout's ``vtpm`` (PYTHONPATH
    starts with the repository).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    create = ["--create"] if "--state" in map(str, args) else []
    command = [python or sys.executable, "-m", "vmcrypt.vtpm_command", "serve", *map(str, args), *create,
               "--host", HOST, "--protocol", protocol]

    def argv(chosen: int) -> list[str]:
        return [*command, "--port", str(chosen)]

    return _launch("vtpm", argv, log, _logged_serving, protocol=protocol, port=port, env=env, timeout=timeout)


def start_durable_echo(directory: Path, log: Path, *, native: bool = False) -> TpmServer:
    """``benchmarks/durable_echo_server.py``: one pwrite + fdatasync per command, a fixed answer (the floor
    under a served durable write), its file in ``directory``. ``native``: the same server in C
    (``benchmarks/durable_echo.c``, built in ``directory`` by ``build_durable_echo``)."""
    if native:
        program = [str(build_durable_echo(directory))]
        name = "durable-echo-c.bin"
    else:
        program = [sys.executable, str(REPO_ROOT / "benchmarks" / "durable_echo_server.py")]
        name = "durable-echo.bin"

    def argv(chosen: int) -> list[str]:
        return [*program, "--port", str(chosen), "--file", str(directory / name)]

    return _launch("durable echo (C)" if native else "durable echo", argv, log, _logged_serving)


def build_durable_echo(directory: Path) -> Path:
    """``benchmarks/durable_echo.c`` compiled with the C compiler Python was built with (``cc`` when it
    names none) into ``directory``; ServerError with the compiler's output when it cannot be built."""
    compiler = shlex.split(sysconfig.get_config_var("CC") or "") or ["cc"]
    if shutil.which(compiler[0]) is None:
        raise ServerError(f"no C compiler ({compiler[0]}) to build the C durable echo server; install gcc")
    program = directory / "durable-echo"
    done = subprocess.run([*compiler, "-O2", "-o", str(program), str(REPO_ROOT / "benchmarks" / "durable_echo.c")],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServerError(f"building the C durable echo server failed:\n{done.stdout}{done.stderr}")
    return program


# ----------------------------------------------------------------------------- swtpm


def swtpm_path() -> str:
    path = shutil.which("swtpm")
    if path is None:
        raise ServerError(
            "swtpm is not installed (no `swtpm` on PATH): the differential tests and benchmarks need the "
            "reference TPM; install the Debian packages swtpm and swtpm-tools"
        )
    return path


def require_swtpm_or_exit(parser: argparse.ArgumentParser) -> None:
    """For a benchmark script: end it with status 2 and the reason when the reference swtpm is missing."""
    try:
        swtpm_path()
    except ServerError as exc:
        parser.exit(2, f"error: {exc}\n")


def require_swtpm() -> None:
    """Fail (never skip) the calling test when the reference TPM is not installed."""
    import pytest

    try:
        swtpm_path()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


def start_swtpm(state_dir: Path, log: Path | None = None, *, timeout: float = READY_TIMEOUT) -> TpmServer:
    """swtpm (TPM 2.0, state in ``state_dir``) on 127.0.0.1, already started with Startup(CLEAR).

    Its output goes to ``log``, by default ``STATE_DIR.swtpm.log`` next to the state directory.
    """
    binary = swtpm_path()
    state_dir.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return [binary, "socket", "--tpm2",
                "--server", f"type=tcp,port={port},bindaddr={HOST}",
                "--ctrl", f"type=tcp,port={port + 1},bindaddr={HOST}",
                "--tpmstate", f"dir={state_dir}",
                "--flags", "not-need-init,startup-clear"]

    return _launch("swtpm", argv, log or state_dir.with_name(f"{state_dir.name}.swtpm.log"), _ctrl_answers,
                   timeout=timeout)


@contextlib.contextmanager
def side_by_side(base: Path) -> Iterator[dict[str, TpmServer]]:
    """Our vTPM and swtpm, each on fresh state under ``base`` and after Startup(CLEAR), keyed "vtpm" and
    "swtpm"; both stopped afterwards (the second is never left running when the first fails to start)."""
    with (start_vtpm(["--state", str(base / "vtpm-state"), "--startup-clear"], base / "vtpm.log") as ours,
          start_swtpm(base / "swtpm-state") as ref):
        yield {"vtpm": ours, "swtpm": ref}


def swtpm_localca_setup_config(base: Path) -> Path:
    """A swtpm_setup configuration whose swtpm_localca keeps its CA under ``base`` (not /var/lib)."""
    ca = base / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    (base / "localca.conf").write_text(f"statedir = {ca}\nsigningkey = {ca / 'signkey.pem'}\n"
                                       f"issuercert = {ca / 'issuercert.pem'}\ncertserial = {ca / 'certserial'}\n")
    (base / "localca.options").write_text("--platform-manufacturer Debian\n--platform-version 2.1\n--platform-model QEMU\n")
    setup = base / "setup.conf"
    setup.write_text(f"create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {base / 'localca.conf'}\n"
                     f"create_certs_tool_options = {base / 'localca.options'}\nactive_pcr_banks = sha256\n")
    return setup


# ----------------------------------------------------------------------------- `swtpm socket`-shaped processes


class SocketProcess(ChildProcess):
    """`vtpm socket ...` or `swtpm socket ...` on whatever endpoints its arguments name, with its output in a log."""


def vtpm_socket_argv(*args: str | os.PathLike[str]) -> list[str]:
    """The installed `vtpm socket ARGS` (this checkout's vmcrypt.vtpm_command) as a child process."""
    return [sys.executable, "-m", "vmcrypt.vtpm_command", "socket", *map(str, args)]


def checkout_env() -> dict[str, str]:
    """The environment for a child that must import this checkout (PYTHONPATH starts with the repository)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def unix_socket_ready(path: Path) -> Callable[[], bool]:
    """Ready once ``path`` is a socket that accepts a connection (the probe connection sends nothing)."""
    def ready() -> bool:
        if not path.is_socket():
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                probe.connect(str(path))
        except OSError:
            return False
        return True
    return ready


def start_socket_process(name: str, argv: Sequence[str], log: Path, ready: Callable[[], bool], *,
                         timeout: float = READY_TIMEOUT, pass_fds: Sequence[int] = ()) -> SocketProcess:
    """Start ``argv`` (output into ``log``, inheriting ``pass_fds``) and return once ``ready()``; ServerError
    with the log if it ends first."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                env=checkout_env(), pass_fds=tuple(pass_fds))
    server = SocketProcess(name, proc, log)
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return server
        if proc.poll() is not None:
            raise ServerError(f"{name} exited with status {proc.returncode} before it was ready; its log ({log}):\n"
                              f"{server.log_text()}")
        if time.monotonic() >= deadline:
            server.stop()
            raise ServerError(f"{name} was not ready within {timeout:.0f} s; its log ({log}):\n{server.log_text()}")
        time.sleep(POLL_INTERVAL)


def start_vtpm_socket(args: Sequence[str | os.PathLike[str]], log: Path, ready: Callable[[], bool],
                      *, timeout: float = READY_TIMEOUT, pass_fds: Sequence[int] = ()) -> SocketProcess:
    return start_socket_process("vtpm socket", vtpm_socket_argv(*args), log, ready, timeout=timeout,
                                pass_fds=pass_fds)


def start_swtpm_socket(args: Sequence[str | os.PathLike[str]], log: Path, ready: Callable[[], bool],
                       *, timeout: float = READY_TIMEOUT) -> SocketProcess:
    return start_socket_process("swtpm socket", [swtpm_path(), "socket", *map(str, args)], log, ready,
                                timeout=timeout)


@dataclass
class UnixTpmServer(SocketProcess):
    """A `swtpm socket`-shaped process whose data channel is a Unix stream socket (``data_path``)."""

    data_path: Path = Path()

    def connect(self, timeout: float = 10.0) -> SocketTransport:
        return SocketTransport.unix(str(self.data_path), timeout)


@contextlib.contextmanager
def side_by_side_unix(base: Path) -> Iterator[dict[str, UnixTpmServer]]:
    """``side_by_side`` on the path QEMU drives: `vtpm socket` and `swtpm socket` with the options libvirt
    passes (``--tpm2 --tpmstate dir= --ctrl type=unixio,path=``) and a Unix data socket (``--server
    type=unixio,path=``: the same kernel path as the socketpair QEMU hands over with CMD_SET_DATAFD),
    each on fresh state under ``base`` (``vtpm-state``, ``swtpm-state``) after Startup(CLEAR); keyed "vtpm"
    and "swtpm"."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, start in (("vtpm", start_vtpm_socket), ("swtpm", start_swtpm_socket)):
            state, data = base / f"{name}-state", base / f"{name}.sock"
            state.mkdir(parents=True, exist_ok=True)
            started = stack.enter_context(start(
                ["--tpm2", "--tpmstate", f"dir={state},mode=0600", "--server", f"type=unixio,path={data}",
                 "--ctrl", f"type=unixio,path={base / f'{name}.ctrl'},mode=0600",
                 "--flags", "not-need-init,startup-clear"], base / f"{name}.log", unix_socket_ready(data)))
            servers[name] = UnixTpmServer(started.name, started.proc, started.log_path, data_path=data)
        yield servers


# ----------------------------------------------------------------------------- vtpm host (many vTPMs, one process)


@dataclass
class HostServer(ChildProcess):
    """A running `vtpm host` process: its control socket, a client for it, and its log."""

    socket_path: Path = Path()
    stop_timeout = 30.0

    def client(self, timeout: float = 30.0) -> HostClient:
        return HostClient(self.socket_path, timeout=timeout)


def start_vtpm_host(socket_path: Path, log: Path, *options: str, timeout: float = READY_TIMEOUT) -> HostServer:
    """`vtpm host --socket SOCKET OPTIONS` (the `vtpm` command, with encrypted stores); returns once it
    has logged that it serves."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "vmcrypt.vtpm_command", "host", "--socket", str(socket_path),
                                 *options], stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=env)
    server = HostServer("vtpm host", proc, log, socket_path=socket_path)
    deadline = time.monotonic() + timeout
    while "vtpm host: serving on" not in server.log_text():
        if proc.poll() is not None or time.monotonic() >= deadline:
            server.stop()
            raise ServerError(f"vtpm host did not start; its log ({log}):\n{server.log_text()}")
        time.sleep(POLL_INTERVAL)
    return server


@dataclass
class HostedVtpmProcess:
    """One vTPM added to its own `vtpm host --exit-when-empty`, in the shape of a ``SocketProcess``.

    ``vtpm socket`` ends at CMD_SHUTDOWN; a hosted vTPM stops, loses its
    connections and stays added. ``wait`` so waits for exactly that (not
    running, no connection), then removes the vTPM (saved, lock released),
    after which the host ends by itself: its exit status is the answer.
    """

    host: HostServer
    name: str

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.host.proc

    def log_text(self) -> str:
        return self.host.log_text()

    def running(self) -> bool:
        return self.host.proc.poll() is None

    def describe(self) -> dict:
        return next(v for v in self.host.client().list() if v["name"] == self.name)

    def wait(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            vtpm = self.describe()
            if not vtpm["running"] and vtpm["connections"] == 0:
                break
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"vtpm host ({self.name})", timeout)
            time.sleep(POLL_INTERVAL)
        self.host.client().remove(self.name)
        return self.host.proc.wait(max(1.0, deadline - time.monotonic()))

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.host.stop(timeout)

    def __enter__(self) -> HostedVtpmProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_hosted_vtpm(base: Path, name: str, state: Path, ctrl: Path, *, incoming: bool = False,
                      log: Path | None = None) -> HostedVtpmProcess:
    """A `vtpm host` of its own (socket ``base/NAME.host``) serving one vTPM on the Unix control socket
    ``ctrl``, as QEMU uses it (the data channel comes with CMD_SET_DATAFD)."""
    host = start_vtpm_host(base / f"{name}.host", log or base / f"{name}.host.log", "--exit-when-empty")
    try:
        host.client().add(name, state=str(state), ctrl_unix=str(ctrl), incoming=incoming or None)
    except BaseException:
        host.stop()
        raise
    return HostedVtpmProcess(host, name)
