"""The malformed-file corpus (issue 12): a small valid mole GGUF written here byte by byte, and every way of
breaking it that the issue lists, each with the message libmole must give. Needs only numpy and the
standard library (no torch, no gguf package), so fuzzing harnesses can seed from it:

    from malformed import write_corpus        # with tests/ on sys.path
    write_corpus("corpus/")                   # corpus/<case>.gguf, corpus/valid.gguf, corpus/cases.json

or `python tests/malformed.py DIR`. cases.json maps each case name to {"message": regex libmole's message
matches, "stage": "load" (mole_model_load fails with MOLE_STATUS_FORMAT_ERROR) or "chat" (the file loads;
Model.chat raises mole.FormatError)}. tests/test_malformed.py runs every case.
"""
from __future__ import annotations

import json
import pathlib
import re
import struct
import sys
from dataclasses import dataclass, field, replace

import numpy as np

try:   # the installed package (the tests'), else the source tree's (python tests/malformed.py DIR in a checkout)
    from mole import gguf_names as G   # pure Python: no library is loaded
except ImportError:
    sys.path.append(str(pathlib.Path(__file__).resolve().parent.parent / "python"))
    from mole import gguf_names as G

# GGUF value types and the ggml tensor types used here.
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
T_F32, T_F16, T_Q8_0 = 0, 1, 8
_TYPE_NAMES = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"]
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
           I64: "<q", F64: "<d"}

# The base model: V 264 (261 tokenizer tokens, padded), d 16, 2 layers, 2 heads of 8 / 1 KV head, D 32,
# 2 experts, f32 weights and a Q8_0 LUT [L*N*d = 64, V]: about 100 KB.
V, D_MODEL, N_LAYER, N_HEAD, N_HEAD_KV, D_FF, N_EXPERT, N_CTX = 264, 16, 2, 2, 1, 32, 2, 64
HEAD_DIM = D_MODEL // N_HEAD
ALIGN = 32
EOT = "<|endoftext|>"
CHAT_TEMPLATE = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


@dataclass
class KV:
    key: str
    type: int
    value: object
    elem: int | None = None   # element type of an array


@dataclass
class Tensor:
    name: str
    ne: list[int]             # ggml order: ne[0] is the row length
    type: int
    data: bytes
    offset: int | None = None  # relative to the data section; None: the next aligned place


@dataclass
class GgufFile:
    """A GGUF file as parts; build() gives its bytes and where each part lies (for cuts and patches)."""
    kvs: list[KV]
    tensors: list[Tensor]
    magic: bytes = b"GGUF"
    version: int = 3
    n_kv: int | None = None        # header counts; None: the real ones
    n_tensors: int | None = None
    alignment: int = ALIGN         # how this writer lays out the data (general.alignment says what readers use)

    def kv(self, key: str) -> KV:
        return next(k for k in self.kvs if k.key == key)

    def set(self, key: str, type_: int, value, elem: int | None = None) -> GgufFile:
        for i, k in enumerate(self.kvs):
            if k.key == key:
                self.kvs[i] = KV(key, type_, value, elem)
                return self
        self.kvs.append(KV(key, type_, value, elem))
        return self

    def drop(self, key: str) -> GgufFile:
        self.kvs = [k for k in self.kvs if k.key != key]
        return self

    def tensor(self, name: str) -> Tensor:
        return next(t for t in self.tensors if t.name == name)

    def build(self) -> tuple[bytes, list[tuple[str, int, int]]]:
        """(file bytes, [(section name, start, end)]) in file order; the file ends with the last tensor's data."""
        out, sections = bytearray(), []

        def put(name: str, b: bytes) -> None:
            sections.append((name, len(out), len(out) + len(b)))
            out.extend(b)

        def put_str(name: str, s) -> None:
            b = s.encode() if isinstance(s, str) else bytes(s)
            put(name + " length", struct.pack("<Q", len(b)))
            put(name + " bytes", b)

        def put_value(name: str, t: int, v, elem: int | None) -> None:
            if t == STR:
                put_str(name, v)
            elif t == ARR:
                put(name + " element type", struct.pack("<I", elem))
                put(name + " count", struct.pack("<Q", len(v)))
                start = len(out)
                for i, x in enumerate(v):
                    if elem == STR:
                        out.extend(struct.pack("<Q", len(x.encode())) + x.encode())
                    elif elem == ARR:
                        sub_elem, items = x
                        put_value(f"{name} item {i}", ARR, items, sub_elem)
                    else:
                        out.extend(struct.pack(_SCALAR[elem], x))
                sections.append((name + " elements", start, len(out)))
            elif t in _SCALAR:
                put(name, struct.pack(_SCALAR[t], v))
            else:
                put(name, bytes(v))   # an unknown type: its "value" as raw bytes

        put("magic", self.magic)
        put("version", struct.pack("<I", self.version))
        put("tensor count", struct.pack("<Q", len(self.tensors) if self.n_tensors is None else self.n_tensors))
        put("metadata count", struct.pack("<Q", len(self.kvs) if self.n_kv is None else self.n_kv))
        for i, k in enumerate(self.kvs):
            put_str(f"kv {i} '{k.key}' key", k.key)
            put(f"kv {i} '{k.key}' type", struct.pack("<I", k.type))
            put_value(f"kv {i} '{k.key}' value", k.type, k.value, k.elem)
        offsets, at = [], 0
        for t in self.tensors:
            off = at if t.offset is None else t.offset
            offsets.append(off)
            at = _pad(max(at, off + len(t.data)), self.alignment)
        for j, (t, off) in enumerate(zip(self.tensors, offsets, strict=True)):
            put_str(f"tensor info {j} '{t.name}' name", t.name)
            put(f"tensor info {j} '{t.name}' n_dims", struct.pack("<I", len(t.ne)))
            put(f"tensor info {j} '{t.name}' shape", b"".join(struct.pack("<Q", n) for n in t.ne))
            put(f"tensor info {j} '{t.name}' type", struct.pack("<I", t.type))
            put(f"tensor info {j} '{t.name}' offset", struct.pack("<Q", off))
        pad = _pad(len(out), self.alignment) - len(out)
        if pad:
            put("padding before the data", bytes(pad))
        base = len(out)
        for j, (t, off) in enumerate(zip(self.tensors, offsets, strict=True)):
            end = base + off + len(t.data)
            if len(out) < end:
                out.extend(bytes(end - len(out)))
            out[base + off:end] = t.data
            sections.append((f"data {j} '{t.name}'", base + off, end))
        return bytes(out), sections


