"""Progress for long work: one overall bar on a terminal, silent in pipes and scripts."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from tqdm import tqdm

from vmcrypt.vm import VmFile


def _usable_terminal(stream: TextIO) -> bool:
    """A terminal with room for a bar (a 0-column pty would only get empty bars)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        return False


class FileProgress:
    """One byte-count bar over every file of an operation (bytes, rate, ETA); usable as a ProgressFn.

    ``plan`` announces the files and their sizes before the first one starts, so the bar's total
    and ETA cover the whole operation; without it the total grows as files start.
    """

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = _usable_terminal(self.stream) if enabled is None else enabled
        self._bar: tqdm | None = None
        self._sizes: dict[object, int] = {}
        self._done: dict[object, int] = {}

    def plan(self, sizes: dict[VmFile, int]) -> None:
        """Announce the files and their sizes, so the bar's total and ETA cover the whole operation."""
        for vm_file, size in sizes.items():
            self._sizes[vm_file.path] = size

    def _open(self) -> tqdm:
        if self._bar is None:
            self._bar = tqdm(
                total=sum(self._sizes.values()), desc="vmcrypt", unit="B", unit_scale=True, unit_divisor=1024,
                file=self.stream, leave=True, dynamic_ncols=True,
            )
        return self._bar

    def __call__(self, vm_file: VmFile, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._sizes.get(vm_file.path) != total:
            self._sizes[vm_file.path] = total
            bar = self._open()
            bar.total = sum(self._sizes.values())
            bar.refresh()
        bar = self._open()
        step = done - self._done.get(vm_file.path, 0)
        self._done[vm_file.path] = done
        if step > 0:
            bar.set_postfix_str(vm_file.path.name, refresh=False)
            bar.update(step)

    def close(self) -> None:
        """Close the bar (if one is shown); calling it again does nothing."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
