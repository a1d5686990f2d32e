"""Reading and writing checkpoints in the authors' HF layout (config.json + safetensors or .bin).
Reads are lazy and per tensor: a multi-GB checkpoint streams one tensor at a time, nothing is kept
mapped, so memory stays bounded by the largest tensor."""
from __future__ import annotations

import json
import os
import pathlib
import struct
import tempfile

import torch

from . import checkpoint_names as C
from .config import MoleConfig
from .errors import CheckpointError

# safetensors dtype code -> (torch dtype, bytes per element)
_ST_DTYPES = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
              "F64": (torch.float64, 8)}
_MAX_HEADER = 256 << 20  # a safetensors header larger than this is not a checkpoint we can trust


def expected_shapes(config: MoleConfig, form: str) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of this config and form holds, with its shape ([out, in] for matrices)."""
    return {t.name: t.shape for t in C.tensors(config, form)}


def _ignorable(name: str) -> bool:
    """Buffers older HF Llama saves carry that are derived from the config (RoPE inverse frequencies)."""
    return name.endswith("rotary_emb.inv_freq")


def _read_safetensors_header(path: pathlib.Path) -> dict[str, tuple]:
    """name -> (dtype code, shape, absolute byte offset, byte length); every field checked against the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: too short for a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise CheckpointError(f"{path}: safetensors header length {n} exceeds the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = info["dtype"], [int(x) for x in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor '{name}': malformed safetensors entry {info!r}") from None
        if code not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor '{name}': unsupported dtype {code} "
                                  f"(supported: {', '.join(_ST_DTYPES)})")
        if any(x < 0 for x in shape):
            raise CheckpointError(f"{path}: tensor '{name}': negative dimension in shape {shape}")
        numel = 1
        for x in shape:
            numel *= x
        nbytes = numel * _ST_DTYPES[code][1]
        if not (isinstance(begin, int) and isinstance(end, int)) or begin < 0 or end - begin != nbytes \
                or base + end > size:
            raise CheckpointError(f"{path}: tensor '{name}': data offsets [{begin}, {end}] do not hold "
                                  f"{shape} {code} ({nbytes} bytes) inside the file ({size} bytes)")
        out[name] = (code, tuple(shape), base + begin, nbytes)
    return out


def _read_safetensors_tensor(path: pathlib.Path, entry: tuple) -> torch.Tensor:
    """One tensor by a plain positioned read into a fresh buffer: no mapping outlives the call."""
    code, shape, offset, nbytes = entry
    t = torch.empty(shape, dtype=_ST_DTYPES[code][0])
    buf = t.view(-1).view(torch.uint8).numpy() if t.numel() else None
    if buf is not None:
        with open(path, "rb") as f:
            f.seek(offset)
            got = f.readinto(buf)
        if got != nbytes:
            raise CheckpointError(f"{path}: short read at offset {offset}: {got} of {nbytes} bytes")
    return t


def _shape_of(rec) -> tuple[int, ...]:
    return rec[2][1] if rec[0] == "st" else rec[2]


def _torch_load(path: pathlib.Path) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:   # the legacy (non-zip) format cannot be mapped
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


