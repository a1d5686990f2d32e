"""The PyTorch peer: mole_convert's MoleForCausalLM (reparam form, fp32, CPU) loaded from a mole GGUF, with a
minimal KV-cached incremental forward built from model.py's own functions (its math unchanged), for
bench/bench_cpu.py. The LUT stays in the file (mmapped); each step dequantizes only its tokens' rows."""
from __future__ import annotations

import pathlib
import time

import numpy as np
import torch

from mole import gguf_names as G
from mole_convert import checkpoint_names as C
from mole_convert.config import MoleConfig
from mole_convert.model import MoleForCausalLM, apply_rope, mlp, rms_norm, rope_cos_sin
from mole_convert.quantize import dequantize


class TorchPeer:
    """A mole GGUF as a PyTorch model plus a KV cache of n_ctx positions (batch 1)."""

    def __init__(self, path: str | pathlib.Path, n_ctx: int, full_lut: bool = False):
        import gguf

        r = gguf.GGUFReader(str(path))

        def key(k, default=None):
            f = r.fields.get(k)
            return default if f is None else f.contents()

        if key(G.KEY_ARCHITECTURE) != G.ARCH:
            raise ValueError(f"{path}: not a mole GGUF")
        rs = None
        if key(G.KEY_ROPE_SCALING_TYPE) is not None:
            rs = {"type": key(G.KEY_ROPE_SCALING_TYPE), "factor": float(key(G.KEY_ROPE_SCALING_FACTOR))}
        N = int(key(G.KEY_EXPERT_COUNT, 0))
        cfg = MoleConfig(vocab_size=int(key(G.KEY_VOCAB_SIZE)), hidden_size=int(key(G.KEY_EMBEDDING_LENGTH)),
                         intermediate_size=int(key(G.KEY_FEED_FORWARD_LENGTH)),
                         num_hidden_layers=int(key(G.KEY_BLOCK_COUNT)),
                         num_attention_heads=int(key(G.KEY_HEAD_COUNT)),
                         num_key_value_heads=int(key(G.KEY_HEAD_COUNT_KV)), num_experts=N,
                         expert_intermediate_size=int(key(G.KEY_EXPERT_FEED_FORWARD_LENGTH, 0)) or None,
                         max_position_embeddings=max(n_ctx, int(key(G.KEY_CONTEXT_LENGTH))),
                         rms_norm_eps=float(key(G.KEY_RMS_EPS)),
                         rope_theta=float(key(G.KEY_ROPE_FREQ_BASE)), rope_scaling=rs)
        self.cfg = cfg
        sd, lut = {}, None
        for t in r.tensors:
            if t.name == G.TENSOR_LUT:
                lut = t
                continue
            sd[C.from_gguf(t.name)] = torch.from_numpy(self._f32(t))
        # The model without its moe_table (a meta tensor: never allocated); the LUT is gathered from the file.
        with torch.device("meta"):
            model = MoleForCausalLM(cfg, form="reparam")
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
        if unexpected or [k for k in missing if k != C.MOE_TABLE]:
            raise ValueError(f"{path}: tensors do not match the model: missing {missing}, unexpected {unexpected}")
        self.model = model.eval()
        L, d = cfg.num_hidden_layers, cfg.hidden_size
        self.lut_type, self.lut_n = None, L * N * d
        if N > 0:
            if lut is None:
                raise ValueError(f"{path}: {N} experts but no {G.TENSOR_LUT}")
            self.lut_type = lut.tensor_type.name.lower()
            self.lut_bytes = np.asarray(lut.data).view(np.uint8).reshape(cfg.vocab_size, -1)   # [V, row bytes], mmapped
            if full_lut:   # the whole table in memory, as nn.Embedding (small models / parity checks only)
                table = torch.from_numpy(dequantize(self.lut_bytes, self.lut_type, self.lut_n))
                model.model.moe_table = torch.nn.Embedding.from_pretrained(table, freeze=True)
        hd, Hkv = cfg.head_dim, cfg.num_key_value_heads
        self.k = torch.zeros(L, 1, Hkv, n_ctx, hd)    # [L, B=1, Hkv, n_ctx, hd]
        self.v = torch.zeros(L, 1, Hkv, n_ctx, hd)
        self.cos, self.sin = rope_cos_sin(n_ctx, hd, cfg.rope_theta, cfg.rope_scale, torch.float32)   # [n_ctx, hd]
        self.n_ctx, self.pos = n_ctx, 0

    @staticmethod
    def _f32(t) -> np.ndarray:
        """A GGUF tensor as float32 in numpy order ([out, in] for matrices)."""
        from gguf.quants import dequantize as gq

        shape = [int(n) for n in reversed(t.shape)]
        return np.array(gq(np.asarray(t.data), t.tensor_type).reshape(shape), dtype=np.float32, order="C")  # own copy

    def reset(self) -> None:
        self.pos = 0

    def _lut_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [S] -> the step's experts [S, L, N, d], each distinct row dequantized once."""
        cfg = self.cfg
        uniq, inverse = np.unique(ids.numpy(), return_inverse=True)
        rows = torch.from_numpy(dequantize(self.lut_bytes[uniq], self.lut_type, self.lut_n))   # [U, L*N*d]
        return rows[torch.from_numpy(inverse.reshape(-1))].view(-1, cfg.num_hidden_layers, cfg.num_experts,
                                                                cfg.hidden_size)

    @torch.no_grad()
    def forward(self, ids: list[int], last_only: bool = True) -> torch.Tensor:
        """Appends ids at the cache's position: logits [V] of the last position (or [S, V])."""
        cfg, m = self.cfg, self.model.model
        S, p0 = len(ids), self.pos
        if p0 + S > self.n_ctx:
            raise ValueError(f"{p0 + S} positions do not fit in the KV cache (n_ctx = {self.n_ctx})")
        t = torch.tensor(ids, dtype=torch.long)        # [S]
        x = m.embed_tokens(t).unsqueeze(0)             # [1, S, d]
        experts = self._lut_rows(t).unsqueeze(0) if cfg.num_experts else None   # [1, S, L, N, d]
        cos, sin = self.cos[p0:p0 + S], self.sin[p0:p0 + S]                    # [S, hd]
        H, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        # Causal mask over the cache: query p0+s sees keys 0..p0+s.
        mask = None
        if S > 1:
            mask = torch.arange(p0 + S).unsqueeze(0) <= torch.arange(p0, p0 + S).unsqueeze(1)   # [S, p0+S]
        for l, layer in enumerate(m.layers):
            at = layer.self_attn
            h = layer.input_layernorm(x)
            q = at.q_proj(h).view(1, S, H, hd).transpose(1, 2)      # [1, H, S, hd]
            k = at.k_proj(h).view(1, S, Hkv, hd).transpose(1, 2)    # [1, Hkv, S, hd]
            v = at.v_proj(h).view(1, S, Hkv, hd).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.k[l, :, :, p0:p0 + S] = k
            self.v[l, :, :, p0:p0 + S] = v
            K, Vv = self.k[l, :, :, :p0 + S], self.v[l, :, :, :p0 + S]   # [1, Hkv, p0+S, hd]
            if Hkv != H:
                K, Vv = K.repeat_interleave(H // Hkv, dim=1), Vv.repeat_interleave(H // Hkv, dim=1)
            y = torch.nn.functional.scaled_dot_product_attention(q, K, Vv, attn_mask=mask)   # [1, H, S, hd]
            a = x + at.o_proj(y.transpose(1, 2).reshape(1, S, H * hd))
            h2 = layer.post_attention_layernorm(a)
            out = a + mlp(h2, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight)
            if experts is not None:
                g = torch.softmax(layer.router(h2).float(), dim=-1)                # [1, S, N], all experts
                out = out + (g.unsqueeze(-1) * experts[:, :, l]).sum(dim=-2)
            x = out
        self.pos = p0 + S
        xs = x[0, -1:] if last_only else x[0]
        logits = self.model.lm_head(rms_norm(xs, m.norm.weight, m.norm.eps))      # [1 or S, V]
        return logits[0] if last_only else logits


def run(path: str, prompt: list[int], n_gen: int, threads: int) -> dict:
    """Time one prompt pass and n_gen greedy KV-cached decode steps (after an 8-token prompt), fp32."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    peer = TorchPeer(path, n_ctx=len(prompt) + n_gen + 16)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    peer.forward(prompt)
    t_prompt = time.perf_counter() - t0
    peer.reset()
    short = prompt[:8]
    tok = int(torch.argmax(peer.forward(short)))
    ids = list(short)
    steps = []
    for _ in range(n_gen):
        ids.append(tok)
        t0 = time.perf_counter()
        tok = int(torch.argmax(peer.forward([tok])))
        steps.append(time.perf_counter() - t0)
    return {"load_s": load_s, "prompt_s": t_prompt, "step_s": steps, "ids": ids}
