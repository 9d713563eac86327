"""What both halves of the `vmcrypt` command line (cli and cli_inventory) use.

Printing a command's result (``--json`` or text) and the key manager of the
management home that ``--home``/``--master-passphrase-file`` name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from vmcrypt.home import resolve_home
from vmcrypt.keys import KeyManager
from vmcrypt.passphrase import obtain_passphrase
from vmcrypt.providers.registry import ProviderRegistry

MASTER_PASSPHRASE_ENV = "VMCRYPT_MASTER_PASSPHRASE"


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """A command's result on stdout: ``data`` as JSON with --json, else ``text``."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


def key_manager(args: argparse.Namespace) -> KeyManager:
    """The key providers of the management home, the native store unlocked by the master passphrase if given."""
    home = resolve_home(args.home)
    passphrase_file = args.master_passphrase_file
    source: Callable[[], bytes] | None = None
    if passphrase_file or os.environ.get(MASTER_PASSPHRASE_ENV):
        source = lambda: obtain_passphrase(passphrase_file, MASTER_PASSPHRASE_ENV, "Master passphrase: ")  # noqa: E731
    return KeyManager(ProviderRegistry(home, source))
