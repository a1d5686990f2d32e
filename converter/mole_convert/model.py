"""The MoLE language model in PyTorch: the reference every other part of mole.cpp is checked against.
Parameter names are the authors' HF names, so their checkpoints load with load_state_dict(strict=True).
Two forms: "training" computes the experts from the embedding; "reparam" gathers them from moe_table. A third,
"rows", holds the dense weights only and takes each position's LUT row as an argument (as the runtime does)."""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint_names as C
from .config import MoleConfig

FORMS = ("training", "reparam", "rows")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision norms, softmaxes and RoPE angles are computed in: fp32, or fp64 for a float64 model."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """w * (x * rsqrt(mean(x^2) + eps)), computed in fp32 (fp64 for fp64 inputs)."""
    xf = x.to(_acc_dtype(x.dtype))
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def mlp(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Down(GELU_erf(Up(x))); up [D, d], down [d, D]. Shared FFN and experts alike."""
    return F.linear(F.gelu(F.linear(x, up)), down)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))  # [d]
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class MLP(nn.Module):
    def __init__(self, d: int, D: int):
        super().__init__()
        self.up_proj = nn.Linear(d, D, bias=False)    # [D, d]
        self.down_proj = nn.Linear(D, d, bias=False)  # [d, D]

    def forward(self, x):
        return mlp(x, self.up_proj.weight, self.down_proj.weight)


