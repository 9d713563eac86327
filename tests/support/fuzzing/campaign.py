"""What the fuzzing campaigns (in-process TPM, TCP, files) share: a deck to draw targets from and a
stopwatch that keeps a report's times and shows it to a progress callback."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Deck(Generic[T]):
    """Every item once per round, each round freshly shuffled: all targets are drawn about equally often."""

    def __init__(self, rng: random.Random, items: Iterable[T]) -> None:
        self.rng, self.items, self.cards = rng, list(items), []  # type: list[T]

    def __len__(self) -> int:
        return len(self.cards)

    def refill(self) -> None:
        """Start a new round when this one is used up."""
        if not self.cards:
            self.cards = list(self.items)
            self.rng.shuffle(self.cards)

    def draw(self) -> T:
        """The next item (a new round begins when the last one ended)."""
        self.refill()
        return self.cards.pop()


class Stopwatch:
    """Times a campaign into its report (``prepare_seconds``, ``elapsed``) and hands the report to
    ``progress`` on each ``tick``; leaving the ``with`` block records the final ``elapsed``."""

    def __init__(self, report: Any, progress: Callable[[Any], None] | None = None) -> None:
        self.report, self.progress = report, progress
        self.start = time.perf_counter()

    def __enter__(self) -> Stopwatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.report.elapsed = time.perf_counter() - self.start

    def prepared(self) -> None:
        """The set-up is done: its time is the report's ``prepare_seconds``."""
        self.report.prepare_seconds = time.perf_counter() - self.start

    def tick(self) -> None:
        """Bring ``elapsed`` up to date and show the report to ``progress`` (if any)."""
        if self.progress:
            self.report.elapsed = time.perf_counter() - self.start
            self.progress(self.report)