class Checkpoint:
    """A validated checkpoint directory; tensors are read on demand with get()."""

    def __init__(self, directory: pathlib.Path, config: MoleConfig, form: str, index: dict[str, tuple],
                 tokenizer_path: pathlib.Path | None, chat_template: str | None):
        self.directory = directory
        self.config = config
        self.form = form
        self.tokenizer_path = tokenizer_path
        self.chat_template = chat_template
        self._index = index  # name -> ("st", path, entry) | ("bin", path, shape, dtype)

    def names(self) -> list[str]:
        return list(self._index)

    def shape(self, name: str) -> tuple[int, ...]:
        return _shape_of(self._lookup(name))

    def dtype(self, name: str) -> torch.dtype:
        """The tensor's dtype as stored in the file."""
        rec = self._lookup(name)
        return _ST_DTYPES[rec[2][0]][0] if rec[0] == "st" else rec[3]

    def get(self, name: str, dtype=torch.float32) -> torch.Tensor:
        """Read one tensor from disk (every call), converted to dtype (None keeps the stored dtype)."""
        rec = self._lookup(name)
        if rec[0] == "st":
            t = _read_safetensors_tensor(rec[1], rec[2])
        else:
            sd = _torch_load(rec[1])
            t = sd[name].clone()  # copy out of the mapping so nothing keeps the file mapped
            del sd
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    def get_rows(self, name: str, start: int, stop: int, dtype=torch.float32) -> torch.Tensor:
        """Rows [start, stop) of a 2-D tensor (e.g. moe_table [V, L*N*d]) -> [stop-start, n], reading only those
        bytes from safetensors (.bin: the rows are copied out of a mapping of the file)."""
        rec = self._lookup(name)
        shape = _shape_of(rec)
        if len(shape) != 2 or not 0 <= start <= stop <= shape[0]:
            raise ValueError(f"tensor '{name}' {list(shape)}: bad row range [{start}, {stop})")
        if rec[0] == "st":
            code, _, offset, _ = rec[2]
            row = shape[1] * _ST_DTYPES[code][1]
            t = _read_safetensors_tensor(rec[1], (code, (stop - start, shape[1]), offset + start * row,
                                                  (stop - start) * row))
        else:
            sd = _torch_load(rec[1])
            t = sd[name][start:stop].clone()
            del sd
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    def _lookup(self, name):
        """The index record: ("st", path, (dtype code, shape, absolute offset, nbytes)) or
        ("bin", path, shape, torch dtype)."""
        try:
            return self._index[name]
        except KeyError:
            raise CheckpointError(f"checkpoint {self.directory} has no tensor '{name}'") from None

    def __repr__(self):
        c = self.config
        return (f"Checkpoint({str(self.directory)!r}, form={self.form!r}, V={c.vocab_size}, d={c.hidden_size}, "
                f"L={c.num_hidden_layers}, N={c.num_experts})")


def _index_tensors(directory: pathlib.Path) -> dict[str, tuple]:
    """Find the weight files and list every tensor: name -> where and what it is (nothing is loaded)."""
    st_index, bin_index = directory / "model.safetensors.index.json", directory / "pytorch_model.bin.index.json"
    if (directory / "model.safetensors").is_file():
        files = {directory / "model.safetensors": None}
    elif st_index.is_file() or bin_index.is_file():
        idx_path = st_index if st_index.is_file() else bin_index
        try:
            weight_map = json.loads(idx_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{idx_path}: not a valid shard index ({e})") from None
        files = {}
        for name, fname in weight_map.items():
            files.setdefault(directory / fname, set()).add(name)
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{idx_path}: shard file '{f.name}' does not exist")
    elif (directory / "pytorch_model.bin").is_file():
        files = {directory / "pytorch_model.bin": None}
    else:
        raise CheckpointError(f"{directory}: no weights found (looked for model.safetensors, "
                              "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json)")
    index = {}
    for path, listed in files.items():
        if path.suffix == ".safetensors":
            found = {n: ("st", path, e) for n, e in _read_safetensors_header(path).items()}
        else:
            sd = _torch_load(path)
            found = {n: ("bin", path, tuple(t.shape), t.dtype) for n, t in sd.items() if torch.is_tensor(t)}
            del sd
        if listed is not None:
            missing = listed - found.keys()
            if missing:
                raise CheckpointError(f"shard '{path.name}' lacks tensor '{sorted(missing)[0]}' its index lists")
        for n, rec in found.items():
            if n in index:
                raise CheckpointError(f"tensor '{n}' appears in more than one weight file")
            index[n] = rec
    return {n: r for n, r in index.items() if not _ignorable(n)}


def _detect_form(config: MoleConfig, names) -> str:
    if config.num_experts == 0:
        return "dense"
    has_table = C.MOE_TABLE in names
    has_experts = any((m := C.match(n)) is not None and m[0] in C.EXPERT_TENSORS for n in names)
    if has_table and has_experts:
        raise CheckpointError(f"checkpoint holds both experts (training form) and '{C.MOE_TABLE}' "
                              "(re-parameterized form); keep one")
    if has_table:
        return "reparam"
    if has_experts:
        return "training"
    raise CheckpointError(f"config says num_experts={config.num_experts} but the checkpoint has neither "
                          f"expert tensors nor '{C.MOE_TABLE}'")


def load_checkpoint(directory) -> Checkpoint:
    """Open and validate a checkpoint directory (authors' HF layout); no tensor data is read."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: no config.json")
    try:
        cfg_dict = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON: {e}") from None
    config = MoleConfig.from_hf_dict(cfg_dict)
    index = _index_tensors(directory)
    form = _detect_form(config, index)
    expected = expected_shapes(config, form)
    for name, shape in expected.items():
        if name not in index:
            raise CheckpointError(f"tensor '{name}' is missing (expected shape {list(shape)}, form {form})")
        rec = index[name]
        got = _shape_of(rec)
        if tuple(got) != shape:
            raise CheckpointError(f"tensor '{name}': expected shape {list(shape)}, got {list(got)}")
    unknown = [n for n in index if n not in expected]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise CheckpointError(f"unknown tensor '{unknown[0]}' (shape {list(_shape_of(index[unknown[0]]))})"
                              f" for a {form} checkpoint{more}")
    tok = directory / "tokenizer.json"
    return Checkpoint(directory, config, form, {n: index[n] for n in expected},
                      tok if tok.is_file() else None, _read_chat_template(directory))


def _read_chat_template(directory: pathlib.Path) -> str | None:
    tc = directory / "tokenizer_config.json"
    if tc.is_file():
        try:
            tmpl = json.loads(tc.read_text()).get("chat_template")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{tc}: not a valid JSON object: {e}") from None
        if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, ...]
            tmpl = next((t.get("template") for t in tmpl if t.get("name") == "default"), None)
        if isinstance(tmpl, str):
            return tmpl
    jinja = directory / "chat_template.jinja"
    return jinja.read_text() if jinja.is_file() else None


def _token_content(tokenizer_json: str, token_id: int | None) -> str | None:
    if token_id is None:
        return None
    try:
        tok = json.loads(tokenizer_json)
    except json.JSONDecodeError:
        return None
    for t in tok.get("added_tokens", []):
        if t.get("id") == token_id:
            return t.get("content")
    vocab = tok.get("model", {}).get("vocab", {})
    return next((k for k, v in vocab.items() if v == token_id), None)


def _atomic_write(path: pathlib.Path, write) -> None:
    """write(tmp_path) then rename over path: a reader never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(pathlib.Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state_dict_or_model, config: MoleConfig, directory, tokenizer_json=None,
                    chat_template: str | None = None, dtype=torch.float32) -> pathlib.Path:
    """Write the authors' HF layout: config.json, model.safetensors (+ tokenizer.json, tokenizer_config.json).
    tokenizer_json: the JSON text, or a path to a tokenizer.json. The tensors are validated like load_checkpoint."""
    from safetensors.torch import save_file

    sd = state_dict_or_model.state_dict() if isinstance(state_dict_or_model, torch.nn.Module) else state_dict_or_model
    form = _detect_form(config, sd)
    expected = expected_shapes(config, form)
    for name, shape in expected.items():
        if name not in sd:
            raise CheckpointError(f"tensor '{name}' is missing (expected shape {list(shape)}, form {form})")
        if tuple(sd[name].shape) != shape:
            raise CheckpointError(f"tensor '{name}': expected shape {list(shape)}, got {list(sd[name].shape)}")
    unknown = [n for n in sd if n not in expected]
    if unknown:
        raise CheckpointError(f"unknown tensor '{unknown[0]}' for a {form} checkpoint")
    tensors = {n: sd[n].detach().to("cpu", dtype).contiguous().clone() for n in expected}

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok_text = None
    if tokenizer_json is not None:
        if isinstance(tokenizer_json, str) and tokenizer_json.lstrip().startswith("{"):
            tok_text = tokenizer_json
        else:
            tok_text = pathlib.Path(tokenizer_json).read_text()
    _atomic_write(directory / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    cfg = config.to_hf_dict()
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    _atomic_write(directory / "config.json", lambda p: p.write_text(json.dumps(cfg, indent=2) + "\n"))
    if tok_text is not None:
        _atomic_write(directory / "tokenizer.json", lambda p: p.write_text(tok_text))
    if tok_text is not None or chat_template is not None:
        tc = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config.max_position_embeddings,
              "add_bos_token": False, "add_eos_token": False}
        for key, tid in (("bos_token", config.bos_token_id), ("eos_token", config.eos_token_id),
                         ("pad_token", config.pad_token_id)):
            content = _token_content(tok_text, tid) if tok_text else None
            if content is not None:
                tc[key] = content
        if chat_template is not None:
            tc["chat_template"] = chat_template
        _atomic_write(directory / "tokenizer_config.json", lambda p: p.write_text(json.dumps(tc, indent=2) + "\n"))
    return directory

