"""Retry policy for transient failures: exponential back-off with jitter."""

from __future__ import annotations

import random


def backoff_seconds(
    attempts: int, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Delay before attempt `attempts + 1`; half fixed, half random so retries spread out."""
    rng = rng or random
    ceiling = min(cap, base * 2 ** max(attempts - 1, 0))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)
