"""QEMU guests with a TPM for the boot tests: a busybox initramfs, QEMU and the TPM server in libvirt's shape.

The guest is a Debian kernel (scripts/guest_kernel.sh unpacks it into
``.cache/guest-kernel``) booted directly by OVMF (``-kernel``/``-initrd``) with a
tiny initramfs built here: busybox and an init script that mounts proc, sysfs,
devtmpfs and securityfs, loads the TPM drivers if the kernel has them as
modules, then prints the PCRs (``/sys/class/tpm/tpm0/pcr-<bank>/N``, N = 0-9) and
the firmware event log (base64) on the serial console between markers, and
waits for commands on that console: ``pcrs`` and ``eventlog`` print again,
``poweroff`` powers off. A migrated guest can so be asked again.

QEMU and the TPM server are started the way libvirt starts them: the TPM server
as ``socket --ctrl type=unixio,path=…,mode=0600 --tpmstate dir=…,mode=0600
--log file=… --pid file=… --terminate --tpm2`` (the reference ``swtpm`` or our
``python -m vtpm``) or, kind ``vtpm-host``, a vTPM added with ``ctrl_unix`` to a
``vtpm host --exit-when-empty`` of its own (how the management plane serves a
VM's vTPM; QEMU connects to that control socket the same way), QEMU with ``-chardev socket,path=CTRL -tpmdev emulator
-device tpm-crb|tpm-tis`` on q35 with OVMF in pflash, TCG, ``-nodefaults``, a QMP
socket and the serial port on a Unix socket.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from support.servers import HostedVtpmProcess, start_hosted_vtpm, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
KERNEL_DIR = Path(os.environ.get("VMCRYPT_GUEST_KERNEL_DIR", REPO_ROOT / ".cache" / "guest-kernel"))
INITRAMFS_DIR = REPO_ROOT / ".cache" / "guest-initramfs"
BUSYBOX = Path("/bin/busybox")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"
PCR_INDICES = range(10)
TPM_MODULES = ("tpm_crb", "tpm_tis")  # loaded when the kernel builds them as modules
BOOT_TIMEOUT = 300.0  # seconds: OVMF + Linux under TCG take 8-10 s on a quiet machine, far more on a busy one
COMMAND_TIMEOUT = 120.0
SERVER_TIMEOUT = 30.0
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL

CLEAN_SHUTDOWN_FAILURE = "Could not cleanly shutdown the TPM"

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
for m in $(cat /etc/tpm-modules 2>/dev/null); do
    insmod "/lib/modules/$m" || echo "GUEST-ERROR insmod $m"
done
stty -echo 2>/dev/null
i=0
while [ ! -e /sys/class/tpm/tpm0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -e /sys/class/tpm/tpm0 ] || { echo "GUEST-ERROR no /sys/class/tpm/tpm0"; dmesg | grep -i tpm; }
pcrs() {
    echo GUEST-PCRS-BEGIN
    for bank in /sys/class/tpm/tpm0/pcr-*; do
        for n in @PCRS@; do echo "PCR ${bank##*/pcr-} $n $(cat "$bank/$n")"; done
    done
    echo GUEST-PCRS-END
}
eventlog() {
    log=/sys/kernel/security/tpm0/binary_bios_measurements
    [ -r $log ] || echo "GUEST-ERROR no $log: the firmware published no event log"
    echo GUEST-EVENTLOG-BEGIN
    base64 $log 2>/dev/null
    echo GUEST-EVENTLOG-END
}
pcrs
eventlog
echo GUEST-PROMPT
while read -r cmd; do
    case "$cmd" in
        pcrs) pcrs ;;
        eventlog) eventlog ;;
        poweroff) poweroff -f ;;
        *) echo "GUEST-UNKNOWN $cmd" ;;
    esac
    echo GUEST-PROMPT
done
""".replace("@PCRS@", " ".join(map(str, PCR_INDICES)))


class GuestError(Exception):
    """The guest, QEMU or the TPM server did not do what the test needs; the message carries their output."""


