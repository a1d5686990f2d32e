"""Perplexity of a text under a model: sliding windows over the tokens, each token's negative log-likelihood, and
the standard error of their mean (as llama.cpp's perplexity tool reports it).

    from mole.perplexity import perplexity
    r = perplexity(model, text, n_ctx=512)
    print(f"ppl {r.ppl:.3f} ± {r.ppl_se:.3f}  bits/byte {r.bits_per_byte:.4f} ± {r.bits_per_byte_se:.4f}")

Windows of n_ctx tokens advance by n_ctx/2; every token after the first is scored exactly once, in the window that
gives it the most context (so at least n_ctx/2 tokens of it, except in the first window).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Perplexity:
    """nll: the tokens' mean negative log-likelihood in nats; nll_se: the standard error of that mean, std/sqrt(n)
    over the scored tokens. Tokens of one text are not independent, so the error is a lower bound on the spread
    another text of the same kind would show; it says how many digits of a result are worth reading."""
    n_tokens: int
    n_bytes: int
    nll: float
    nll_se: float

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @property
    def ppl_se(self) -> float:
        """The error of exp(mean nll), to first order: ppl * nll_se."""
        return self.ppl * self.nll_se

    @property
    def bits_per_byte(self) -> float:
        return self.nll * self.n_tokens / (math.log(2) * self.n_bytes)

    @property
    def bits_per_byte_se(self) -> float:
        return self.nll_se * self.n_tokens / (math.log(2) * self.n_bytes)


def token_nll(model, ids, n_ctx: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """ids [n] -> float64 [n - 1]: -log p(ids[i] | the tokens before it in its window), for i = 1 .. n-1.
    n_ctx defaults to the model's context; progress(scored, total) is called after each window."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    n_ctx = min(n_ctx or model.n_ctx, model.n_ctx)
    if n_ctx < 2:
        raise ValueError(f"perplexity needs a window of at least 2 tokens, got {n_ctx}")
    stride = max(1, n_ctx // 2)
    out = np.empty(ids.size - 1, dtype=np.float64)
    begin, scored_to = 0, 1          # targets ids[1:scored_to] are scored
    while scored_to < ids.size:
        end = min(begin + n_ctx, ids.size)
        logits = model.logits(ids[begin:end]).astype(np.float64)          # [end - begin, V]
        tgt = np.arange(scored_to, end)                                   # each target once, with the most context
        rows = logits[tgt - 1 - begin]                                    # [len(tgt), V]
        top = rows.max(axis=1)
        logz = top + np.log(np.exp(rows - top[:, None]).sum(axis=1))
        out[tgt - 1] = logz - rows[np.arange(tgt.size), ids[tgt]]
        scored_to = end
        begin += stride
        if progress is not None:
            progress(scored_to - 1, ids.size - 1)
    return out


def perplexity(model, text: str, n_ctx: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> Perplexity:
    """The text's perplexity, nats/token and bits/byte (over its UTF-8 bytes), each with its standard error."""
    nll = token_nll(model, model.tokenize(text), n_ctx, progress)
    se = float(nll.std(ddof=1) / math.sqrt(nll.size)) if nll.size > 1 else float("nan")
    return Perplexity(n_tokens=int(nll.size), n_bytes=len(text.encode("utf-8")), nll=float(nll.mean()), nll_se=se)
