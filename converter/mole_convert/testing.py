"""Test helpers shared by every test in tests/: tiny configs, random checkpoints with non-trivial norms,
and a tiny byte-level BPE tokenizer. Everything is deterministic for a given seed; nothing is downloaded."""
from __future__ import annotations

import functools
import math
import os
import pathlib

import torch

from . import checkpoint_names as C
from .checkpoint import save_checkpoint
from .config import MoleConfig
from .model import MoleForCausalLM, reparameterize
from .tokenizer_train import train_bpe_tokenizer

NEOX_TOKENIZER_NAME = "tokenizers/gpt-neox-20b-tokenizer.json"
NEOX_VOCAB = 50277

_TINY_TEXT = """\
The lantern keeper walked along the harbour wall every evening, counting the boats as they came in.
Some nights there were twelve, some nights there were nine, and once, after a storm, only three.
She wrote the numbers in a small green book and never told anyone why she kept it.
When the children asked, she said: "Numbers remember what people forget."
In winter the sea turned the colour of slate, and the gulls sat in long rows on the roofs.
The baker opened at six; the school bell rang at eight; the ferry left at a quarter past nine.
A mixture of lookup experts reads a table instead of computing a network, row by row, token by token.
Tables are large but each step needs only a few rows, so they stay on the disk until they are asked for.
It's 2024, isn't it? Yes -- and the year before was 2023; the one after, 2025.
Quick brown foxes jump over lazy dogs; sphinx of black quartz, judge my vow!
"""


def tiny_config(**overrides) -> MoleConfig:
    """V=512, d=64, L=2, 4 heads / 2 kv heads, D=128, N=4, eps 1e-5, rope_theta 10000; override any field."""
    base = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, num_experts=4, max_position_embeddings=256,
                rms_norm_eps=1e-5, rope_theta=10000.0)
    base.update(overrides)
    return MoleConfig(**base)


@functools.lru_cache(maxsize=8)
def make_tiny_tokenizer_json(vocab_size: int) -> str:
    """tokenizer.json text of a byte-level BPE (<|endoftext|> = 0) with at most vocab_size ids."""
    return train_bpe_tokenizer([_TINY_TEXT] * 4, vocab_size, min_frequency=2).to_str()


def random_state_dict(config: MoleConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Training-form (or dense) float32 weights: matrices N(0, 1/fan_in) so every branch has unit scale and
    logits are spread out (std ~3), norm weights 1 + 0.1*N(0, 1) so norm handling is exercised."""
    gen = torch.Generator().manual_seed(seed)
    model = MoleForCausalLM(config, form="training")
    sd = {}
    for name, p in model.state_dict().items():
        template = C.match(name)[0]
        if p.dim() == 1:
            sd[name] = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
        elif template == C.EMBED:
            sd[name] = torch.randn(p.shape, generator=gen)
        elif template == C.OUTPUT:  # logits std ~3: a clear argmax for greedy-decoding parity tests
            sd[name] = torch.randn(p.shape, generator=gen) * (3.0 / math.sqrt(p.shape[1]))
        elif template == C.ROUTER:
            sd[name] = torch.randn(p.shape, generator=gen) * (2.0 / math.sqrt(p.shape[1]))
        else:
            sd[name] = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1])
    return sd


def random_model(config: MoleConfig, seed: int = 0, form: str = "training", dtype=torch.float32) -> MoleForCausalLM:
    """The model make_random_checkpoint(…, seed, form) writes, in memory (same weights for the same seed)."""
    model = MoleForCausalLM(config, form="training")
    model.load_state_dict(random_state_dict(config, seed), strict=True)
    model = model.to(dtype)
    return reparameterize(model) if form == "reparam" else model


def shared_data_dirs() -> list[pathlib.Path]:
    """Where the project's shared data folder may be: $MOLE_SHARED_DATA, then ../shared/data beside
    the source checkout this module comes from, then beside the current directory (an installed
    package lives in site-packages, far from the checkout)."""
    dirs = [pathlib.Path(os.environ["MOLE_SHARED_DATA"])] if os.environ.get("MOLE_SHARED_DATA") else []
    dirs.append(pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data")
    dirs.append(pathlib.Path.cwd().resolve().parent / "shared" / "data")
    return dirs


def neox_tokenizer_path() -> pathlib.Path | None:
    """The GPT-NeoX-20B tokenizer.json from the shared data folder, or None when it is absent."""
    for d in shared_data_dirs():
        if (d / NEOX_TOKENIZER_NAME).is_file():
            return d / NEOX_TOKENIZER_NAME
    return None


def make_random_checkpoint(directory, config: MoleConfig, seed: int = 0, form: str = "training",
                           dtype=torch.float32, tokenizer: str | None = "tiny",
                           chat_template: str | None = None) -> pathlib.Path:
    """Write a random checkpoint in the authors' HF layout. form: "training", "reparam" (moe_table computed
    from the same training weights, so both forms of one seed give the same logits) or "dense"
    (requires num_experts == 0). dtype: the stored dtype. tokenizer: "tiny", "neox" or None."""
    if form == "dense" and config.num_experts != 0:
        raise ValueError("form 'dense' needs config.num_experts == 0")
    if form in ("training", "reparam") and config.num_experts == 0:
        raise ValueError(f"form {form!r} needs config.num_experts > 0 (use form 'dense')")
    if form not in ("training", "reparam", "dense"):
        raise ValueError(f"form must be training, reparam or dense, got {form!r}")
    model = random_model(config, seed, "reparam" if form == "reparam" else "training", torch.float32)
    tok = None
    if tokenizer == "tiny":
        tok = make_tiny_tokenizer_json(min(config.vocab_size, 384))
    elif tokenizer == "neox":
        path = neox_tokenizer_path()
        if path is None:
            raise FileNotFoundError(f"GPT-NeoX tokenizer ({NEOX_TOKENIZER_NAME}) not found under "
                                        f"{', '.join(map(str, shared_data_dirs()))}")
        if config.vocab_size < NEOX_VOCAB:
            raise ValueError(f"the neox tokenizer needs vocab_size >= {NEOX_VOCAB}, got {config.vocab_size}")
        tok = path.read_text()
    elif tokenizer is not None:
        raise ValueError(f"tokenizer must be 'tiny', 'neox' or None, got {tokenizer!r}")
    return save_checkpoint(model, config, directory, tokenizer_json=tok, chat_template=chat_template, dtype=dtype)

