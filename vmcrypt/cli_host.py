"""`vmcrypt host run NAME`: an ESXi-like host as a running process (see ``vmcrypt.trust.host_daemon``).

The process boots the host with measured boot into its TPM under ``HOME/hosts/NAME``, prints one
ready line on stdout (``host NAME: booted VERSION, serving on SOCKET (pid PID)``) and answers on
``HOME/hosts/NAME/run/host.sock`` until SIGTERM or SIGINT, then shuts its TPM down and exits 0.
A second ``host run`` of the same host exits 1 saying the host is already running.
``vmcrypt host describe NAME`` asks a running host what it booted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmcrypt.cli_common import emit
from vmcrypt.errors import VmcryptError
from vmcrypt.home import resolve_home

DEFAULT_VERSION = "8.0.2"
# images.Tamper's values
TAMPERS = ("modified-vib", "unsigned-vib", "secure-boot-off", "old-version", "foreign-db-key")


def _spec(args: argparse.Namespace) -> Any:
    from vmcrypt.trust.host_daemon import BootSpec
    from vmcrypt.trust.images import ImageManifest, Tamper, image_from_manifest, make_image
    if args.image:
        try:
            text = Path(args.image).read_bytes()
        except OSError as exc:
            raise VmcryptError(f"cannot read the image manifest {args.image}: {exc.strerror}") from None
        image = image_from_manifest(ImageManifest.from_json(text))
    else:
        image = make_image(args.version)
    return BootSpec(image, Tamper(args.tamper) if args.tamper else None, secure_boot=not args.no_secure_boot)


def cmd_host_run(args: argparse.Namespace) -> None:
    """`host run NAME`: boot host NAME (the image of --image or a fresh one of --version, optionally --tamper'ed or
    with Secure Boot off) and serve its endpoint until SIGTERM or SIGINT. Prints one ready line on stdout and
    ``stopped`` on stderr at the end; VmcryptError when the host cannot boot or already runs. No --json."""
    from vmcrypt.trust.host_boot import HostBootError
    from vmcrypt.trust.host_daemon import HostDaemon
    daemon = HostDaemon(resolve_home(args.home), args.name, _spec(args))
    try:
        daemon.start()
    except HostBootError as exc:
        raise VmcryptError(f"host {args.name} cannot boot: {exc}") from None
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: daemon.stop())
        booted = daemon.booted
        assert booted is not None
        print(f"host {args.name}: booted {booted.version}, serving on {daemon.socket_path} (pid "
              f"{os.getpid()})", flush=True)
        daemon.serve()
    finally:
        daemon.close()
    print(f"host {args.name}: stopped", file=sys.stderr, flush=True)


def cmd_host_describe(args: argparse.Namespace) -> None:
    """`host describe NAME`: ask the running host what it booted. Prints its version, boot time, Secure Boot state
    and pid; --json: ``{host, version, booted_at, secure_boot, pid}``. VmcryptError when the host is not running."""
    from vmcrypt.trust.host_attestation import host_directory
    from vmcrypt.trust.host_endpoint import HostNotRunning, RemoteHost
    try:
        data = RemoteHost(host_directory(resolve_home(args.home), args.name)).describe()
    except HostNotRunning:
        raise VmcryptError(f"host {args.name} is not running") from None
    data.pop("ok", None)
    emit(args, data, f"host {data['host']}: version {data['version']}, booted {data['booted_at']}, "
         f"Secure Boot {'on' if data['secure_boot'] else 'off'}, pid {data['pid']}")


def register(commands: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """``vmcrypt host run|describe`` (local: ``--home``)."""
    host = commands.add_parser("host", help="run an ESXi-like host (measured boot, its TPM, its endpoint)",
                               description="Hosts as running processes: boot one and keep its TPM.")
    sub = host.add_subparsers(dest="host_command", metavar="COMMAND", required=True)
    run = command(sub, "run", cmd_host_run, "boot host NAME (HOME/hosts/NAME) and serve its endpoint until SIGTERM",
                  json_out=False)
    run.add_argument("name", help="the host's name (its directory under HOME/hosts/)")
    run.add_argument("--image", metavar="MANIFEST", help="boot the image this manifest (JSON) describes "
                     "(default: a fresh image of --version)")
    run.add_argument("--version", default=DEFAULT_VERSION, help=f"version of the default image ({DEFAULT_VERSION})")
    run.add_argument("--tamper", choices=TAMPERS, help="boot tampered (for tests and demos)")
    run.add_argument("--no-secure-boot", action="store_true", help="boot with Secure Boot off")
    desc = command(sub, "describe", cmd_host_describe, "ask running host NAME what it booted and when")
    desc.add_argument("name", help="the host's name")
