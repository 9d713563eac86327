"""How the `vtpm` and `vmcrypt` command lines end: one ``error:`` line, JSON anywhere, quiet closed pipes.

Both commands share these so that a script sees the same behaviour from
either: ``--json`` before or after the subcommand, usage errors exit 2,
failures print exactly one ``error: ...`` line on stderr (never a traceback or a
library's multi-line message), and ``... | head`` ends without a word.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from importlib import metadata

#: exit status of a process whose output pipe closed (128 + SIGPIPE), as a shell reports it
BROKEN_PIPE_STATUS = 141


def package_version(distribution: str = "vmcrypt") -> str:
    """The installed distribution's version (one number for both commands)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def add_json_option(parser: argparse.ArgumentParser, after_command: bool = False) -> None:
    """``--json`` on the main parser (default off) and on each printing subcommand.

    The subcommand's copy defaults to SUPPRESS, so it sets ``json`` only when
    given and never undoes a ``--json`` that came before the subcommand.
    """
    if after_command:
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="print the result as JSON (also accepted before the command)")
    else:
        parser.add_argument("--json", action="store_true", default=False,
                            help="print the result as JSON (also accepted after the command)")


def one_line(text: str) -> str:
    """A message on one line: libraries (tarfile, sqlite) put newlines into theirs."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or "failed"


def print_error(message: str) -> None:
    """Print ``message`` as the one ``error:`` line on stderr."""
    print(f"error: {one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """End quietly with 141 when the reader of stdout went away (``| head``).

    Python's documented recipe: point stdout at /dev/null so the flush at exit
    cannot raise again, and print nothing.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(BROKEN_PIPE_STATUS) from None
