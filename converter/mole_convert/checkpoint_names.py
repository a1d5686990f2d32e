"""The authors' HF checkpoint tensor names, their shapes, the forms that hold them, and the GGUF name each becomes:
the one table every module that spells a checkpoint name reads. {i} is the layer, {j} the expert."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from mole import gguf_names as G

FORMS = ("training", "reparam", "dense")
_ALL, _MOLE, _TRAINING, _REPARAM = FORMS, ("training", "reparam"), ("training",), ("reparam",)

EMBED = "model.embed_tokens.weight"
ATTN_NORM = "model.layers.{i}.input_layernorm.weight"
ATTN_Q = "model.layers.{i}.self_attn.q_proj.weight"
ATTN_K = "model.layers.{i}.self_attn.k_proj.weight"
ATTN_V = "model.layers.{i}.self_attn.v_proj.weight"
ATTN_OUT = "model.layers.{i}.self_attn.o_proj.weight"
FFN_NORM = "model.layers.{i}.post_attention_layernorm.weight"
ROUTER = "model.layers.{i}.router.weight"
FFN_UP = "model.layers.{i}.mlp.up_proj.weight"
FFN_DOWN = "model.layers.{i}.mlp.down_proj.weight"
EXPERT_NORM = "model.layers.{i}.expert_layernorm.weight"
EXPERT_UP = "model.layers.{i}.experts.{j}.up_proj.weight"
EXPERT_DOWN = "model.layers.{i}.experts.{j}.down_proj.weight"
OUTPUT_NORM = "model.norm.weight"
OUTPUT = "lm_head.weight"
MOE_TABLE = "model.moe_table.weight"


@dataclass(frozen=True)
class Tensor:
    """One checkpoint tensor: its name template, the GGUF tensor it becomes (None: consumed by the
    re-parameterization, never written), its shape in dimension names ([out, in] for matrices), and the
    checkpoint forms that hold it."""
    name: str
    gguf: str | None
    shape: tuple[str, ...]
    forms: tuple[str, ...]


# In GGUF file order: the tensors before the layers, one layer's, the tensors after the layers. Dimensions:
# V vocab, d hidden, D shared FFN, q = heads * head_dim, kv = kv_heads * head_dim, N experts, De expert FFN,
# LNd = L * N * d (one token's LUT row). moe_table becomes the LUT, which the converter streams last.
BEFORE_LAYERS = (
    Tensor(EMBED, G.TENSOR_TOKEN_EMBD, ("V", "d"), _ALL),
)
LAYER = (
    Tensor(ATTN_NORM, G.TENSOR_ATTN_NORM, ("d",), _ALL),
    Tensor(ATTN_Q, G.TENSOR_ATTN_Q, ("q", "d"), _ALL),
    Tensor(ATTN_K, G.TENSOR_ATTN_K, ("kv", "d"), _ALL),
    Tensor(ATTN_V, G.TENSOR_ATTN_V, ("kv", "d"), _ALL),
    Tensor(ATTN_OUT, G.TENSOR_ATTN_OUT, ("d", "q"), _ALL),
    Tensor(FFN_NORM, G.TENSOR_FFN_NORM, ("d",), _ALL),
    Tensor(ROUTER, G.TENSOR_ROUTER, ("N", "d"), _MOLE),
    Tensor(FFN_UP, G.TENSOR_FFN_UP, ("D", "d"), _ALL),
    Tensor(FFN_DOWN, G.TENSOR_FFN_DOWN, ("d", "D"), _ALL),
    Tensor(EXPERT_NORM, None, ("d",), _TRAINING),
    Tensor(EXPERT_UP, None, ("De", "d"), _TRAINING),       # one per expert j
    Tensor(EXPERT_DOWN, None, ("d", "De"), _TRAINING),
)
AFTER_LAYERS = (
    Tensor(OUTPUT_NORM, G.TENSOR_OUTPUT_NORM, ("d",), _ALL),
    Tensor(OUTPUT, G.TENSOR_OUTPUT, ("V", "d"), _ALL),
    Tensor(MOE_TABLE, G.TENSOR_LUT, ("V", "LNd"), _REPARAM),
)
TABLE = BEFORE_LAYERS + LAYER + AFTER_LAYERS

TO_GGUF = {t.name: t.gguf for t in TABLE if t.gguf is not None}     # checkpoint template -> GGUF template
FROM_GGUF = {g: c for c, g in TO_GGUF.items()}                      # GGUF template -> checkpoint template
EXPERT_TENSORS = tuple(t.name for t in LAYER if t.gguf is None)     # what the re-parameterization consumes
BY_NAME = {t.name: t for t in TABLE}


def name(template: str, i: int | None = None, j: int | None = None) -> str:
    """Fill a template's {i} (layer) and {j} (expert)."""
    if ("{i}" in template and i is None) or ("{j}" in template and j is None):
        raise ValueError(f"{template!r} needs {'a layer and an expert' if '{j}' in template else 'a layer'}")
    return template.format(i=i, j=j)