def qemu_missing_reason() -> str | None:
    """Why QEMU boot tests cannot run here, or None: only a missing QEMU binary is a reason to skip."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-system-x86; scripts/bootstrap.sh installs it)"
    return None


def require_guest_files() -> None:
    """Fail clearly when a file the boot needs is missing (bootstrap provides them all)."""
    needed = {KERNEL_DIR / "vmlinuz": "scripts/guest_kernel.sh", BUSYBOX: "busybox-static",
              OVMF_CODE: "ovmf", OVMF_VARS: "ovmf"}
    missing = [f"{path} ({source})" for path, source in needed.items() if not path.is_file()]
    if missing:
        raise GuestError("missing for the QEMU boot: " + ", ".join(missing) + "; run scripts/bootstrap.sh")


# ----------------------------------------------------------------------------- initramfs


def _cpio_entry(name: str, mode: int, data: bytes = b"", *, rdev: tuple[int, int] = (0, 0), ino: int) -> bytes:
    """One "newc" cpio member (the format the kernel unpacks into its rootfs)."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = b"070701" + b"".join(f"{value:08X}".encode() for value in fields)
    pad = lambda n: b"\0" * (-n % 4)  # noqa: E731 - header+name and data are each padded to 4 bytes
    return header + encoded + pad(len(header) + len(encoded)) + data + pad(len(data))


def _module_files(kernel_dir: Path) -> list[tuple[str, Path]]:
    """The TPM driver modules and their dependencies in load order, when the kernel has them as modules."""
    config = (kernel_dir / "config").read_text() if (kernel_dir / "config").exists() else ""
    wanted = [name for name, option in (("tpm_crb", "CONFIG_TCG_CRB"), ("tpm_tis", "CONFIG_TCG_TIS"))
              if f"{option}=m" in config]
    if not wanted:
        return []
    # module names use "-" and "_" interchangeably (modinfo's depends= may say rng-core for rng_core.ko)
    found = {path.name.split(".ko")[0].replace("-", "_"): path
             for path in kernel_dir.glob("lib/modules/*/kernel/**/*.ko*")}
    order: list[str] = []

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in order:
            return
        path = found.get(name)
        if path is None:
            raise GuestError(f"kernel module {name} is not in {kernel_dir} (scripts/guest_kernel.sh keeps drivers/char)")
        match = re.search(rb"depends=([^\0]*)\0", path.read_bytes())
        for dep in filter(None, (match.group(1).decode().split(",") if match else [])):
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(name)
    return [(found[name].name, found[name]) for name in order]