def _pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _q8_0(x: np.ndarray) -> bytes:
    """ggml Q8_0 blocks of x [rows, n] (n a multiple of 32): f16 scale + 32 int8 per block."""
    b = x.astype(np.float32).reshape(-1, 32)
    d = np.abs(b).max(axis=1) / 127.0
    q = np.round(b / np.where(d == 0, 1, d)[:, None]).clip(-127, 127).astype(np.int8)
    blocks = np.zeros(len(b), dtype=[("d", "<f2"), ("q", "i1", 32)])
    blocks["d"], blocks["q"] = d.astype(np.float16), q
    return blocks.tobytes()


def _byte_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode: the byte-level spelling of each byte."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


BYTES = _byte_alphabet()
MERGES = [f"{BYTES[32]} t", "h e", f"{BYTES[32]}t he", "i n"]     # "Ġ t", "h e", "Ġt he", "i n"
TOKENS = BYTES + [BYTES[32] + "t", "he", BYTES[32] + "the", "in", EOT]
EOT_ID = len(TOKENS) - 1


def base_model(seed: int = 0) -> GgufFile:
    """The valid file every case starts from (it loads, tokenizes, evaluates and chats)."""
    rng = np.random.default_rng(seed)
    d, L, N = D_MODEL, N_LAYER, N_EXPERT
    qd, kvd = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM

    def f32(name, *ne, scale=None):
        shape = tuple(reversed(ne))
        a = rng.standard_normal(shape) * (scale if scale is not None else 1 / np.sqrt(ne[0]))
        return Tensor(name, list(ne), T_F32, a.astype("<f4").tobytes())

    def norm(name):
        return Tensor(name, [d], T_F32, (1 + 0.1 * rng.standard_normal(d)).astype("<f4").tobytes())

    tensors = [f32(G.TENSOR_TOKEN_EMBD, d, V, scale=1.0)]
    for i in range(L):
        def n(t, i=i):
            return G.layer_name(t, i)
        tensors += [norm(n(G.TENSOR_ATTN_NORM)), f32(n(G.TENSOR_ATTN_Q), d, qd), f32(n(G.TENSOR_ATTN_K), d, kvd),
                    f32(n(G.TENSOR_ATTN_V), d, kvd), f32(n(G.TENSOR_ATTN_OUT), qd, d), norm(n(G.TENSOR_FFN_NORM)),
                    f32(n(G.TENSOR_FFN_UP), d, D_FF), f32(n(G.TENSOR_FFN_DOWN), D_FF, d),
                    f32(n(G.TENSOR_ROUTER), d, N, scale=1.0)]
    tensors += [norm(G.TENSOR_OUTPUT_NORM), f32(G.TENSOR_OUTPUT, d, V, scale=3 / np.sqrt(d))]
    tensors.append(Tensor(G.TENSOR_LUT, [L * N * d, V], T_Q8_0, _q8_0(0.1 * rng.standard_normal((V, L * N * d)))))
    kvs = [
        KV(G.KEY_ARCHITECTURE, STR, G.ARCH), KV(G.KEY_NAME, STR, "malformed-base"), KV(G.KEY_ALIGNMENT, U32, ALIGN),
        KV(G.KEY_VOCAB_SIZE, U32, V), KV(G.KEY_CONTEXT_LENGTH, U32, N_CTX), KV(G.KEY_EMBEDDING_LENGTH, U32, d),
        KV(G.KEY_BLOCK_COUNT, U32, L), KV(G.KEY_FEED_FORWARD_LENGTH, U32, D_FF), KV(G.KEY_EXPERT_COUNT, U32, N),
        KV(G.KEY_EXPERT_FEED_FORWARD_LENGTH, U32, D_FF), KV(G.KEY_HEAD_COUNT, U32, N_HEAD),
        KV(G.KEY_HEAD_COUNT_KV, U32, N_HEAD_KV), KV(G.KEY_RMS_EPS, F32, 1e-5), KV(G.KEY_ROPE_FREQ_BASE, F32, 1e4),
        KV(G.KEY_TOKENIZER_MODEL, STR, "gpt2"), KV(G.KEY_TOKENIZER_PRE, STR, "default"),
        KV(G.KEY_TOKENS, ARR, list(TOKENS), STR),
        KV(G.KEY_TOKEN_TYPE, ARR, [1] * (len(TOKENS) - 1) + [3], I32),
        KV(G.KEY_MERGES, ARR, list(MERGES), STR),
        KV(G.KEY_BOS_ID, U32, EOT_ID), KV(G.KEY_EOS_ID, U32, EOT_ID),
        KV(G.KEY_CHAT_TEMPLATE, STR, CHAT_TEMPLATE),
    ]
    return GgufFile(kvs, tensors)


