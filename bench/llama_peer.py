"""The llama.cpp peer: writes a dense llama-architecture GGUF with the same FLOPs and bytes per token as a
MoLE GGUF (same d, L, heads, V; SwiGLU width = 2/3 of the MoLE FFN width), and times it through
llama-cpp-python (prompt pass, then greedy KV-cached decode), for bench/bench_cpu.py."""
from __future__ import annotations

import pathlib
import time

import numpy as np

from mole import gguf_names as G

Q8_BLOCK = 32   # Q8_0 quantizes rows in blocks of 32 values


def available() -> str | None:
    """None when llama_cpp imports, else the reason it does not (shown as the column's note)."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:   # ImportError, or a broken build's OSError
        return f"llama-cpp-python not importable ({type(e).__name__}: {e})"
    return None


def swiglu_width(D: int) -> int:
    """SwiGLU width with the FLOPs and bytes of a GELU FFN of width D: 3*d*D' = 2*d*D, rounded to whole
    Q8_0 blocks (the down matrix's rows are D' wide)."""
    return max(Q8_BLOCK, int(round(2 * D / 3 / Q8_BLOCK)) * Q8_BLOCK)


def mole_hparams(mole_path: str | pathlib.Path) -> dict:
    """The hyperparameters and tokenizer arrays of a MoLE GGUF that the llama twin copies."""
    import gguf

    r = gguf.GGUFReader(str(mole_path))

    def get(key, default=None):
        f = r.fields.get(key)
        if f is None:
            if default is None:
                raise ValueError(f"{mole_path}: GGUF key '{key}' is missing")
            return default
        return f.contents()

    if get(G.KEY_ARCHITECTURE) != G.ARCH:
        raise ValueError(f"{mole_path}: not a mole GGUF ({G.KEY_ARCHITECTURE} = {get(G.KEY_ARCHITECTURE)!r})")
    hp = dict(V=int(get(G.KEY_VOCAB_SIZE)), d=int(get(G.KEY_EMBEDDING_LENGTH)), L=int(get(G.KEY_BLOCK_COUNT)),
              D=int(get(G.KEY_FEED_FORWARD_LENGTH)), H=int(get(G.KEY_HEAD_COUNT)),
              Hkv=int(get(G.KEY_HEAD_COUNT_KV)), n_ctx=int(get(G.KEY_CONTEXT_LENGTH)),
              eps=float(get(G.KEY_RMS_EPS)), theta=float(get(G.KEY_ROPE_FREQ_BASE)))
    hp["tokens"] = get(G.KEY_TOKENS)
    hp["token_type"] = get(G.KEY_TOKEN_TYPE)
    hp["merges"] = get(G.KEY_MERGES, [])
    hp["bos"] = int(get(G.KEY_BOS_ID, 0))
    hp["eos"] = int(get(G.KEY_EOS_ID, 0))
    if len(hp["tokens"]) != hp["V"]:
        raise ValueError(f"{mole_path}: {len(hp['tokens'])} tokenizer tokens for vocab_size {hp['V']}")
    return hp


def write_llama_gguf(mole_path: str | pathlib.Path, out: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Random-weight dense llama GGUF (Q8_0 matrices, f32 norms) twin of mole_path; reused when it exists."""
    import gguf
    from gguf.quants import quantize

    out = pathlib.Path(out)
    if out.exists():
        return out
    hp = mole_hparams(mole_path)
    V, d, L, H, Hkv = hp["V"], hp["d"], hp["L"], hp["H"], hp["Hkv"]
    hd = d // H
    Df = swiglu_width(hp["D"])
    for name, n in (("d", d), ("head_dim * kv heads", hd * Hkv), ("SwiGLU width", Df)):
        if n % Q8_BLOCK:
            raise ValueError(f"{name} = {n} is not a multiple of {Q8_BLOCK}: no Q8_0 llama twin")
    rng = np.random.default_rng(seed)

    def q8(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        """A random [rows, cols] matrix (ggml ne = [cols, rows]) as Q8_0 bytes, N(0, scale/cols)."""
        w = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(scale / np.sqrt(cols))
        return quantize(w, gguf.GGMLQuantizationType.Q8_0)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(d, dtype=np.float32)).astype(np.float32)

    tmp = out.with_name(out.name + ".part")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(f"llama twin of {pathlib.Path(mole_path).name}")
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(d)
    w.add_block_count(L)
    w.add_feed_forward_length(Df)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_rope_freq_base(hp["theta"])
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(V)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(hp["tokens"])
    w.add_token_types(hp["token_type"])
    if hp["merges"]:
        w.add_token_merges(hp["merges"])
    w.add_bos_token_id(hp["bos"])
    w.add_eos_token_id(hp["eos"])
    w.add_tensor("token_embd.weight", q8(V, d, np.sqrt(d)), raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # [d, V]
    for i in range(L):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm())                                           # [d]
        w.add_tensor(p + "attn_q.weight", q8(d, d), raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # [d, d]
        w.add_tensor(p + "attn_k.weight", q8(hd * Hkv, d), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(p + "attn_v.weight", q8(hd * Hkv, d), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(p + "attn_output.weight", q8(d, d), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(p + "ffn_norm.weight", norm())
        w.add_tensor(p + "ffn_gate.weight", q8(Df, d), raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # [d, Df]
        w.add_tensor(p + "ffn_up.weight", q8(Df, d), raw_dtype=gguf.GGMLQuantizationType.Q8_0)    # [d, Df]
        w.add_tensor(p + "ffn_down.weight", q8(d, Df), raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # [Df, d]
    w.add_tensor("output_norm.weight", norm())
    w.add_tensor("output.weight", q8(V, d), raw_dtype=gguf.GGMLQuantizationType.Q8_0)            # [d, V]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(out)
    return out


def run(path: str, prompt: list[int], n_gen: int, threads: int) -> dict:
    """Load path with llama-cpp-python, time one prompt pass over prompt and n_gen greedy decode steps after
    an 8-token prompt (KV cache on, logits of the last position only)."""
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=len(prompt) + n_gen + 16, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t_prompt = time.perf_counter() - t0
    llm.reset()
    short = prompt[:8]
    llm.eval(short)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    ids = list(short)
    steps = []
    for _ in range(n_gen):
        ids.append(tok)
        t0 = time.perf_counter()
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        steps.append(time.perf_counter() - t0)
    llm.close()
    return {"load_s": load_s, "prompt_s": t_prompt, "step_s": steps, "ids": ids}
