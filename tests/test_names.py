"""The name tables agree: runtime/src/names.h and python/mole/gguf_names.py hold the same GGUF key and tensor
names, and the converter's checkpoint-name table matches DESIGN.md's list and maps onto every GGUF tensor."""
import re
from pathlib import Path

import pytest

from mole import gguf_names as G

REPO = Path(__file__).resolve().parent.parent
NAMES_H = REPO / "runtime" / "src" / "names.h"

# `inline constexpr <type> NAME = <value>;` (the value a string literal or an unsigned integer)
_CONSTANT = re.compile(r"^\s*inline\s+constexpr\s+[^=;]*?\b([A-Z][A-Z0-9_]*)\s*=\s*([^;]+);", re.M)


def cpp_names(text: str) -> dict[str, str | int]:
    """NAME -> value of every constant in names.h; an unreadable value or a repeated name fails the test."""
    out = {}
    for name, raw in _CONSTANT.findall(text):
        raw = raw.strip()
        if m := re.fullmatch(r'"((?:[^"\\]|\\.)*)"', raw):
            value = m.group(1)
        elif m := re.fullmatch(r"(\d+)[uU]?", raw):
            value = int(m.group(1))
        else:
            pytest.fail(f"names.h: {name} = {raw}: neither a string literal nor an integer (extend this parser)")
        assert name not in out, f"names.h defines {name} twice"
        out[name] = value
    return out


def python_names() -> dict[str, str | int]:
    """NAME -> value of every str/int constant of mole.gguf_names."""
    return {k: v for k, v in vars(G).items()
            if k.isupper() and isinstance(v, (str, int)) and not isinstance(v, bool)}


def mismatches(cpp: dict, py: dict) -> list[str]:
    out = [f"{k} only in names.h ({cpp[k]!r})" for k in sorted(cpp.keys() - py.keys())]
    out += [f"{k} only in gguf_names.py ({py[k]!r})" for k in sorted(py.keys() - cpp.keys())]
    out += [f"{k}: names.h says {cpp[k]!r}, gguf_names.py says {py[k]!r}"
            for k in sorted(cpp.keys() & py.keys()) if cpp[k] != py[k]]
    return out


def test_cpp_and_python_gguf_names_agree():
    cpp = cpp_names(NAMES_H.read_text())
    assert len(cpp) >= 30, f"names.h: only {len(cpp)} constants parsed; has its syntax changed?"
    bad = mismatches(cpp, python_names())
    assert not bad, "runtime/src/names.h and python/mole/gguf_names.py disagree:\n  " + "\n  ".join(bad)


def test_the_comparison_sees_each_kind_of_difference():
    text = NAMES_H.read_text()
    cpp = cpp_names(text)
    py = python_names()
    changed = cpp_names(text.replace('"mole.block_count"', '"mole.layer_count"'))
    assert mismatches(changed, py) == ["KEY_BLOCK_COUNT: names.h says 'mole.layer_count', "
                                       "gguf_names.py says 'mole.block_count'"]
    assert mismatches({k: v for k, v in cpp.items() if k != "TENSOR_LUT"}, py) == \
        ["TENSOR_LUT only in gguf_names.py ('lut.weight')"]
    assert mismatches(dict(cpp, KEY_NEW="mole.new"), py) == ["KEY_NEW only in names.h ('mole.new')"]
    assert cpp["ALIGNMENT"] == 4096 and cpp["ARCH"] == "mole"


# ---- checkpoint names ------------------------------------------------------------------------

def _design_checkpoint_names() -> set[str]:
    """The checkpoint names DESIGN.md lists (training form plus moe_table), as {i}/{j} templates."""
    text = (REPO / "docs" / "DESIGN.md").read_text()
    para = text[text.index("Official HF checkpoint names"):text.index("`config.json` is a LlamaConfig")]
    names = set()
    for item in re.findall(r"`([^`]+)`", para):
        item = item.split(" [")[0].strip()
        if not item.endswith(".weight"):
            continue                      # "experts.*", "expert_layernorm.*": wildcards, not names
        m = re.search(r"\{([^}]+)\}", item)
        alts = m.group(1).split(",") if m else [None]
        for a in alts:
            n = item if a is None else item[:m.start()] + a + item[m.end():]
            names.add(re.sub(r"\.j\.", ".{j}.", re.sub(r"\.i\.", ".{i}.", n)))
    return names


def test_checkpoint_table_matches_design_md():
    pytest.importorskip("torch")
    from mole_convert import checkpoint_names as C

    doc = _design_checkpoint_names()
    table = {t.name for t in C.TABLE}
    assert len(doc) >= 15, f"DESIGN.md's checkpoint-name paragraph parsed to {sorted(doc)}"
    assert table == doc, (f"only in checkpoint_names.py: {sorted(table - doc)}; "
                          f"only in docs/DESIGN.md: {sorted(doc - table)}")


def test_every_gguf_tensor_has_one_checkpoint_source():
    pytest.importorskip("torch")
    from mole_convert import checkpoint_names as C

    gguf_tensors = {v for k, v in python_names().items() if k.startswith("TENSOR_")}
    written = [t.gguf for t in C.TABLE if t.gguf is not None]
    assert sorted(written) == sorted(gguf_tensors), "each GGUF tensor must come from exactly one checkpoint tensor"
    assert set(C.EXPERT_TENSORS) == {C.EXPERT_NORM, C.EXPERT_UP, C.EXPERT_DOWN}


def test_checkpoint_name_lookups():
    pytest.importorskip("torch")
    from mole_convert import checkpoint_names as C
    from mole_convert.testing import tiny_config

    assert C.match("model.layers.3.experts.12.up_proj.weight") == (C.EXPERT_UP, 3, 12)
    assert C.match(C.OUTPUT) == (C.OUTPUT, None, None)
    assert C.match("model.layers.0.mlp.gate_proj.weight") is None
    assert C.from_gguf("blk.7.ffn_gate_inp.weight") == "model.layers.7.router.weight"
    assert C.from_gguf(G.TENSOR_TOKEN_EMBD) == C.EMBED
    with pytest.raises(KeyError, match="blk.0.ffn_gate.weight"):
        C.from_gguf("blk.0.ffn_gate.weight")
    with pytest.raises(ValueError, match="layer"):
        C.name(C.ATTN_Q)
    cfg = tiny_config(num_experts=3)
    for t in C.tensors(cfg, "training"):
        template, i, _ = C.match(t.name)
        assert template == t.entry.name and i == t.layer
        assert t.gguf is None or C.from_gguf(t.gguf) == C.name(template, i)
    counts = {form: len(C.tensors(cfg, form)) for form in ("training", "reparam")}
    L, N = cfg.num_hidden_layers, cfg.num_experts
    assert counts == {"training": 3 + L * (9 + 1 + 2 * N), "reparam": 4 + L * 9}
