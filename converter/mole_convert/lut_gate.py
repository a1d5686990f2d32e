"""The quality gate of LUT types below 8 bits: how far the low-bit LUT moves the next-token distributions from
the Q8_0 LUT's, measured in PyTorch with the same (f32) dense weights on calibration tokens, before the file is
written. The figure (mean KL divergence, nats per token) goes into the file's metadata; past the limit the
conversion stops unless forced.

Calibration tokens: a text file (--calibration FILE), tokenized with the model's tokenizer, in windows of up to
256 tokens; its perplexity ratio (low-bit / q8_0) is reported too. Without one: windows of 64 token ids drawn
as a seeded permutation of the vocabulary, so that every LUT row (up to the token budget) is used once; those
contexts are not text, so the KL then says how far the rows' error moves the model's predictions over the
whole vocabulary, not how a perplexity on real text changes.
"""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass

import numpy as np
import torch

from . import checkpoint_names as C
from .args import DEFAULT_CALIBRATION_TOKENS as DEFAULT_TOKENS
from .args import DEFAULT_MAX_KL, GATED_LUT_TYPES
from .checkpoint import Checkpoint
from .errors import ConvertError
from .model import MoleForCausalLM, compute_lut_rows
from .quantize import block_size, dequantize, quantize, row_bytes
from .reparam import _Experts

__all__ = ["DEFAULT_MAX_KL", "DEFAULT_TOKENS", "GATED_LUT_TYPES", "GateResult", "calibration_windows", "measure"]
REFERENCE_TYPE = "q8_0"
VOCAB_WINDOW = 64           # window length of the vocabulary permutation
TEXT_WINDOW = 256           # window length (at most) of a calibration text
_WINDOW_BYTES = 256 << 20   # one window's dequantized LUT rows, two copies (q8_0, low-bit): windows shrink to fit
_MIN_TOKENS = 16


@dataclass
class GateResult:
    lut_type: str
    kl: float                  # mean over positions of KL(p_q8_0 || p_lut_type), nats
    ppl_ratio: float | None    # exp(mean CE_lut_type - mean CE_q8_0) on the text's next tokens; None without a text
    tokens: int                # positions measured
    source: str                # what the tokens were ("text FILE" / "vocabulary permutation, seed 0")

    def describe(self) -> str:
        ppl = "" if self.ppl_ratio is None else f", perplexity x{self.ppl_ratio:.4f}"
        return (f"LUT {self.lut_type} vs {REFERENCE_TYPE}: KL {self.kl:.5f} nats/token{ppl} over {self.tokens} "
                f"tokens of {self.source}")


