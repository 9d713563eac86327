"""`vtpm`: serve and inspect virtual TPMs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="vtpm", description="Serve and inspect virtual TPM 2.0 devices.")


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("error: vtpm: no TPM engine is built into this version yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