def build_initramfs(kernel_dir: Path = KERNEL_DIR, cache: Path = INITRAMFS_DIR, busybox: Path = BUSYBOX) -> Path:
    """The guest's initramfs (uncompressed newc cpio), built once per content and reused from ``cache``."""
    modules = _module_files(kernel_dir)
    members: list[tuple[str, int, bytes, tuple[int, int]]] = [
        (d, 0o040755, b"", (0, 0)) for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp")]
    members += [("dev/console", 0o020600, b"", (5, 1)),
                ("init", 0o100755, INIT_SCRIPT.encode(), (0, 0)),
                ("bin/busybox", 0o100755, busybox.read_bytes(), (0, 0)),
                ("etc/tpm-modules", 0o100644, "".join(f"{n}\n" for n, _ in modules).encode(), (0, 0))]
    members += [(f"lib/modules/{n}", 0o100644, p.read_bytes(), (0, 0)) for n, p in modules]
    digest = hashlib.sha256()
    for name, mode, data, rdev in members:
        digest.update(f"{name}\0{mode}\0{rdev}\0{len(data)}\0".encode() + data)
    target = cache / f"initramfs-{digest.hexdigest()[:16]}.cpio"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    archive = b"".join(_cpio_entry(name, mode, data, rdev=rdev, ino=i + 1)
                       for i, (name, mode, data, rdev) in enumerate(members))
    archive += _cpio_entry("TRAILER!!!", 0, ino=0)
    temp = target.with_suffix(f".tmp{os.getpid()}")
    temp.write_bytes(archive)
    temp.replace(target)  # concurrent builders write the same bytes
    return target


# ----------------------------------------------------------------------------- the TPM server (libvirt's shape)


@dataclass
class TpmSocketServer:
    """A TPM server started as libvirt starts swtpm: control channel on a Unix socket, ``--terminate``."""

    kind: str  # "swtpm" (the reference), "vtpm" (ours) or "vtpm-host" (ours, one vTPM of a `vtpm host`)
    proc: subprocess.Popen[bytes]
    ctrl: Path
    state: Path
    log: Path
    output: Path  # stdout and stderr
    hosted: HostedVtpmProcess | None = None  # kind vtpm-host: the host and the vTPM's name

    def log_text(self) -> str:
        texts = []
        for path in (self.log, self.output):
            with contextlib.suppress(OSError):
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def wait(self, timeout: float) -> int | None:
        """The exit status once the process has ended by itself within ``timeout`` seconds, else None.

        A hosted vTPM does not end a process at CMD_SHUTDOWN: once it is stopped and has no connection
        it is removed from its host, which then ends by itself (``HostedVtpmProcess.wait``)."""
        try:
            if self.hosted is not None:
                return self.hosted.wait(timeout)
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        return stop_process(self.proc)


def tpm_server_command(kind: str) -> list[str]:
    if kind == "swtpm":
        return [shutil.which("swtpm") or "swtpm"]
    if kind == "vtpm":
        return [sys.executable, "-m", "vtpm"]
    raise ValueError(f"unknown TPM server kind {kind!r}")


def start_tpm_server(kind: str, workdir: Path, name: str = "tpm") -> TpmSocketServer:
    """Start the TPM server in libvirt's shape; return once its control socket exists.

    Readiness is the socket file only: with ``--terminate`` a probe connection that
    closes would end the server, so nothing connects before QEMU does (libvirt waits
    the same way)."""
    state = workdir / f"{name}-state"
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    ctrl, log, output, pid = (workdir / f"{name}{suffix}" for suffix in (".ctrl", ".log", ".out", ".pid"))
    if kind == "vtpm-host":
        hosted = start_hosted_vtpm(workdir, name, state, ctrl, log=log)
        return TpmSocketServer(kind, hosted.proc, ctrl, state, log, output, hosted)
    argv = [*tpm_server_command(kind), "socket",
            "--ctrl", f"type=unixio,path={ctrl},mode=0600",
            "--tpmstate", f"dir={state},mode=0600",
            "--log", f"file={log}",
            "--pid", f"file={pid}",
            "--terminate", "--tpm2"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(output, "wb") as handle:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=env)
    server = TpmSocketServer(kind, proc, ctrl, state, log, output)
    deadline = time.monotonic() + SERVER_TIMEOUT
    while not ctrl.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise GuestError(f"{kind} socket did not create {ctrl} (exit {proc.returncode}):\n{server.log_text()}")
        time.sleep(0.02)
    return server


# ----------------------------------------------------------------------------- QMP


class Qmp:
    """A synchronous QMP client on QEMU's Unix socket: commands in order, events kept aside."""

    def __init__(self, path: Path, timeout: float = COMMAND_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("rb")
        self.events: list[dict] = []
        greeting = self._message()
        if "QMP" not in greeting:
            raise GuestError(f"no QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _message(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise GuestError("QMP connection closed")
        return json.loads(line)

    def execute(self, command: str, **arguments: object) -> object:
        request: dict[str, object] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._message()
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise GuestError(f"QMP {command}: {message['error']}")
            elif "return" in message:
                return message["return"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
            self.sock.close()


# ----------------------------------------------------------------------------- the serial console


class SerialConsole:
    """The guest's serial port (a QEMU Unix socket server): output collected by a thread, commands written."""

    def __init__(self, path: Path, transcript: Path) -> None:
        self.sock = _connect_unix(path, SERVER_TIMEOUT)
        self.transcript = transcript
        self.buffer = bytearray()
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        with open(self.transcript, "ab") as log:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except OSError:
                    chunk = b""
                with self.changed:
                    if chunk:
                        self.buffer += chunk
                    self.changed.notify_all()
                if not chunk:
                    return
                log.write(chunk)
                log.flush()

    def text(self) -> str:
        with self.changed:
            return self.buffer.decode(errors="replace").replace("\r", "")

    def wait_for(self, marker: str, start: int, timeout: float) -> int:
        """Wait until ``marker`` appears after character ``start``; its end position."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                text = self.buffer.decode(errors="replace").replace("\r", "")
                position = text.find(marker, start)
                if position >= 0:
                    return position + len(marker)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.thread.is_alive():
                    raise GuestError(f"the guest did not print {marker!r} within {timeout:.0f} s; console:\n"
                                     f"{text[-4000:]}")
                self.changed.wait(min(remaining, 1.0))

    def send(self, line: str) -> int:
        """Write a command line; the position in the output from which its answer comes."""
        start = len(self.text())
        self.sock.sendall(line.encode() + b"\r")
        return start

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def _connect_unix(path: Path, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise GuestError(f"nothing listens on {path}") from None
            time.sleep(0.02)


# ----------------------------------------------------------------------------- what the guest reports


@dataclass
class GuestReport:
    """PCR values per bank (name → index → digest) and the firmware event log, as the guest read them."""

    pcrs: dict[str, dict[int, bytes]] = field(default_factory=dict)
    eventlog: bytes | None = None


def parse_pcrs(text: str) -> dict[str, dict[int, bytes]]:
    banks: dict[str, dict[int, bytes]] = {}
    for match in re.finditer(r"^PCR (\w+) (\d+) ([0-9A-Fa-f]+)$", text, re.MULTILINE):
        banks.setdefault(match.group(1), {})[int(match.group(2))] = bytes.fromhex(match.group(3))
    return banks


def _between(text: str, begin: str, end: str) -> str:
    start = text.rindex(begin) + len(begin)
    return text[start:text.index(end, start)]


# ----------------------------------------------------------------------------- QEMU


@dataclass
class Qemu:
    """A running QEMU with its TPM server, QMP and serial console."""

    name: str
    proc: subprocess.Popen[bytes]
    tpm: TpmSocketServer
    qmp: Qmp
    console: SerialConsole
    stderr_path: Path

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def diagnostics(self) -> str:
        return (f"--- {self.name} QEMU stderr:\n{self.stderr()}\n--- {self.tpm.kind} log:\n{self.tpm.log_text()}\n"
                f"--- console (tail):\n{self.console.text()[-3000:]}")

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> GuestReport:
        """Wait for the guest's first report (PCRs and event log) and its prompt."""
        try:
            end = self.console.wait_for("GUEST-PROMPT", 0, timeout)
        except GuestError as exc:
            raise GuestError(f"{exc}\n{self.diagnostics()}") from None
        text = self.console.text()[:end]
        errors = [line for line in text.splitlines() if "GUEST-ERROR" in line]
        if errors:
            raise GuestError("the guest reported: " + "; ".join(errors) + f"\n{self.diagnostics()}")
        log = "".join(_between(text, "GUEST-EVENTLOG-BEGIN", "GUEST-EVENTLOG-END").split())
        try:
            eventlog = base64.b64decode(log, validate=True)
        except ValueError:
            raise GuestError(f"the guest's event log is not base64:\n{self.diagnostics()}") from None
        return GuestReport(parse_pcrs(_between(text, "GUEST-PCRS-BEGIN", "GUEST-PCRS-END")), eventlog)

    def read_pcrs(self, timeout: float = COMMAND_TIMEOUT) -> dict[str, dict[int, bytes]]:
        """Ask the running guest for its PCRs again (the ``pcrs`` console command)."""
        start = self.console.send("pcrs")
        end = self.console.wait_for("GUEST-PROMPT", start, timeout)
        return parse_pcrs(_between(self.console.text()[:end], "GUEST-PCRS-BEGIN", "GUEST-PCRS-END"))

    def status(self) -> str:
        return str(self.qmp.execute("query-status")["status"])  # type: ignore[index]

    def quit(self, timeout: float = COMMAND_TIMEOUT) -> int:
        """QMP ``quit``; QEMU's exit status (QEMU shuts its TPM down on the way out)."""
        with contextlib.suppress(GuestError, OSError):
            self.qmp.execute("quit")
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise GuestError(f"QEMU did not exit within {timeout:.0f} s of quit\n{self.diagnostics()}") from None

    def close(self) -> None:
        """Stop whatever is still running (after a failure); the TPM server last."""
        self.qmp.close()
        stop_process(self.proc)
        self.console.close()
        self.tpm.stop()


def qemu_argv(workdir: Path, name: str, ctrl: Path, tpm_model: str, initramfs: Path,
              incoming: str | None = None) -> list[str]:
    vars_copy = workdir / f"{name}-OVMF_VARS.fd"
    if not vars_copy.exists():
        shutil.copyfile(OVMF_VARS, vars_copy)
    argv = [QEMU, "-name", f"guest={name}", "-machine", "q35", "-accel", "tcg", "-m", "256", "-smp", "1",
            "-no-user-config", "-nodefaults", "-display", "none",
            "-drive", f"if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-kernel", str(KERNEL_DIR / "vmlinuz"), "-initrd", str(initramfs),
            "-append", "console=ttyS0 quiet loglevel=3 panic=-1",
            "-chardev", f"socket,id=charserial0,path={workdir / f'{name}.serial'},server=on,wait=off",
            "-serial", "chardev:charserial0",
            "-chardev", f"socket,id=charmonitor,path={workdir / f'{name}.qmp'},server=on,wait=off",
            "-mon", "chardev=charmonitor,id=monitor,mode=control",
            "-chardev", f"socket,id=chrtpm,path={ctrl}",
            "-tpmdev", "emulator,id=tpm-tpm0,chardev=chrtpm",
            "-device", f"{tpm_model},tpmdev=tpm-tpm0,id=tpm0"]
    if incoming is not None:
        argv += ["-incoming", incoming]
    return argv


def start_qemu(kind: str, workdir: Path, name: str, tpm_model: str, *, incoming: str | None = None) -> Qemu:
    """Start a TPM server of ``kind`` and a QEMU using it; returns once QMP and the console are connected."""
    require_guest_files()
    longest = workdir / f"{name}-tpm.ctrl"
    if len(os.fsencode(longest)) > UNIX_PATH_MAX:
        raise GuestError(f"{longest} is longer than a Unix socket path may be ({UNIX_PATH_MAX} bytes): "
                         "use a shorter work directory (pytest --basetemp)")
    initramfs = build_initramfs()
    tpm = start_tpm_server(kind, workdir, f"{name}-tpm")
    stderr_path = workdir / f"{name}.qemu.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(qemu_argv(workdir, name, tpm.ctrl, tpm_model, initramfs, incoming),
                                stdin=subprocess.DEVNULL, stdout=stderr, stderr=subprocess.STDOUT)
    qmp = console = None
    try:
        for path in (workdir / f"{name}.qmp", workdir / f"{name}.serial"):
            deadline = time.monotonic() + SERVER_TIMEOUT
            while not path.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise GuestError(f"QEMU {name} exited ({proc.returncode}) or made no {path.name}:\n"
                                     f"{stderr_path.read_text(errors='replace')}\n{tpm.log_text()}")
                time.sleep(0.02)
        console = SerialConsole(workdir / f"{name}.serial", workdir / f"{name}.console.log")
        qmp = Qmp(workdir / f"{name}.qmp")
    except BaseException:
        if console is not None:
            console.close()
        stop_process(proc)
        tpm.stop()
        raise
    return Qemu(name, proc, tpm, qmp, console, stderr_path)


@contextlib.contextmanager
def running_guest(kind: str, workdir: Path, name: str, tpm_model: str,
                  *, incoming: str | None = None) -> Iterator[Qemu]:
    """``start_qemu`` as a context manager: whatever still runs at the end is stopped."""
    guest = start_qemu(kind, workdir, name, tpm_model, incoming=incoming)
    try:
        yield guest
    finally:
        guest.close()


def migrate(source: Qemu, destination: Qemu, uri: str, timeout: float = BOOT_TIMEOUT) -> None:
    """Live-migrate ``source`` into ``destination`` (started with ``-incoming defer``) over ``uri``."""
    destination.qmp.execute("migrate-incoming", uri=uri)
    source.qmp.execute("migrate", uri=uri)
    deadline = time.monotonic() + timeout
    while True:
        info = source.qmp.execute("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            break
        if status in ("failed", "cancelled") or time.monotonic() > deadline:
            raise GuestError(f"migration {status}: {info}\n{source.diagnostics()}\n{destination.diagnostics()}")
        time.sleep(0.2)
    while destination.status() != "running":
        if time.monotonic() > deadline:
            raise GuestError(f"destination not running after migration: {destination.status()}\n"
                             f"{destination.diagnostics()}")
        time.sleep(0.1)


def tpm_server_kinds() -> Sequence[str]:
    return ("swtpm", "vtpm", "vtpm-host")