def calibration_windows(ckpt: Checkpoint, calibration, max_tokens: int = DEFAULT_TOKENS):
    """(windows: list of int64 arrays of token ids, is_text, source description)."""
    c = ckpt.config
    row_len = c.num_hidden_layers * c.num_experts * c.hidden_size
    fit = max(2, _WINDOW_BYTES // (2 * 4 * max(1, row_len)))
    if max_tokens < _MIN_TOKENS:
        raise ValueError(f"calibration tokens must be at least {_MIN_TOKENS}, got {max_tokens}")
    if calibration is None:
        ids = np.random.default_rng(0).permutation(c.vocab_size)[:max_tokens].astype(np.int64)
        w = min(VOCAB_WINDOW, c.max_position_embeddings, fit)
        return [ids[i:i + w] for i in range(0, len(ids), w) if len(ids[i:i + w]) >= 2], False, \
            f"a vocabulary permutation (seed 0, windows of {w})"
    path = pathlib.Path(calibration)
    if not path.is_file():
        raise FileNotFoundError(f"calibration text {path} does not exist")
    if ckpt.tokenizer_path is None:
        raise ConvertError("a calibration text needs the checkpoint's tokenizer.json")
    from tokenizers import Tokenizer

    text = path.read_text(encoding="utf-8", errors="replace")
    ids = np.array(Tokenizer.from_file(str(ckpt.tokenizer_path)).encode(text, add_special_tokens=False).ids,
                   dtype=np.int64)
    ids = ids[ids < c.vocab_size][:max_tokens]
    if len(ids) < _MIN_TOKENS:
        raise ConvertError(f"calibration text {path} holds {len(ids)} tokens; at least {_MIN_TOKENS} are needed")
    w = min(TEXT_WINDOW, c.max_position_embeddings, fit)
    return [ids[i:i + w] for i in range(0, len(ids), w) if len(ids[i:i + w]) >= 2], True, f"text {path.name}"


def _quantized_rows(ckpt: Checkpoint, ids: np.ndarray, types) -> dict[str, np.ndarray]:
    """The LUT rows of token ids (sorted, distinct) quantized to each type: {type: uint8 [U, row_bytes]}.
    Training form: each layer's experts are read once, a group of layers at a time whose width is whole blocks
    of every type (as reparam.LutStream); reparam form: the moe_table rows. Only the quantized bytes are kept."""
    c = ckpt.config
    L, N, d = c.num_hidden_layers, c.num_experts, c.hidden_size
    out = {t: np.empty((len(ids), row_bytes(t, L * N * d)), dtype=np.uint8) for t in types}
    with torch.no_grad():
        if ckpt.form == "training":
            bs = math.lcm(*(block_size(t) for t in types))
            g = min(L, bs // math.gcd(N * d, bs))
            e = ckpt.get(C.EMBED)[torch.from_numpy(ids)]                                 # [U, d]
            experts = _Experts(ckpt, keep=False, device=torch.device("cpu"))
            for l0 in range(0, L, g):
                l1 = min(l0 + g, L)
                rows = compute_lut_rows(e, [experts.layer(i) for i in range(l0, l1)]).numpy()   # [U, (l1-l0)*N*d]
                for t in types:
                    quantize(rows, t, out=out[t][:, row_bytes(t, l0 * N * d):row_bytes(t, l1 * N * d)])
                del rows
        else:
            for k, i in enumerate(ids):
                row = ckpt.get_rows(C.MOE_TABLE, int(i), int(i) + 1).numpy()              # [1, L*N*d]
                for t in types:
                    quantize(row, t, out=out[t][k:k + 1])
    return out


def _rows_model(ckpt: Checkpoint) -> MoleForCausalLM:
    """The dense weights in f32, the LUT rows given per call (the runtime's split)."""
    m = MoleForCausalLM(ckpt.config, form="rows")
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(ckpt.get(name))
    return m.eval()


def measure(ckpt: Checkpoint, lut_type: str, calibration=None, max_tokens: int = DEFAULT_TOKENS) -> GateResult:
    """KL of the next-token distributions with the LUT in lut_type against the LUT in q8_0 (same dense weights)."""
    if ckpt.form == "dense":
        raise ConvertError("a dense checkpoint has no LUT to measure")
    windows, is_text, source = calibration_windows(ckpt, calibration, max_tokens)
    ids = np.unique(np.concatenate(windows))                                      # [U] distinct calibration ids
    rows = _quantized_rows(ckpt, ids, (REFERENCE_TYPE, lut_type))
    model = _rows_model(ckpt)
    row_len = ckpt.config.num_hidden_layers * ckpt.config.num_experts * ckpt.config.hidden_size
    kl_sum = ce_ref = ce_low = 0.0
    n_kl = n_ce = 0
    with torch.no_grad():
        for win in windows:
            at = np.searchsorted(ids, win)
            logp = {}
            for t in (REFERENCE_TYPE, lut_type):
                r = torch.from_numpy(dequantize(rows[t][at], t, row_len))                          # [S, L*N*d]
                logits = model(torch.from_numpy(win)[None], lut_rows=r[None])[0]                        # [S, V]
                logp[t] = torch.log_softmax(logits.double(), dim=-1)
            ref, low = logp[REFERENCE_TYPE], logp[lut_type]
            kl_sum += float((ref.exp() * (ref - low)).sum(-1).sum())
            n_kl += len(win)
            if is_text:
                nxt = torch.from_numpy(win[1:])[:, None]
                ce_ref -= float(ref[:-1].gather(1, nxt).sum())
                ce_low -= float(low[:-1].gather(1, nxt).sum())
                n_ce += len(win) - 1
    ppl = math.exp((ce_low - ce_ref) / n_ce) if is_text else None
    return GateResult(lut_type, kl_sum / n_kl, ppl, n_kl, source)