@dataclass
class Case:
    name: str
    data: bytes
    message: str            # a regex libmole's message (or mole.FormatError's) matches
    stage: str = "load"     # "load" or "chat" (see the module's docstring)
    notes: dict = field(default_factory=dict)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")


def _variant(edit) -> bytes:
    f = base_model()
    edit(f)
    return f.build()[0]


def _patched(section: str, value: bytes, edit=None) -> bytes:
    """The base file (after edit, if given) with the bytes of one section (by exact name) replaced by value
    (same length)."""
    f = base_model()
    if edit is not None:
        edit(f)
    data, sections = f.build()
    _, a, b = next(s for s in sections if s[0] == section)
    assert len(value) == b - a, (section, len(value), b - a)
    return data[:a] + value + data[b:]


def truncation_cases() -> list[Case]:
    """The base file cut in the middle of each of its sections (header fields, each key/value part, each
    tensor info field, the padding, each tensor's data). Every cut must be reported as a truncation,
    naming the entry it lands in when it lands in one."""
    data, sections = base_model().build()
    out = []
    for name, a, b in sections:
        cut = a + (b - a) // 2 if b - a >= 2 else a
        if name == "magic":
            want = r"bad magic"
        elif m := re.match(r"kv (\d+) '([^']+)'", name):
            want = rf"truncated.*(key '{re.escape(m[2])}'|metadata entry {m[1]}\b|array '{re.escape(m[2])}'|" \
                   rf"metadata entries)|(key '{re.escape(m[2])}'|metadata entry {m[1]}\b).*truncated"
        elif m := re.match(r"tensor info (\d+) '([^']+)'", name):
            want = rf"truncated.*(tensor '{re.escape(m[2])}'|tensor {m[1]}\b|tensors)|" \
                   rf"(tensor '{re.escape(m[2])}'|tensor {m[1]}\b).*truncated"
        elif m := re.match(r"data \d+ '([^']+)'", name):
            want = rf"tensor '{re.escape(m[1])}': \S+ \S+ of data past end of file \(truncated file"
        elif name == "padding before the data":
            want = r"truncated file: the data section starts at offset"
        else:   # version, counts
            want = rf"truncated file: {name}"
        out.append(Case(_slug(f"truncated {name}"), data[:cut], want, notes={"cut": cut, "section": [a, b]}))
    return out


