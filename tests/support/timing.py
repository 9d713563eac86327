"""Small timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(action: Callable[[], object], number: int) -> float:
    """The median wall time of ``number`` calls of ``action``, in milliseconds."""
    times = []
    for _ in range(number):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000
