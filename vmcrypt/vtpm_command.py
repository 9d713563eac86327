"""The `vtpm` command: vtpm's server and inspector with vmcrypt's encrypted state stores.

``python -m vtpm`` serves plain state directories only. This adds
``--key-file`` (the state directory's file encrypted under a 32-byte key),
``--vm`` (the vTPM section of a VM's encrypted ``.nvram``) and ``--home`` (the
management home whose key providers unlock the VM). The `vtpm` console script
runs it; so does ``python -m vmcrypt.vtpm_command``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from vmcrypt.errors import VmcryptError
from vmcrypt.vm_vtpm import VmNvramStore
from vmcrypt.vtpm_key_file import EncryptedStateStore, read_key_file
from vtpm import cli
from vtpm.storage import PlainStateStore, StateStore, StateStoreError

MODULE = "vmcrypt.vtpm_command"


class EngineStoreOptions:
    """``--state DIR`` [``--key-file F``] or ``--vm VMX``: a vtpm.cli.StoreOptions."""

    failures: tuple[type[Exception], ...] = (VmcryptError,)

    def add_global_options(self, parser: argparse.ArgumentParser) -> None:
        """``--home``: the management home whose key providers open ``--vm`` stores."""
        parser.add_argument("--home", help="management home (for --vm: key providers)")

    def add_store_options(self, command: argparse.ArgumentParser, where: Any) -> None:
        """``--vm`` (the vTPM in a VM's .nvram) and ``--key-file`` (a state directory encrypted under a 32-byte key)."""
        where.add_argument("--vm", metavar="VMX", help="serve the vTPM stored in this VM's .nvram")
        command.add_argument("--key-file", help="encrypt the state directory's file under this 32-byte key")

    def open(self, args: argparse.Namespace) -> StateStore:
        """The store the options name: a VM's .nvram, an encrypted or a plain state directory; StateStoreError (or a
        key-file error) when none is named or it cannot be opened."""
        if args.vm:
            return VmNvramStore.open(args.vm, home=args.home)
        if not args.state:
            raise StateStoreError("give --state DIR or --vm PATH/NAME.vmx")
        key = read_key_file(args.key_file) if args.key_file else None  # a bad key file is reported first
        cli.refuse_missing_state(args)
        if key is not None:
            return EncryptedStateStore(args.state, key)
        return PlainStateStore(args.state)


def command_line(*args: str) -> list[str]:
    """``vtpm ARGS`` as a child process of this Python (the console script may not be on PATH)."""
    return [sys.executable, "-m", MODULE, *args]


def main(argv: Sequence[str] | None = None) -> int:
    """The `vtpm` console script: ``vtpm.cli`` with the encrypted stores."""
    return cli.main(argv, EngineStoreOptions())


if __name__ == "__main__":
    sys.exit(main())
