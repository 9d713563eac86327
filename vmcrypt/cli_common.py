"""What both halves of the `vmcrypt` command line (cli and cli_inventory) use.

Printing a command's result (``--json`` or text); the key manager of the
management home that ``--home``/``--master-passphrase-file`` name (the local
administrator, acting on files); and, with ``--user``, the logged-in client of
the management service (``--server``, ``$VMCRYPT_SERVER``, or the socket of
``--home``), through which every command then acts instead.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

from vmcrypt.errors import VmcryptError
from vmcrypt.home import home_path, resolve_home
from vmcrypt.inventory_db import configured
from vmcrypt.keys import KeyManager
from vmcrypt.passphrase import obtain_passphrase
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.service import default_socket, service_ca_path
from vmcrypt.service_client import ServiceClient
from vmcrypt.vm import parse_size
from vtpm.cli_output import add_json_option, one_line, package_version, print_error, quiet_broken_pipe

__all__ = ["add_json_option", "one_line", "print_error", "quiet_broken_pipe", "size_argument"]
__version__ = package_version()

MASTER_PASSPHRASE_ENV = "VMCRYPT_MASTER_PASSPHRASE"
PASSWORD_ENV = "VMCRYPT_PASSWORD"
SERVER_ENV = "VMCRYPT_SERVER"


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """A command's result on stdout: ``data`` as JSON with --json, else ``text``."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


def size_argument(text: str) -> int:
    """An argparse ``type``: a bad size is a usage error (exit 2), not a failure."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def key_manager(args: argparse.Namespace) -> KeyManager:
    """The key providers of the management home, the native store unlocked by the master passphrase if given."""
    home = resolve_home(args.home)
    passphrase_file = args.master_passphrase_file
    source: Callable[[], bytes] | None = None
    if passphrase_file or os.environ.get(MASTER_PASSPHRASE_ENV):
        source = lambda: obtain_passphrase(passphrase_file, MASTER_PASSPHRASE_ENV, "Master passphrase: ")  # noqa: E731
    return KeyManager(ProviderRegistry(home, source))


def password(env: str, prompt: str) -> str:
    """A password from ``$env``, else asked on the terminal with ``prompt`` (not echoed); VmcryptError when the
    variable is unset and stdin is not a terminal, rather than waiting for input that never comes."""
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise VmcryptError(f"no password: set ${env} or run on a terminal")
    return getpass.getpass(prompt)


def server_url(args: argparse.Namespace) -> str:
    """The management service to talk to: --server, else ``$VMCRYPT_SERVER``, else the Unix socket of --home."""
    return args.service_url or os.environ.get(SERVER_ENV) or f"unix:{default_socket(home_path(args.home))}"


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[None]:
    """With --user, a command that the management plane serves runs through the service: connect (a clear
    error when nothing answers), log in, and log out afterwards. Without --user, nothing to do."""
    args.client = None
    if not args.user or getattr(args, "operation", None) is None:
        yield
        return
    url = server_url(args)
    home = home_path(args.home)
    if url == f"unix:{default_socket(home)}" and not configured(home):
        # the local service of a home without an inventory: say so rather than "not reachable" or "login failed"
        raise VmcryptError(f"there is no inventory in {home}: create it with `vmcrypt inventory init --admin NAME`")
    ca = args.service_ca or (service_ca_path(home_path(args.home)) if url.startswith("https://") else None)
    with ServiceClient(url, ca) as client:
        client.request("GET", "/health")  # before asking for a password
        client.login(args.user, password(PASSWORD_ENV, f"Password for {args.user}: "))
        args.client = client
        yield


def remote(args: argparse.Namespace) -> ServiceClient | None:
    """The logged-in service client (--user), or None: the local administrator acts on the files."""
    return getattr(args, "client", None)


def remote_vm(client: ServiceClient, path: str) -> str:
    """The inventory name (quoted for a URL) of the VM whose .vmx or directory is ``path``."""
    absolute = os.path.abspath(path)
    rows = client.request("GET", "/vms", params={"path": absolute})
    if not rows:
        raise VmcryptError(f"no VM at {absolute} in the inventory (register it first)")
    return quote(rows[0]["name"], safe="")