def header_cases() -> list[Case]:
    """Wrong magic and version; counts and lengths that run past the end of the file; unknown types."""
    big = struct.pack("<Q", 1 << 62)
    huge = struct.pack("<Q", 2**64 - 1)
    tok = next(i for i, k in enumerate(base_model().kvs) if k.key == G.KEY_TOKENS)
    merges = next(i for i, k in enumerate(base_model().kvs) if k.key == G.KEY_MERGES)
    ttype = next(i for i, k in enumerate(base_model().kvs) if k.key == G.KEY_TOKEN_TYPE)
    name = "kv 1 'general.name'"
    c = [
        Case("wrong-magic", _variant(lambda f: setattr(f, "magic", b"GGUG")), r"not a GGUF file \(bad magic"),
        Case("wrong-magic-ggml", _variant(lambda f: setattr(f, "magic", b"lmgg")), r"bad magic"),
        Case("version-1", _variant(lambda f: setattr(f, "version", 1)), r"unsupported GGUF version 1\b"),
        Case("version-4", _variant(lambda f: setattr(f, "version", 4)), r"unsupported GGUF version 4\b"),
        Case("version-huge", _variant(lambda f: setattr(f, "version", 2**32 - 1)), r"unsupported GGUF version"),
        Case("huge-tensor-count", _variant(lambda f: setattr(f, "n_tensors", 1 << 60)),
             r"header claims 1152921504606846976 tensors, more than the \d+ bytes after the metadata can hold "
             r"\(truncated file or corrupt count\)"),
        Case("max-tensor-count", _variant(lambda f: setattr(f, "n_tensors", 2**64 - 1)),
             r"header claims 18446744073709551615 tensors"),
        Case("huge-metadata-count", _variant(lambda f: setattr(f, "n_kv", 1 << 60)),
             r"header claims 1152921504606846976 metadata entries, more than the \d+-byte file can hold "
             r"\(truncated file or corrupt count\)"),
        Case("metadata-count-one-too-many", _variant(lambda f: setattr(f, "n_kv", len(f.kvs) + 1)),
             r"claims \d+ bytes but only \d+ remain|invalid (key|name)|unknown value type|truncated"),
        Case("tensor-count-one-too-few", _variant(lambda f: setattr(f, "n_tensors", len(f.tensors) - 1)),
             r"tensor|past end|overlap|invalid"),
        Case("key-length-past-end", _patched(f"{name} key length", big),
             r"key of metadata entry 1 at offset \d+ claims \d+ bytes but only \d+ remain"),
        Case("string-length-past-end", _patched(f"{name} value length", big),
             r"value of key 'general.name' at offset \d+ claims 4611686018427387904 bytes but only \d+ remain"),
        Case("string-length-max", _patched(f"{name} value length", huge),
             r"value of key 'general.name' at offset \d+ claims 18446744073709551615 bytes"),
        Case("array-count-past-end", _patched(f"kv {tok} '{G.KEY_TOKENS}' value count", big),
             rf"key '{G.KEY_TOKENS}': array of 4611686018427387904 string elements does not fit"),
        Case("numeric-array-count-past-end", _patched(f"kv {ttype} '{G.KEY_TOKEN_TYPE}' value count", huge),
             rf"key '{G.KEY_TOKEN_TYPE}': array of 18446744073709551615 int32 elements does not fit"),
        Case("unknown-value-type", _patched(f"{name} type", struct.pack("<I", 13)),
             r"key 'general.name' has unknown value type 13"),
        Case("unknown-value-type-max", _patched(f"{name} type", struct.pack("<I", 2**32 - 1)),
             r"key 'general.name' has unknown value type 4294967295"),
        Case("unknown-array-element-type", _patched(f"kv {merges} '{G.KEY_MERGES}' value element type",
                                                    struct.pack("<I", 99)),
             rf"key '{G.KEY_MERGES}': unknown array element type 99"),
        Case("empty-key", _variant(lambda f: f.set("", U32, 1)), r"metadata entry 22 has an invalid key \(0 bytes\)"),
        Case("key-with-nul", _variant(lambda f: f.set("bad\0key", U32, 1)), r"metadata entry 22 has an invalid key"),
        Case("duplicate-key", _variant(lambda f: f.kvs.append(KV(G.KEY_BLOCK_COUNT, U32, 2))),
             rf"duplicate metadata key '{G.KEY_BLOCK_COUNT}'"),
        Case("arrays-nested-too-deep", _variant(lambda f: f.set("deep", ARR, _nest(12), ARR)),
             r"key 'deep': arrays nested deeper than 8 levels"),
        Case("nested-array-count-past-end",
             _patched("kv 22 'nest' value item 0 count", struct.pack("<Q", 1 << 40),
                      lambda f: f.set("nest", ARR, [(U8, [1, 2])], ARR)),
             r"key 'nest': array of 1099511627776 uint8 elements does not fit"),
    ]
    # A string element of an array whose length runs past the end (the merges' second element).
    data, sections = base_model().build()
    _, a, _ = next(s for s in sections if s[0] == f"kv {merges} '{G.KEY_MERGES}' value elements")
    at = a + 8 + len(MERGES[0].encode())
    c.append(Case("array-string-element-past-end", data[:at] + big + data[at + 8:],
                  rf"string element of array '{G.KEY_MERGES}' at offset {at} claims 4611686018427387904 bytes"))
    return c


def _nest(depth: int):
    """An array value nested `depth` arrays deep (innermost: one uint8)."""
    v = [1]
    elem = U8
    for _ in range(depth - 1):
        v, elem = [(elem, v)], ARR
    return v


def _tensor_edit(tensor: str, **changes):
    def edit(f: GgufFile):
        t = f.tensor(tensor)
        for k, v in changes.items():
            setattr(t, k, v)
    return edit


def tensor_cases() -> list[Case]:
    """n_dims, shapes, types, offsets and the data section."""
    q = G.layer_name(G.TENSOR_ATTN_Q, 0)
    k = G.layer_name(G.TENSOR_ATTN_K, 1)
    data, sections = base_model().build()

    def info(field_: str, tensor: str, value: bytes) -> bytes:
        j = next(i for i, t in enumerate(base_model().tensors) if t.name == tensor)
        _, a, b = next(s for s in sections if s[0] == f"tensor info {j} '{tensor}' {field_}")
        return data[:a] + value + data[b:]

    def offset_of(tensor: str) -> int:
        j = next(i for i, t in enumerate(base_model().tensors) if t.name == tensor)
        _, a, b = next(s for s in sections if s[0] == f"tensor info {j} '{tensor}' offset")
        return struct.unpack("<Q", data[a:b])[0]

    def two_dims(ne0: int, ne1: int) -> bytes:
        return struct.pack("<QQ", ne0, ne1)

    return [
        Case("n-dims-5", _variant(_tensor_edit(q, ne=[D_MODEL, N_HEAD * HEAD_DIM, 1, 1, 1])),
             rf"tensor '{re.escape(q)}': 5 dimensions \(must be 1 to 4\)"),
        Case("n-dims-0", _variant(_tensor_edit(q, ne=[])), rf"tensor '{re.escape(q)}': 0 dimensions"),
        Case("n-dims-huge", info("n_dims", q, struct.pack("<I", 2**32 - 1)),
             rf"tensor '{re.escape(q)}': 4294967295 dimensions \(must be 1 to 4\)"),
        Case("dimension-zero", info("shape", q, two_dims(D_MODEL, 0)),
             rf"tensor '{re.escape(q)}': dimension 1 has invalid size 0"),
        Case("dimension-negative", info("shape", q, two_dims(D_MODEL, 2**63)),
             rf"tensor '{re.escape(q)}': dimension 1 has invalid size 9223372036854775808"),
        Case("shape-product-overflows", _variant(_tensor_edit(q, ne=[2**32, 2**32, 2**8])),
             rf"tensor '{re.escape(q)}': shape \[4294967296, 4294967296, 256\] overflows 64-bit sizes"),
        Case("shape-bytes-overflow", _variant(_tensor_edit(q, ne=[2**31, 2**31, 4])),
             rf"tensor '{re.escape(q)}': shape \[2147483648, 2147483648, 4\] overflows 64-bit sizes"),
        Case("shape-past-end", info("shape", q, two_dims(D_MODEL, 2**40)),
             rf"tensor '{re.escape(q)}': .* of data past end of file"),
        Case("row-not-whole-blocks", _variant(_tensor_edit(G.TENSOR_LUT, ne=[N_LAYER * N_EXPERT * D_MODEL + 8, V])),
             r"tensor 'lut.weight': row length 72 is not a multiple of the q8_0 block size 32"),
        Case("unknown-tensor-type", info("type", q, struct.pack("<I", 3)),
             rf"tensor '{re.escape(q)}': unsupported type 3 \(supported: f32, f16, bf16, q8_0, q4_0, iq4_nl, q3_k\)"),
        Case("unknown-tensor-type-huge", info("type", q, struct.pack("<I", 2**31)),
             rf"tensor '{re.escape(q)}': unsupported type 2147483648"),
        Case("tensor-name-empty", _variant(_tensor_edit(q, name="")), r"tensor 2 has an invalid name \(0 bytes\)"),
        Case("tensor-name-length-past-end", info("name length", q, struct.pack("<Q", 1 << 62)),
             r"name of tensor 2 at offset \d+ claims 4611686018427387904 bytes but only \d+ remain in the file "
             r"\(truncated file or corrupt length\)"),
        Case("duplicate-tensor", _variant(lambda f: f.tensors.insert(2, replace(f.tensor(q)))),
             rf"duplicate tensor name '{re.escape(q)}'"),
        Case("misaligned-offset", info("offset", k, struct.pack("<Q", offset_of(k) + 4)),
             rf"tensor '{re.escape(k)}': data offset \d+ is not a multiple of the alignment 32"),
        Case("overlapping-offsets", info("offset", k, struct.pack("<Q", offset_of(q))),
             rf"tensors '{re.escape(q)}' \(offset \d+, \d+ bytes\) and '{re.escape(k)}' \(offset \d+\) overlap|"
             rf"tensors '{re.escape(k)}' \(offset \d+, \d+ bytes\) and '{re.escape(q)}' \(offset \d+\) overlap"),
        Case("overlapping-partly", info("offset", q, struct.pack("<Q", offset_of(q) + ALIGN)),
             rf"tensors '{re.escape(q)}' \(offset \d+, \d+ bytes\) and '{re.escape(G.layer_name(G.TENSOR_ATTN_K, 0))}' "
             r"\(offset \d+\) overlap"),
        Case("offset-past-end", info("offset", k, struct.pack("<Q", 1 << 40)),
             rf"tensor '{re.escape(k)}': .* of data past end of file"),
        Case("offset-wraps", info("offset", k, struct.pack("<Q", 2**64 - ALIGN)),
             rf"tensor '{re.escape(k)}': .* of data past end of file"),
        Case("alignment-zero", _variant(lambda f: f.set(G.KEY_ALIGNMENT, U32, 0)),
             r"general.alignment = 0 is not a power of two"),
        Case("alignment-not-power-of-two", _variant(lambda f: f.set(G.KEY_ALIGNMENT, U32, 48)),
             r"general.alignment = 48 is not a power of two"),
        Case("alignment-wrong-type", _variant(lambda f: f.set(G.KEY_ALIGNMENT, U64, 32)),
             r"key 'general.alignment' must be uint32, got uint64"),
        Case("alignment-disagrees-with-offsets", _variant(lambda f: f.set(G.KEY_ALIGNMENT, U32, 4096)),
             r"is not a multiple of the alignment 4096|truncated file: the data section"),
    ]


_REQUIRED = [G.KEY_ARCHITECTURE, G.KEY_VOCAB_SIZE, G.KEY_CONTEXT_LENGTH, G.KEY_EMBEDDING_LENGTH, G.KEY_BLOCK_COUNT,
             G.KEY_FEED_FORWARD_LENGTH, G.KEY_EXPERT_COUNT, G.KEY_HEAD_COUNT]


