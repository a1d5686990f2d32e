"""A progress bar on stderr (tqdm: count, rate, ETA) or a silent stand-in with the same two calls."""
from __future__ import annotations

import sys


class Progress:
    """update(n) / close(); silent when enabled is False or tqdm is missing."""

    def __init__(self, total: float, desc: str, unit: str = "rows", enabled: bool = True):
        self._bar = None
        self._total, self._done = total, 0.0
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
                                 dynamic_ncols=True, smoothing=0.1, mininterval=0.5)

    def update(self, n: float) -> None:
        """Advance by n; fractional steps summing past total (float rounding) are clamped."""
        n = min(n, self._total - self._done)
        self._done += n
        if self._bar is not None and n > 0:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
