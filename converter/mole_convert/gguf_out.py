"""GGUF v3 writing for architecture `mole` (DESIGN.md's file-format tables): metadata, dense tensors read
and quantized one at a time, and the LUT streamed last. Nothing is held beyond one tensor or one chunk."""
from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import numpy as np
import gguf

from mole import gguf_names as G

from . import checkpoint_names as C
from .args import WEIGHT_TYPES
from .checkpoint import Checkpoint
from .errors import ConvertError
from .progress import Progress
from .quantize import can_quantize, ggml_type, quantize, row_bytes
from .tokenizer_meta import TokenizerMeta


@dataclass
class PlannedTensor:
    """One dense tensor: checkpoint source, GGUF name, numpy-order shape (= checkpoint shape), type."""
    ckpt_name: str
    gguf_name: str
    shape: tuple[int, ...]      # [rows, n]: ggml ne0 = n (last)
    type_name: str

    @property
    def nbytes(self) -> int:
        rows = int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
        return rows * row_bytes(self.type_name, self.shape[-1])


@dataclass
class TensorPlan:
    tensors: list[PlannedTensor]
    notes: list[str] = field(default_factory=list)


def plan_tensors(ckpt: Checkpoint, weight_type: str) -> TensorPlan:
    """Every non-LUT tensor in file order with its GGUF type: norms and router f32, matrices weight_type
    (f16 when a row is not a whole number of weight_type blocks)."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight type {weight_type!r} is not one of {', '.join(WEIGHT_TYPES)}")
    plan = TensorPlan([])
    for entry, name, gname, _, _ in C.tensors(ckpt.config, ckpt.form):
        if gname is None or gname == G.TENSOR_LUT:   # consumed by the LUT, or the LUT (streamed last)
            continue
        shape = tuple(ckpt.shape(name))
        if entry.gguf in G.F32_TENSORS or len(shape) == 1:
            t = "f32"
        elif can_quantize(weight_type, shape[-1]):
            t = weight_type
        else:
            t = "f16"
            plan.notes.append(f"{gname}: row length {shape[-1]} is not a multiple of the {weight_type} block size; "
                              "stored as f16")
        plan.tensors.append(PlannedTensor(name, gname, shape, t))
    return plan


class _CheckpointTensor:
    """A dense tensor written by GGUFWriter.write_tensor_data: read and quantized only when written."""

    def __init__(self, ckpt: Checkpoint, t: PlannedTensor, bar: Progress):
        self.ckpt, self.t, self.bar = ckpt, t, bar
        self.nbytes = t.nbytes

    def tofile(self, fout) -> None:
        x = self.ckpt.get(self.t.ckpt_name).numpy()                       # f32, checkpoint shape
        q = quantize(x.reshape(-1, self.t.shape[-1]), self.t.type_name)   # [rows, row_bytes]
        if q.nbytes != self.nbytes:
            raise ConvertError(f"{self.t.gguf_name}: quantized to {q.nbytes} bytes, expected {self.nbytes}")
        fout.write(memoryview(q).cast("B"))
        self.bar.update(self.nbytes)


def add_metadata(w: gguf.GGUFWriter, ckpt: Checkpoint, tok: TokenizerMeta, name: str) -> None:
    """Every key of DESIGN.md's metadata table."""
    c = ckpt.config
    w.add_string(G.KEY_NAME, name or "mole")
    w.add_custom_alignment(G.ALIGNMENT)
    w.add_uint32(G.KEY_VOCAB_SIZE, c.vocab_size)
    w.add_uint32(G.KEY_CONTEXT_LENGTH, c.max_position_embeddings)
    w.add_uint32(G.KEY_EMBEDDING_LENGTH, c.hidden_size)
    w.add_uint32(G.KEY_BLOCK_COUNT, c.num_hidden_layers)
    w.add_uint32(G.KEY_FEED_FORWARD_LENGTH, c.intermediate_size)
    w.add_uint32(G.KEY_EXPERT_COUNT, c.num_experts)
    w.add_uint32(G.KEY_EXPERT_FEED_FORWARD_LENGTH, c.n_ff_expert if c.num_experts else 0)
    w.add_uint32(G.KEY_HEAD_COUNT, c.num_attention_heads)
    w.add_uint32(G.KEY_HEAD_COUNT_KV, c.num_key_value_heads)
    w.add_float32(G.KEY_RMS_EPS, float(c.rms_norm_eps))
    w.add_float32(G.KEY_ROPE_FREQ_BASE, float(c.rope_theta))
    if c.rope_scaling:
        kind = c.rope_scaling.get("type", c.rope_scaling.get("rope_type"))
        if kind != "linear":
            raise ConvertError(f"rope_scaling type {kind!r} is not supported (only 'linear')")
        w.add_string(G.KEY_ROPE_SCALING_TYPE, kind)
        w.add_float32(G.KEY_ROPE_SCALING_FACTOR, float(c.rope_scaling["factor"]))
    w.add_string(G.KEY_TOKENIZER_MODEL, tok.model)
    w.add_string(G.KEY_TOKENIZER_PRE, tok.pre)
    w.add_array(G.KEY_TOKENS, tok.tokens)
    w.add_key_value(G.KEY_TOKEN_TYPE, list(tok.token_types), gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32)
    if tok.merges:
        w.add_array(G.KEY_MERGES, tok.merges)
    for key, v in ((G.KEY_BOS_ID, tok.bos_token_id), (G.KEY_EOS_ID, tok.eos_token_id),
                   (G.KEY_PAD_ID, tok.padding_token_id)):
        if v is not None:
            w.add_uint32(key, v)
    if tok.chat_template:
        w.add_string(G.KEY_CHAT_TEMPLATE, tok.chat_template)


