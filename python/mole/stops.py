"""Stop strings over streamed text: pieces are released only once they cannot be the start of a stop."""
from __future__ import annotations

from . import errors


class StopMatcher:
    """feed(piece) -> (text safe to emit, whether a stop string was hit); flush() -> held-back text."""

    def __init__(self, stop):
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        stop = list(stop)
        for s in stop:
            if not isinstance(s, str) or not s:
                raise errors.InvalidArgumentError(f"stop strings must be non-empty str, got {s!r}")
        self.stops = stop
        self.pending = ""
        self.matched = False

    def feed(self, piece: str) -> tuple[str, bool]:
        if self.matched:
            return "", True
        text = self.pending + piece
        hits = [(text.find(s), s) for s in self.stops if s in text]
        if hits:
            cut = min(h[0] for h in hits)
            self.pending = ""
            self.matched = True
            return text[:cut], True
        # Hold back the longest suffix that is a proper prefix of some stop string.
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        self.pending = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