def rope_cos_sin(S: int, head_dim: int, theta: float, scale: float, dtype: torch.dtype, device=None):
    """cos, sin [S, head_dim] for rotate-half RoPE; positions are divided by the linear scale factor."""
    acc = _acc_dtype(dtype)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=acc, device=device) / head_dim))  # [hd/2]
    pos = torch.arange(S, dtype=acc, device=device) / scale                                           # [S]
    freqs = torch.outer(pos, inv_freq)                                                                # [S, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)                                                           # [S, hd]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, hd]: x*cos + rotate_half(x)*sin, rotate_half(x) = cat(-x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: MoleConfig):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        self.q_proj = nn.Linear(d, self.n_head * hd, bias=False)  # [H*hd, d]
        self.k_proj = nn.Linear(d, self.n_kv * hd, bias=False)    # [Hkv*hd, d]
        self.v_proj = nn.Linear(d, self.n_kv * hd, bias=False)    # [Hkv*hd, d]
        self.o_proj = nn.Linear(self.n_head * hd, d, bias=False)  # [d, H*hd]

    def forward(self, x, cos, sin):
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, S, hd]
        k = self.k_proj(x).view(B, S, self.n_kv, self.head_dim).transpose(1, 2)    # [B, Hkv, S, hd]
        v = self.v_proj(x).view(B, S, self.n_kv, self.head_dim).transpose(1, 2)    # [B, Hkv, S, hd]
        q, k = apply_rope(q, cos.to(q.dtype), sin.to(q.dtype)), apply_rope(k, cos.to(k.dtype), sin.to(k.dtype))
        if self.n_kv != self.n_head:  # GQA: query head h reads kv head h // (H / Hkv)
            rep = self.n_head // self.n_kv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(hd); [B, H, S, hd]
        return self.o_proj(y.transpose(1, 2).reshape(B, S, self.n_head * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MoleConfig, form: str):
        super().__init__()
        d, N = cfg.hidden_size, cfg.num_experts
        self.eps = cfg.rms_norm_eps
        self.self_attn = Attention(cfg)
        self.mlp = MLP(d, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(d, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(d, cfg.rms_norm_eps)
        if N > 0:
            self.router = nn.Linear(d, N, bias=False)  # [N, d]
            if form == "training":
                self.expert_layernorm = RMSNorm(d, cfg.rms_norm_eps)
                self.experts = nn.ModuleList(MLP(d, cfg.n_ff_expert) for _ in range(N))

    def expert_outputs(self, e: torch.Tensor) -> torch.Tensor:
        """e [..., d] token embeddings -> every expert's output [..., N, d] (training form)."""
        en = self.expert_layernorm(e)
        return torch.stack([ex(en) for ex in self.experts], dim=-2)

    def forward(self, x, cos, sin, experts=None):
        """x [B, S, d]; experts [B, S, N, d] (this layer's expert outputs per token) or None when dense."""
        a = x + self.self_attn(self.input_layernorm(x), cos, sin)
        h = self.post_attention_layernorm(a)
        out = a + self.mlp(h)
        if experts is not None:
            logits = self.router(h)
            g = torch.softmax(logits.to(_acc_dtype(logits.dtype)), dim=-1).to(h.dtype)  # [B, S, N], all experts
            out = out + (g.unsqueeze(-1) * experts.to(h.dtype)).sum(dim=-2)
        return out


class MoleModel(nn.Module):
    def __init__(self, cfg: MoleConfig, form: str):
        super().__init__()
        V, d, L, N = cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_experts
        self.embed_tokens = nn.Embedding(V, d)  # [V, d]
        self.layers = nn.ModuleList(DecoderLayer(cfg, form) for _ in range(L))
        self.norm = RMSNorm(d, cfg.rms_norm_eps)
        if N > 0 and form == "reparam":
            self.moe_table = nn.Embedding(V, L * N * d)  # [V, L*N*d], order vocab -> layer -> expert -> hidden


_RESIDUAL_OUT = (C.ATTN_OUT, C.FFN_DOWN, C.EXPERT_DOWN)   # matrices that write into the residual stream


class MoleForCausalLM(nn.Module):
    def __init__(self, config: MoleConfig, form: str = "training"):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.config = config
        self.form = "dense" if config.num_experts == 0 else form
        self.model = MoleModel(config, form)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # [V, d]

    def forward(self, input_ids: torch.LongTensor, lut_rows: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, S] -> logits [B, S, V] (fp32, or fp64 for a float64 model).
        lut_rows [B, S, L*N*d]: each position's LUT row, required by (and only for) the "rows" form."""
        cfg = self.config
        B, S = input_ids.shape
        if S > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {S} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        m = self.model
        e = m.embed_tokens(input_ids)  # [B, S, d]
        cos, sin = rope_cos_sin(S, cfg.head_dim, cfg.rope_theta, cfg.rope_scale, e.dtype, e.device)
        table = None
        if (lut_rows is not None) != (self.form == "rows"):
            raise ValueError(f"lut_rows is required by the rows form and only by it (this model: {self.form})")
        if self.form == "reparam":
            table = m.moe_table(input_ids).view(B, S, cfg.num_hidden_layers, cfg.num_experts, cfg.hidden_size)
        elif self.form == "rows":
            table = lut_rows.reshape(B, S, cfg.num_hidden_layers, cfg.num_experts, cfg.hidden_size)
        if self.form == "training":  # experts read only the token id: compute them once per distinct id
            uniq, inverse = torch.unique(input_ids, return_inverse=True)  # [U], [B, S]
            e_uniq = m.embed_tokens(uniq)                                 # [U, d]
        x = e
        for l, layer in enumerate(m.layers):
            if self.form == "training":
                experts = layer.expert_outputs(e_uniq)[inverse]   # [U, N, d] -> [B, S, N, d]
            elif table is not None:
                experts = table[:, :, l]            # [B, S, N, d]
            else:
                experts = None
            x = layer(x, cos, sin, experts)
        logits = self.lm_head(m.norm(x))
        return logits.to(_acc_dtype(logits.dtype))

    def init_weights(self, std: float = 0.02, seed: int | None = None) -> "MoleForCausalLM":
        """GPT-2 style init for training: N(0, std), residual output projections scaled by 1/sqrt(2L)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        resid_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:   # the norms (nothing else is a vector: no biases)
                    p.fill_(1.0)
                elif (C.match(name) or ("",))[0] in _RESIDUAL_OUT:
                    p.copy_(torch.randn(p.shape, generator=gen) * resid_std)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
        return self


def compute_lut_rows(embed: torch.Tensor, layer_params: Sequence[dict]) -> torch.Tensor:
    """LUT rows for T tokens: embed [T, d] -> [T, L*N*d] (order layer -> expert -> hidden).

    layer_params: one dict per layer l with
      "expert_layernorm": Tensor [d], "eps": float,
      "up":   Tensor [N, D_e, d] or a list of N tensors [D_e, d]   (experts.j.up_proj.weight)
      "down": Tensor [N, d, D_e] or a list of N tensors [d, D_e]   (experts.j.down_proj.weight)
    Computed in embed's dtype (pass float32 or float64); row v equals FFN_expert_{l,j}(RMSNorm_expert_l(E[v])).
    """
    T, d = embed.shape
    out = []
    for l, p in enumerate(layer_params):
        for key in ("expert_layernorm", "eps", "up", "down"):
            if key not in p:
                raise KeyError(f"layer_params[{l}] lacks '{key}'")
        en = rms_norm(embed, p["expert_layernorm"].to(embed.dtype), float(p["eps"]))  # [T, d]
        for up, down in zip(p["up"], p["down"], strict=True):
            out.append(mlp(en, up.to(embed.dtype), down.to(embed.dtype)))            # [T, d]
    if not out:
        return embed.new_zeros(T, 0)
    return torch.stack(out, dim=1).reshape(T, -1)


def expert_params(get: Callable[[str], torch.Tensor], config: MoleConfig, i: int, dtype=torch.float32) -> dict:
    """compute_lut_rows' params of layer i, from training-form tensors via get(name) (e.g. Checkpoint.get)."""
    N = config.num_experts
    return {
        "expert_layernorm": get(C.name(C.EXPERT_NORM, i)).to(dtype),                          # [d]
        "eps": config.rms_norm_eps,
        "up": [get(C.name(C.EXPERT_UP, i, j)).to(dtype) for j in range(N)],                   # N x [De, d]
        "down": [get(C.name(C.EXPERT_DOWN, i, j)).to(dtype) for j in range(N)],               # N x [d, De]
    }


def layer_params_from(get: Callable[[str], torch.Tensor], config: MoleConfig, dtype=torch.float32) -> list[dict]:
    """compute_lut_rows' layer_params of every layer (expert_params for each)."""
    return [expert_params(get, config, i, dtype) for i in range(config.num_hidden_layers)]


@torch.no_grad()
def reparameterize(model: MoleForCausalLM) -> MoleForCausalLM:
    """The "reparam" form of a training-form model, moe_table computed in memory (tests/small models only).
    A dense model is returned as a copy."""
    if model.form == "dense":
        return copy.deepcopy(model)
    if model.form != "training":
        raise ValueError(f"reparameterize needs a training-form model, got form {model.form!r}")
    cfg = model.config
    weight = model.model.embed_tokens.weight
    rep = MoleForCausalLM(cfg, form="reparam").to(dtype=weight.dtype, device=weight.device)
    sd = {k: v for k, v in model.state_dict().items() if C.match(k)[0] not in C.EXPERT_TENSORS}
    params = layer_params_from(lambda n: model.get_parameter(n), cfg, dtype=weight.dtype)
    sd[C.MOE_TABLE] = compute_lut_rows(weight, params)
    rep.load_state_dict(sd, strict=True)
    return rep