def add_gate_metadata(w: gguf.GGUFWriter, gate) -> None:
    """The low-bit LUT's measured cost (lut_gate.GateResult): KL against q8_0, perplexity ratio, what on."""
    w.add_float32(G.KEY_LUT_KL_VS_Q8_0, float(gate.kl))
    if gate.ppl_ratio is not None:
        w.add_float32(G.KEY_LUT_PPL_RATIO_VS_Q8_0, float(gate.ppl_ratio))
    w.add_string(G.KEY_LUT_CALIBRATION, f"{gate.tokens} tokens of {gate.source}")


@dataclass
class FileLayout:
    """Where the LUT's bytes go in the file: GGUFWriter's own layout (tensor data aligned, each tensor padded)."""
    lut_offset: int     # absolute offset of lut.weight's first byte (a multiple of the alignment)
    lut_nbytes: int
    file_size: int      # lut_offset + lut_nbytes padded to the alignment, as GGUFWriter ends the file


def start_gguf(path, ckpt: Checkpoint, plan: TensorPlan, tok: TokenizerMeta, lut=None, *,
               name: str = "", gate=None) -> tuple[gguf.GGUFWriter, FileLayout | None]:
    """Open path and write the header, metadata and tensor infos; returns the writer (positioned before the
    dense tensors' data) and, when there is a LUT, where its bytes go. gate: the low-bit LUT's measurement
    (lut_gate.GateResult), written as mole.lut.* keys."""
    w = gguf.GGUFWriter(pathlib.Path(path), G.ARCH)
    try:
        add_metadata(w, ckpt, tok, name)
        if gate is not None:
            add_gate_metadata(w, gate)
        for t in plan.tensors:
            w.add_tensor_info(t.gguf_name, t.shape, np.float32, t.nbytes, raw_dtype=ggml_type(t.type_name))
        if lut is not None:
            V, n = ckpt.config.vocab_size, lut.plan.row_len
            w.add_tensor_info(G.TENSOR_LUT, (V, n), np.float32, lut.nbytes, raw_dtype=ggml_type(lut.plan.lut_type))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
    except BaseException:
        w.close()
        raise
    if lut is None:
        return w, None
    pad = w.ggml_pad
    data_start = pad(w.fout[0].tell(), w.data_alignment)
    lut_offset = data_start + sum(pad(t.nbytes, w.data_alignment) for t in plan.tensors)
    return w, FileLayout(lut_offset, lut.nbytes, lut_offset + pad(lut.nbytes, w.data_alignment))


def write_dense(w: gguf.GGUFWriter, ckpt: Checkpoint, plan: TensorPlan, progress: bool = False) -> None:
    """Every dense tensor, in file order, each read and quantized only when written."""
    with Progress(sum(t.nbytes for t in plan.tensors), "weights", "B", progress) as bar:
        for t in plan.tensors:
            w.write_tensor_data(_CheckpointTensor(ckpt, t, bar))


def write_gguf(path, ckpt: Checkpoint, plan: TensorPlan, tok: TokenizerMeta, lut=None, *,
               name: str = "", progress: bool = False, gate=None) -> None:
    """Write the whole file to path: header, metadata, tensor infos, dense tensors, then the LUT stream
    (an object with nbytes and tofile(fout), e.g. reparam.LutStream) when the model has one; gate as in
    start_gguf."""
    w, _ = start_gguf(path, ckpt, plan, tok, lut, name=name, gate=gate)
    try:
        write_dense(w, ckpt, plan, progress)
        if lut is not None:
            w.write_tensor_data(lut)
        w.flush()
    finally:
        w.close()
