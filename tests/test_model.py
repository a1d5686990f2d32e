"""Tests of the PyTorch MoLE model (mole_convert.model): the two forms agree, dense works, and the
vectorised forward matches a naive per-position float64 re-implementation of DESIGN.md's math."""
import math

import pytest
import torch

from mole_convert import checkpoint_names as C
from mole_convert.checkpoint import expected_shapes
from mole_convert.model import MoleForCausalLM, compute_lut_rows, layer_params_from, reparameterize
from mole_convert.testing import random_model, random_state_dict, tiny_config


def naive_logits(sd, cfg, ids):
    """DESIGN.md's math, one position and one head at a time, float64. ids: list[int] -> [S, V]."""
    W = {k: v.double() for k, v in sd.items()}
    H, Hkv, hd, N = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.num_experts
    scale = cfg.rope_scaling["factor"] if cfg.rope_scaling else 1.0

    def norm(z, w):
        return w * z / math.sqrt(float((z * z).mean()) + cfg.rms_norm_eps)

    def gelu(z):
        return z * 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))

    def rope(v, pos):  # pairs (i, i + hd/2) rotate by angle pos/scale * theta^(-2i/hd)
        out = v.clone()
        for i in range(hd // 2):
            ang = (pos / scale) * cfg.rope_theta ** (-2.0 * i / hd)
            c, s = math.cos(ang), math.sin(ang)
            out[i] = v[i] * c - v[i + hd // 2] * s
            out[i + hd // 2] = v[i + hd // 2] * c + v[i] * s
        return out

    S = len(ids)
    e = [W[C.EMBED][t] for t in ids]
    x = list(e)
    for l in range(cfg.num_hidden_layers):
        def lw(template, j=None, layer=l):   # this layer's tensor (expert j)
            return W[C.name(template, layer, j)]

        xn = [norm(v, lw(C.ATTN_NORM)) for v in x]
        q = [lw(C.ATTN_Q) @ v for v in xn]
        k = [lw(C.ATTN_K) @ v for v in xn]
        val = [lw(C.ATTN_V) @ v for v in xn]
        a = []
        for s in range(S):
            heads = []
            for h in range(H):
                g = h // (H // Hkv)
                qh = rope(q[s][h * hd:(h + 1) * hd], s)
                scores = torch.stack([qh @ rope(k[t][g * hd:(g + 1) * hd], t) / math.sqrt(hd) for t in range(s + 1)])
                w = torch.exp(scores - scores.max())
                w = w / w.sum()
                heads.append(sum(w[t] * val[t][g * hd:(g + 1) * hd] for t in range(s + 1)))
            a.append(x[s] + lw(C.ATTN_OUT) @ torch.cat(heads))
        x = []
        for s in range(S):
            h = norm(a[s], lw(C.FFN_NORM))
            out = a[s] + lw(C.FFN_DOWN) @ gelu(lw(C.FFN_UP) @ h)
            if N:
                r = lw(C.ROUTER) @ h
                g = torch.exp(r - r.max())
                g = g / g.sum()
                en = norm(e[s], lw(C.EXPERT_NORM))
                for j in range(N):
                    ex = lw(C.EXPERT_DOWN, j) @ gelu(lw(C.EXPERT_UP, j) @ en)
                    out = out + g[j] * ex
            x.append(out)
    return torch.stack([W[C.OUTPUT] @ norm(v, W[C.OUTPUT_NORM]) for v in x])


CONFIGS = {
    "gqa": tiny_config(),
    "mha_theta_eps": tiny_config(num_key_value_heads=4, rope_theta=500.0, rms_norm_eps=1e-3),
    "rope_linear": tiny_config(num_key_value_heads=1, rope_scaling={"type": "linear", "factor": 2.5}),
    "expert_width": tiny_config(expert_intermediate_size=48, num_experts=3),
    "dense": tiny_config(num_experts=0),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_naive_float64(name):
    cfg = CONFIGS[name]
    sd = random_state_dict(cfg, seed=3)
    model = MoleForCausalLM(cfg).double()
    model.load_state_dict(sd, strict=True)
    ids = [5, 17, 300, 17, 2, 511, 64]
    with torch.no_grad():
        got = model(torch.tensor([ids]))[0]
    assert got.dtype == torch.float64
    want = naive_logits(sd, cfg, ids)
    assert torch.allclose(got, want, rtol=0, atol=1e-10), (got - want).abs().max()


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "dense"])
def test_training_and_reparam_forms_agree_float32(name):
    cfg = CONFIGS[name]
    model = random_model(cfg, seed=1)
    rep = reparameterize(model)
    assert rep.form == "reparam" and C.MOE_TABLE in rep.state_dict()
    assert not any(C.match(k)[0] in C.EXPERT_TENSORS for k in rep.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (3, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(ids), rep(ids)
    assert a.shape == (3, 19, cfg.vocab_size) and a.dtype == torch.float32
    assert (a - b).abs().max().item() <= 1e-5
    assert a.std().item() > 1.0  # random weights give spread-out logits, not a degenerate test


def test_moe_table_layout_is_vocab_layer_expert_hidden():
    cfg = tiny_config(num_experts=3)
    model = random_model(cfg, seed=2)
    table = reparameterize(model).model.moe_table.weight  # [V, L*N*d]
    L, N, d = cfg.num_hidden_layers, cfg.num_experts, cfg.hidden_size
    v, l, j = 77, 1, 2
    layer = model.model.layers[l]
    with torch.no_grad():
        want = layer.experts[j](layer.expert_layernorm(model.model.embed_tokens.weight[v]))
    got = table[v].view(L, N, d)[l, j]
    assert torch.allclose(got, want, atol=1e-6)


def test_compute_lut_rows_accepts_stacked_expert_weights():
    cfg = tiny_config()
    model = random_model(cfg, seed=4)
    sd = model.state_dict()
    params = layer_params_from(sd.__getitem__, cfg)
    stacked = [dict(p, up=torch.stack(p["up"]), down=torch.stack(p["down"])) for p in params]
    embed = sd[C.EMBED][10:20]
    rows = compute_lut_rows(embed, params)
    assert rows.shape == (10, cfg.num_hidden_layers * cfg.num_experts * cfg.hidden_size)
    assert torch.equal(rows, compute_lut_rows(embed, stacked))
    with pytest.raises(KeyError, match="eps"):
        compute_lut_rows(embed, [{k: v for k, v in params[0].items() if k != "eps"}])


def test_dense_model_has_no_expert_parameters():
    cfg = CONFIGS["dense"]
    model = MoleForCausalLM(cfg)
    assert model.form == "dense"
    names = set(model.state_dict())
    assert not any(C.match(n)[0] in (C.ROUTER, C.MOE_TABLE, *C.EXPERT_TENSORS) for n in names)
    assert reparameterize(model) is not model


@pytest.mark.parametrize("form", ["training", "reparam", "dense"])
def test_parameter_names_and_shapes_are_the_authors(form):
    cfg = tiny_config(num_experts=0) if form == "dense" else tiny_config()
    model = MoleForCausalLM(cfg, form="training" if form == "dense" else form)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_shapes(cfg, form)


def test_causal_and_position_dependent():
    cfg = tiny_config()
    model = random_model(cfg, seed=5)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    ids2 = ids.clone()
    ids2[0, 4] = 99
    with torch.no_grad():
        a, b = model(ids), model(ids2)
        swapped = model(torch.tensor([[2, 1, 3, 4, 5, 6]]))
    assert torch.equal(a[0, :4], b[0, :4])            # later tokens do not leak backwards
    assert not torch.allclose(a[0, 4:], b[0, 4:])
    assert not torch.allclose(a[0, 2:], swapped[0, 2:])  # order matters (RoPE)


def test_bf16_autocast_close_to_fp32():
    cfg = tiny_config()
    model = random_model(cfg, seed=6)
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_bad_form_and_too_long_input():
    with pytest.raises(ValueError, match="form"):
        MoleForCausalLM(tiny_config(), form="lut")
    model = MoleForCausalLM(tiny_config(max_position_embeddings=8))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 9, dtype=torch.long))
