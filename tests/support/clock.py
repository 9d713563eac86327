"""A millisecond clock the test moves by hand, for the engine's injected ``clock_ms``."""

from __future__ import annotations


class FakeClock:
    """Starts at 1,000,000 ms; set ``ms`` to move time (dictionary-attack healing, policy timeouts)."""

    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms
