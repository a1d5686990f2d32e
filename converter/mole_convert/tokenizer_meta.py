"""tokenizer.json (HF byte-level BPE) -> the tokenizer.ggml.* GGUF metadata, llama.cpp's conventions.

Contract with the runtime's C++ tokenizer (runtime/src/tokenizer.h reads exactly these keys):
- tokenizer.ggml.model = "gpt2" (byte-level BPE). Anything else in tokenizer.json is rejected.
- tokenizer.ggml.pre = "gpt-neox" when the normalizer is NFC (GPT-NeoX-20B), "default" when there is
  no normalizer (plain GPT-2 style, what `mole train` writes). Both mean: ByteLevel pre-tokenizer with
  the GPT-2 split regex and no prefix space. The reader derives normalization from `pre`; no other key.
- tokenizer.ggml.tokens: one string per id for ids 0..V-1 (V = config vocab_size): the vocab entries
  exactly as in tokenizer.json (GPT-2 bytes_to_unicode alphabet, e.g. "Ġthe"); added tokens with their
  literal content; ids the tokenizer does not define (holes, and the padded vocab past its size) get
  the unique filler "<|pad_{id}|>".
- tokenizer.ggml.token_type (int32): 1 normal, 3 control (added token with special=true, matched in
  text only when parse_special is on), 4 user-defined (added token with special=false, always matched
  before BPE, longest first), 5 unused (fillers).
- tokenizer.ggml.merges: "left right" strings in priority order (rank = index).
- tokenizer.ggml.bos_token_id / eos_token_id (u32, written when known), padding_token_id (optional):
  config.json's ids win; when one is null, tokenizer_config.json's bos_token/eos_token/pad_token
  content is looked up; bos/eos finally fall back to "<|endoftext|>" when the tokenizer has it.
- tokenizer.chat_template: the chat template string when tokenizer_config.json has one.
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field

from .errors import ConvertError

TOKEN_NORMAL = 1
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5


class TokenizerError(ConvertError, ValueError):
    """tokenizer.json is missing, malformed, or not a byte-level BPE the runtime can run."""


@dataclass
class TokenizerMeta:
    pre: str                                   # "gpt-neox" | "default"
    tokens: list[str]                          # [V]
    token_types: list[int]                     # [V]
    merges: list[str]                          # "left right", priority order
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    padding_token_id: int | None = None
    chat_template: str | None = None
    model: str = "gpt2"
    notes: list[str] = field(default_factory=list)   # what was padded or guessed, for the user


def filler_token(token_id: int) -> str:
    return f"<|pad_{token_id}|>"


def _pre_name(tok: dict, where: str) -> str:
    """Check the tokenizer runs as GPT-2 byte-level BPE; name its pre-tokenizer flavour."""
    model = tok.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else type(model).__name__
        raise TokenizerError(f"{where}: model type {kind!r} is not supported; only byte-level BPE is")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise TokenizerError(f"{where}: BPE option {key}={model[key]!r} is not supported by the runtime")
    if model.get("byte_fallback"):
        raise TokenizerError(f"{where}: byte_fallback BPE (sentencepiece style) is not byte-level BPE; not supported")
    pre = tok.get("pre_tokenizer")
    if not isinstance(pre, dict) or pre.get("type") != "ByteLevel":
        kind = pre.get("type") if isinstance(pre, dict) else pre
        raise TokenizerError(f"{where}: pre_tokenizer {kind!r} is not supported; only a ByteLevel pre-tokenizer "
                             "(GPT-2 byte-level BPE) is")
    if pre.get("add_prefix_space", False):
        raise TokenizerError(f"{where}: ByteLevel add_prefix_space=true is not supported by the runtime")
    if not pre.get("use_regex", True):
        raise TokenizerError(f"{where}: ByteLevel use_regex=false is not supported; the runtime splits with "
                             "the GPT-2 regex")
    norm = tok.get("normalizer")
    if norm is None:
        return "default"
    if isinstance(norm, dict) and norm.get("type") == "NFC":
        return "gpt-neox"
    kind = norm.get("type") if isinstance(norm, dict) else norm
    raise TokenizerError(f"{where}: normalizer {kind!r} is not supported; only none or NFC")


def _merge_strings(merges, where: str) -> list[str]:
    out = []
    for i, m in enumerate(merges):
        if isinstance(m, str):
            parts = m.split(" ")
        elif isinstance(m, (list, tuple)):
            parts = list(m)
        else:
            parts = []
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise TokenizerError(f"{where}: merge #{i} {m!r} is not a pair of tokens")
        out.append(f"{parts[0]} {parts[1]}")
    return out


def _special_content(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def build_tokenizer_meta(tokenizer_path, vocab_size: int, *, bos_token_id: int | None = None,
                         eos_token_id: int | None = None, pad_token_id: int | None = None,
                         chat_template: str | None = None) -> TokenizerMeta:
    """Read tokenizer.json (and tokenizer_config.json beside it) into GGUF tokenizer metadata for a
    model whose embedding has vocab_size rows. Ids given here (from config.json) take precedence."""
    path = pathlib.Path(tokenizer_path)
    where = str(path)
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{where}: tokenizer file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{where}: cannot read tokenizer JSON: {e}") from None
    if not isinstance(tok, dict):
        raise TokenizerError(f"{where}: expected a JSON object")
    pre = _pre_name(tok, where)
    vocab = tok["model"].get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError(f"{where}: model.vocab is missing or empty")
    merges = _merge_strings(tok["model"].get("merges") or [], where)

    by_id: dict[int, tuple[str, int]] = {}
    for text, i in vocab.items():
        if not isinstance(i, int) or i < 0:
            raise TokenizerError(f"{where}: vocab entry {text!r} has invalid id {i!r}")
        if i in by_id:
            raise TokenizerError(f"{where}: id {i} is used by both {by_id[i][0]!r} and {text!r}")
        by_id[i] = (text, TOKEN_NORMAL)
    for a in tok.get("added_tokens") or []:
        i, content = a.get("id"), a.get("content")
        if not isinstance(i, int) or i < 0 or not isinstance(content, str) or not content:
            raise TokenizerError(f"{where}: malformed added token {a!r}")
        if i in by_id and by_id[i][0] != content:
            raise TokenizerError(f"{where}: added token {content!r} reuses id {i} of vocab entry {by_id[i][0]!r}")
        by_id[i] = (content, TOKEN_CONTROL if a.get("special", False) else TOKEN_USER_DEFINED)

    size = max(by_id) + 1
    if size > vocab_size:
        raise TokenizerError(f"{where}: the tokenizer defines id {size - 1} but the model's vocab_size is "
                             f"{vocab_size}; the embedding has no row for it")
    seen = {text for text, _ in by_id.values()}
    tokens, types, notes = [], [], []
    holes = 0
    for i in range(vocab_size):
        if i in by_id:
            text, kind = by_id[i]
        else:
            text, kind = filler_token(i), TOKEN_UNUSED
            if text in seen:
                raise TokenizerError(f"{where}: filler {text!r} for id {i} collides with a real token")
            holes += i < size
        tokens.append(text)
        types.append(kind)
    if vocab_size > size:
        notes.append(f"vocab padded from {size} to {vocab_size} with unused filler tokens")
    if holes:
        notes.append(f"{holes} ids inside the tokenizer's range were undefined; filled with unused tokens")

    content_to_id = {text: i for i, (text, _) in by_id.items()}
    cfg_path = path.with_name("tokenizer_config.json")
    tcfg = {}
    if cfg_path.exists():
        try:
            tcfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"{cfg_path}: cannot read tokenizer config JSON: {e}") from None
        if not isinstance(tcfg, dict):
            raise TokenizerError(f"{cfg_path}: expected a JSON object")

    def lookup(given, key, fallback):
        if given is not None:
            return given
        content = _special_content(tcfg.get(key))
        if content is not None and content in content_to_id:
            return content_to_id[content]
        return content_to_id.get(fallback) if fallback else None

    bos = lookup(bos_token_id, "bos_token", "<|endoftext|>")
    eos = lookup(eos_token_id, "eos_token", "<|endoftext|>")
    pad = lookup(pad_token_id, "pad_token", None)
    for name, v in (("bos_token_id", bos), ("eos_token_id", eos), ("pad_token_id", pad)):
        if v is not None and not 0 <= v < vocab_size:
            raise TokenizerError(f"{name} {v} is outside the vocabulary [0, {vocab_size})")
    if chat_template is None:
        ct = tcfg.get("chat_template")
        chat_template = ct if isinstance(ct, str) and ct else None
    return TokenizerMeta(pre=pre, tokens=tokens, token_types=types, merges=merges, bos_token_id=bos,
                         eos_token_id=eos, padding_token_id=pad, chat_template=chat_template, notes=notes)
