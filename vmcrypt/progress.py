"""Progress bars for long work: shown on a terminal, silent in pipes and scripts."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from vmcrypt.vm import VmFile


class FileProgress:
    """One byte-count bar per file, created when the file starts; usable as a ProgressFn."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._bars: dict[object, tqdm] = {}

    def __call__(self, vm_file: VmFile, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self._bars.get(vm_file.path)
        if bar is None:
            bar = tqdm(
                total=total, desc=vm_file.path.name, unit="B", unit_scale=True, unit_divisor=1024,
                file=self.stream, leave=True, dynamic_ncols=True,
            )
            self._bars[vm_file.path] = bar
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
