"""What the examples share: where they work ($VMCRYPT_HOME or a fresh temp directory), the VM they start
from (encrypted, disks included, with a vTPM), and where its vTPM is served (``--port``, ``--data-unix``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vmcrypt import Management, UserSession, VmSpec
from vtpm import TpmClient, free_port_pair


def workdir(what: str) -> Path:
    """``$VMCRYPT_HOME`` when set (the examples' management home and datastores go there), else a new temp dir."""
    chosen = os.environ.get("VMCRYPT_HOME")
    path = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix=f"vmcrypt-{what}-"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def add_vtpm_options(parser: argparse.ArgumentParser) -> None:
    """``--port`` and ``--data-unix``: where the example's vTPM is served (default: a free TCP port pair)."""
    parser.add_argument("--port", type=int, metavar="PORT",
                        help="the vTPM's TCP data port, control on PORT+1 (default: a free pair)")
    parser.add_argument("--data-unix", type=Path, metavar="PATH",
                        help="also serve the vTPM on this Unix socket, and talk to it there")


def encrypted_vm_with_vtpm(base: Path, name: str, disk_bytes: int) -> tuple[Management, UserSession]:
    """A new management home under ``base`` with one datastore and VM ``name``: encrypted with its disk,
    with a vTPM. Returns the home (close it when done) and the administrator's session."""
    m = Management(base / "home")
    password = secrets.token_urlsafe(16)
    m.bootstrap("admin", password)
    admin = m.login("admin", password)
    admin.add_datastore("ds1", base / "datastore")
    admin.create_vm("ds1", name, VmSpec(name, disk_bytes=disk_bytes))
    admin.encrypt(name, include_disks=True)
    admin.add_vtpm(name)
    return m, admin


@contextlib.contextmanager
def powered_on(session: UserSession, name: str, args: argparse.Namespace) -> Iterator[tuple[TpmClient, int]]:
    """Power ``name`` on with the endpoints of ``args``; a client of its vTPM (on the Unix socket when one
    was asked for) and the TCP port it is on. Powered off again on leaving."""
    port = args.port if args.port is not None else free_port_pair()
    data_unix = None if args.data_unix is None else args.data_unix.absolute()
    session.power_on(name, port=port, data_unix=data_unix)
    try:
        client = TpmClient.swtpm_unix(str(data_unix)) if data_unix else TpmClient.swtpm_tcp(port)
        with client:
            yield client, port
    finally:
        session.power_off(name)