def metadata_cases() -> list[Case]:
    """Missing and wrong-typed keys, values out of range, and hyperparameters that disagree with the
    tensors' shapes."""
    c = [Case(f"missing-{_slug(k)}", _variant(lambda f, k=k: f.drop(k)), rf"missing required key '{re.escape(k)}'")
         for k in _REQUIRED]
    wrong = [  # key, type, value, message
        (G.KEY_ARCHITECTURE, U32, 7, r"key 'general.architecture' must be a string, got uint32"),
        (G.KEY_ARCHITECTURE, STR, "llama", r"general.architecture is 'llama', expected 'mole'"),
        (G.KEY_VOCAB_SIZE, STR, "264", r"key 'mole.vocab_size' must be an integer, got string"),
        (G.KEY_BLOCK_COUNT, F32, 2.0, r"key 'mole.block_count' must be an integer, got float32"),
        (G.KEY_BLOCK_COUNT, I32, -2, r"key 'mole.block_count' = -2 is out of range"),
        (G.KEY_BLOCK_COUNT, U64, 2**40, r"key 'mole.block_count' = 1099511627776 is out of range"),
        (G.KEY_HEAD_COUNT, U32, 2**31, r"key 'mole.attention.head_count' = 2147483648 is too large"),
        (G.KEY_EMBEDDING_LENGTH, U32, 0, r"key 'mole.embedding_length' must be at least 1, got 0"),
        (G.KEY_CONTEXT_LENGTH, ARR, [64], r"key 'mole.context_length' must be an integer, got array"),
        (G.KEY_RMS_EPS, U32, 1, r"key 'mole.attention.layer_norm_rms_epsilon' must be a float, got uint32"),
        (G.KEY_RMS_EPS, F32, -1.0, r"key 'mole.attention.layer_norm_rms_epsilon' must be a positive number"),
        (G.KEY_RMS_EPS, F32, float("nan"), r"layer_norm_rms_epsilon' must be a positive number, got nan"),
        (G.KEY_ROPE_FREQ_BASE, F32, float("inf"), r"key 'mole.rope.freq_base' must be a positive number, got inf"),
        (G.KEY_ROPE_SCALING_TYPE, U32, 1, r"key 'mole.rope.scaling.type' must be a string, got uint32"),
        (G.KEY_ROPE_SCALING_TYPE, STR, "yarn", r"RoPE scaling type 'yarn' is not supported"),
        (G.KEY_BOS_ID, STR, "0", r"key 'tokenizer.ggml.bos_token_id' must be an integer, got string"),
        (G.KEY_EOS_ID, U32, V, rf"key 'tokenizer.ggml.eos_token_id' = {V} is outside the vocabulary"),
        (G.KEY_TOKENIZER_MODEL, U32, 2, r"key 'tokenizer.ggml.model' must be a string, got uint32"),
        (G.KEY_TOKENIZER_MODEL, STR, "llama", r"tokenizer model 'llama' is not supported"),
        (G.KEY_TOKENIZER_PRE, STR, "qwen2", r"unsupported tokenizer.ggml.pre 'qwen2'"),
        (G.KEY_TOKENS, STR, "a b c", r"key 'tokenizer.ggml.tokens' must be an array of strings"),
        (G.KEY_MERGES, U32, 0, r"key 'tokenizer.ggml.merges' must be an array of strings"),
        (G.KEY_CHAT_TEMPLATE, U32, 1, r"key 'tokenizer.chat_template' must be a string, got uint32"),
    ]
    for key, t, v, msg in wrong:
        elem = I32 if (t == ARR and isinstance(v, list) and v and isinstance(v[0], int)) else None
        c.append(Case(f"wrong-{_slug(key)}-{_TYPE_NAMES[t]}-{_slug(str(v))}",
                      _variant(lambda f, key=key, t=t, v=v, elem=elem: f.set(key, t, v, elem)), msg))
    c.append(Case("wrong-token-type-elements", _variant(lambda f: f.set(G.KEY_TOKEN_TYPE, ARR, ["1"] * len(TOKENS),
                                                                         STR)),
                  r"key 'tokenizer.ggml.token_type' must be an integer array with one entry per token"))
    c.append(Case("wrong-token-type-count", _variant(lambda f: f.set(G.KEY_TOKEN_TYPE, ARR, [1] * 5, I32)),
                  r"key 'tokenizer.ggml.token_type' must be an integer array with one entry per token \(261\)"))
    # Hyperparameters that disagree with the tensors.
    disagree = [
        (G.KEY_BLOCK_COUNT, 3, r"missing tensor 'blk\.2\.attn_norm\.weight'"),
        (G.KEY_BLOCK_COUNT, 1, rf"tensor 'lut\.weight': expected shape \[32, {V}\], got \[64, {V}\]"),
        (G.KEY_EMBEDDING_LENGTH, 32, rf"tensor 'token_embd\.weight': expected shape \[32, {V}\], got \[16, {V}\]"),
        (G.KEY_VOCAB_SIZE, V + 1, rf"tensor 'token_embd\.weight': expected shape \[16, {V + 1}\], got \[16, {V}\]"),
        (G.KEY_VOCAB_SIZE, 100, r"key 'tokenizer\.ggml\.bos_token_id' = 260 is outside the vocabulary \(100 tokens\)"),
        (G.KEY_FEED_FORWARD_LENGTH, 64, r"tensor 'blk\.0\.ffn_up\.weight': expected shape \[16, 64\], got \[16, 32\]"),
        (G.KEY_HEAD_COUNT_KV, 2, r"tensor 'blk\.0\.attn_k\.weight': expected shape \[16, 16\], got \[16, 8\]"),
        (G.KEY_HEAD_COUNT, 4, r"tensor 'blk\.0\.attn_k\.weight': expected shape \[16, 4\], got \[16, 8\]"),
        (G.KEY_HEAD_COUNT, 3, r"embedding_length 16 is not a multiple of head_count 3"),
        (G.KEY_HEAD_COUNT, 16, r"head dimension 1 is odd"),
        (G.KEY_HEAD_COUNT_KV, 0, r"key 'mole.attention.head_count_kv' must be at least 1, got 0"),
        (G.KEY_EXPERT_COUNT, 3, r"tensor 'blk\.0\.ffn_gate_inp\.weight': expected shape \[16, 3\], got \[16, 2\]"),
        (G.KEY_EXPERT_COUNT, 0, r"unexpected tensor 'blk\.0\.ffn_gate_inp\.weight' \(mole\.expert_count is 0"),
        (G.KEY_EXPERT_COUNT, 2**20, r"block_count x expert_count x embedding_length is too large|expected shape"),
    ]
    for key, v, msg in disagree:
        c.append(Case(f"disagree-{_slug(key)}-{v}", _variant(lambda f, key=key, v=v: f.set(key, U32, v)), msg))
    c.append(Case("disagree-norm-type-f16", _variant(_tensor_edit(
        G.TENSOR_OUTPUT_NORM, type=T_F16, data=np.ones(D_MODEL, "<f2").tobytes())),
        r"tensor 'output_norm\.weight': type f16 is not allowed here \(allowed: f32\)"))
    c.append(Case("disagree-tensor-rank", _variant(_tensor_edit(G.TENSOR_OUTPUT_NORM, ne=[D_MODEL // 2, 2])),
                  r"tensor 'output_norm\.weight': expected shape \[16\], got \[8, 2\]"))
    c.append(Case("missing-tensor-output", _variant(lambda f: f.tensors.remove(f.tensor(G.TENSOR_OUTPUT))),
                  r"missing tensor 'output\.weight'"))
    c.append(Case("extra-tensor", _variant(lambda f: f.tensors.insert(1, Tensor("blk.0.ffn_gate.weight", [16], T_F32,
                                                                                bytes(64)))),
                  r"unexpected tensor 'blk\.0\.ffn_gate\.weight'"))
    return c


def lut_cases() -> list[Case]:
    rows = N_LAYER * N_EXPERT * D_MODEL

    def lut_rows(n):
        def edit(f):
            t = f.tensor(G.TENSOR_LUT)
            t.ne = [rows, n]
            t.data = _q8_0(np.zeros((n, rows)))
        return edit

    def lut_first(f):
        lut = f.tensor(G.TENSOR_LUT)
        f.tensors.remove(lut)
        f.tensors.insert(0, lut)

    def lut_placed_first(f):   # still last in the tensor table, but its data lies before the others'
        lut = f.tensor(G.TENSOR_LUT)
        lut.offset = 0
        at = _pad(len(lut.data), ALIGN)
        for t in f.tensors[:-1]:
            t.offset = at
            at = _pad(at + len(t.data), ALIGN)

    return [
        Case("lut-rows-fewer-than-vocab", _variant(lut_rows(V - 1)),
             rf"tensor 'lut\.weight': expected shape \[{rows}, {V}\], got \[{rows}, {V - 1}\]"),
        Case("lut-rows-more-than-vocab", _variant(lut_rows(V + 1)),
             rf"tensor 'lut\.weight': expected shape \[{rows}, {V}\], got \[{rows}, {V + 1}\]"),
        Case("lut-row-length-wrong", _variant(_tensor_edit(G.TENSOR_LUT, ne=[rows // 2, V],
                                                           data=_q8_0(np.zeros((V, rows // 2))))),
             rf"tensor 'lut\.weight': expected shape \[{rows}, {V}\], got \[{rows // 2}, {V}\]"),
        Case("lut-not-last-in-table", _variant(lut_first), r"tensor '.*' lies after 'lut\.weight'; the LUT must be "
             r"the last tensor in the file"),
        Case("lut-data-not-last", _variant(lut_placed_first), r"lies after 'lut\.weight'"),
        Case("lut-missing", _variant(lambda f: f.tensors.remove(f.tensor(G.TENSOR_LUT))),
             r"missing tensor 'lut\.weight'"),
        Case("router-wrong-type", _variant(_tensor_edit(G.layer_name(G.TENSOR_ROUTER, 1), type=T_F16,
                                                        data=bytes(2 * D_MODEL * N_EXPERT))),
             r"tensor 'blk\.1\.ffn_gate_inp\.weight': type f16 is not allowed here \(allowed: f32\)"),
    ]


def tokenizer_cases() -> list[Case]:
    bad_merge = [f"{BYTES[32]} t", "h zz"]
    return [
        Case("merge-names-unknown-token", _variant(lambda f: f.set(G.KEY_MERGES, ARR, bad_merge, STR)),
             r".gguf: tokenizer: merge 1 'h zz' names 'zz', which is not in the vocabulary"),
        Case("merge-result-unknown", _variant(lambda f: f.set(G.KEY_MERGES, ARR, ["h e", "e h"], STR)),
             r".gguf: tokenizer: merge 1 'e h' makes 'eh', which is not in the vocabulary"),
        Case("merge-not-a-pair", _variant(lambda f: f.set(G.KEY_MERGES, ARR, ["he"], STR)),
             r".gguf: tokenizer: merge 0 'he' is not 'left right'"),
        Case("merge-three-parts", _variant(lambda f: f.set(G.KEY_MERGES, ARR, ["h e x"], STR)),
             r".gguf: tokenizer: merge 0 'h e x' is not 'left right'"),
        Case("duplicate-token", _variant(lambda f: f.set(G.KEY_TOKENS, ARR, TOKENS[:-2] + ["he", EOT], STR)),
             r".gguf: tokenizer: duplicate token 'he' \(ids 257 and 259\)"),
        Case("empty-token", _variant(lambda f: f.set(G.KEY_TOKENS, ARR, TOKENS[:-2] + ["", EOT], STR)),
             r".gguf: tokenizer: token 259 is an empty string"),
        Case("token-outside-byte-alphabet", _variant(lambda f: f.set(G.KEY_TOKENS, ARR, TOKENS[:-2] + ["\u4e00", EOT],
                                                                     STR)),
             r".gguf: tokenizer: token 259 .* has U\+4E00, which is not in the byte-level alphabet"),
        Case("token-invalid-utf8", _invalid_utf8_token(), r".gguf: tokenizer: token 259 is not valid UTF-8"),
        Case("token-type-out-of-range", _variant(lambda f: f.set(G.KEY_TOKEN_TYPE, ARR, [1] * (len(TOKENS) - 1) + [9],
                                                                 I32)),
             r".gguf: tokenizer: token 260 has token_type 9 \(expected 1\.\.6\)"),
        Case("tokenizer-more-tokens-than-vocab",
             _variant(lambda f: (f.set(G.KEY_TOKENS, ARR, TOKENS + [f"x{i}" for i in range(V)], STR),
                                 f.set(G.KEY_TOKEN_TYPE, ARR, [1] * (len(TOKENS) - 1) + [3] + [4] * V, I32))),
             rf"the tokenizer has {len(TOKENS) + V} tokens, more than vocab_size {V}"),
        Case("empty-vocabulary", _variant(lambda f: (f.set(G.KEY_TOKENS, ARR, [], STR), f.drop(G.KEY_TOKEN_TYPE),
                                                     f.drop(G.KEY_MERGES), f.drop(G.KEY_BOS_ID),
                                                     f.drop(G.KEY_EOS_ID))),
             r"the vocabulary \(tokenizer\.ggml\.tokens\) is empty"),
        Case("special-token-past-tokenizer", _variant(lambda f: f.set(G.KEY_BOS_ID, U32, len(TOKENS) + 1)),
             rf"special token id {len(TOKENS) + 1} is past the tokenizer's {len(TOKENS)} tokens"),
    ]


def _invalid_utf8_token() -> bytes:
    data, sections = base_model().build()
    toks = next(i for i, k in enumerate(base_model().kvs) if k.key == G.KEY_TOKENS)
    _, a, _ = next(s for s in sections if s[0] == f"kv {toks} '{G.KEY_TOKENS}' value elements")
    at = a + sum(8 + len(t.encode()) for t in TOKENS[:259])
    assert data[at:at + 8] == struct.pack("<Q", 2) and data[at + 8:at + 10] == b"in"
    return data[:at + 8] + b"\xc3\x28" + data[at + 10:]   # "in" -> C3 28: a lead byte without its continuation


def chat_cases() -> list[Case]:
    """Files that load but whose chat template does not parse or render: Model.chat raises FormatError."""
    return [
        Case("chat-template-syntax-error", _variant(lambda f: f.set(G.KEY_CHAT_TEMPLATE, STR,
                                                                    "{% for m in messages %}{{ m.content }}")),
             r"tokenizer\.chat_template.*(line 1).*(endfor|end of template)", stage="chat"),
        Case("chat-template-unknown-tag", _variant(lambda f: f.set(G.KEY_CHAT_TEMPLATE, STR, "{% frobnicate %}")),
             r"tokenizer\.chat_template.*line 1.*frobnicate", stage="chat"),
        Case("chat-template-bad-expression", _variant(lambda f: f.set(G.KEY_CHAT_TEMPLATE, STR, "{{ messages[ }}")),
             r"tokenizer\.chat_template.*line 1", stage="chat"),
        Case("chat-template-unknown-filter", _variant(lambda f: f.set(G.KEY_CHAT_TEMPLATE, STR,
                                                                      "{{ messages | frobnicate }}")),
             r"tokenizer\.chat_template.*line 1.*No filter named 'frobnicate'", stage="chat"),
        Case("chat-template-render-error", _variant(lambda f: f.set(G.KEY_CHAT_TEMPLATE, STR,
                                                                    "{{ messages[0].content + 1 }}")),
             r"tokenizer\.chat_template.*failed to render: TypeError", stage="chat"),
    ]


def cases() -> list[Case]:
    """Every case of the corpus, names unique."""
    out = truncation_cases() + header_cases() + tensor_cases() + metadata_cases() + lut_cases() + \
        tokenizer_cases() + chat_cases()
    names = [c.name for c in out]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    return out


def write_corpus(directory) -> dict[str, pathlib.Path]:
    """Writes <case>.gguf for every case, valid.gguf (the base file, which loads) and cases.json
    ({case: {"message", "stage"}}) into directory; returns {case: path}, "valid" included."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"valid": d / "valid.gguf"}
    paths["valid"].write_bytes(base_model().build()[0])
    index = {}
    for c in cases():
        p = d / f"{c.name}.gguf"
        p.write_bytes(c.data)
        paths[c.name] = p
        index[c.name] = {"message": c.message, "stage": c.stage}
    (d / "cases.json").write_text(json.dumps(index, indent=1) + "\n")
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/malformed.py DIR")
    n = len(write_corpus(sys.argv[1]))
    print(f"wrote {n} files to {sys.argv[1]}")