def _regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)") + "$")


_PATTERNS = [(t.name, _regex(t.name)) for t in TABLE]


def match(tensor_name: str) -> tuple[str, int | None, int | None] | None:
    """(template, layer, expert) of a concrete checkpoint name, or None if no template fits:
    match("model.layers.3.experts.1.up_proj.weight") == (EXPERT_UP, 3, 1)."""
    for template, rx in _PATTERNS:
        m = rx.match(tensor_name)
        if m:
            g = m.groupdict()
            return template, (int(g["i"]) if g.get("i") else None), (int(g["j"]) if g.get("j") else None)
    return None


_GGUF_PATTERNS = [(g, _regex(g)) for g in FROM_GGUF]


def from_gguf(gguf_name: str) -> str:
    """The checkpoint name of a concrete GGUF tensor name: from_gguf("blk.2.attn_q.weight") ==
    "model.layers.2.self_attn.q_proj.weight". KeyError for a name the table does not map."""
    for template, rx in _GGUF_PATTERNS:
        m = rx.match(gguf_name)
        if m:
            return name(FROM_GGUF[template], int(m["i"]) if "{i}" in template else None)
    raise KeyError(f"GGUF tensor '{gguf_name}' has no checkpoint name")


def dims(config) -> dict[str, int]:
    """The dimension names of the table's shapes, for a MoleConfig."""
    c = config
    return {"V": c.vocab_size, "d": c.hidden_size, "D": c.intermediate_size, "q": c.num_attention_heads * c.head_dim,
            "kv": c.num_key_value_heads * c.head_dim, "N": c.num_experts, "De": c.n_ff_expert,
            "LNd": c.num_hidden_layers * c.num_experts * c.hidden_size}


class Named(NamedTuple):
    """One concrete tensor of a checkpoint: its table entry, its name and GGUF name ({i} filled; gguf None
    when it is not written), its shape, and its layer (None outside the layers)."""
    entry: Tensor
    name: str
    gguf: str | None
    shape: tuple[int, ...]
    layer: int | None


def tensors(config, form: str) -> list[Named]:
    """Every tensor a checkpoint of this config and form holds, in the table's order (the GGUF file order):
    layer by layer, each expert template filled for j = 0..N-1 in turn."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    n = dims(config)

    def rows(entries, i=None):
        for t in entries:
            if form not in t.forms:
                continue
            shape = tuple(n[x] for x in t.shape)
            experts = range(config.num_experts) if "{j}" in t.name else (None,)
            gguf = None if t.gguf is None else name(t.gguf, i)
            yield from (Named(t, name(t.name, i, j), gguf, shape, i) for j in experts)

    out = list(rows(BEFORE_LAYERS))
    for i in range(config.num_hidden_layers):
        out += rows(LAYER, i)
    return out + list(rows(AFTER_LAYERS))
