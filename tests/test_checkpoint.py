"""Tests of checkpoint loading/saving (mole_convert.checkpoint, mole_convert.config): all three forms,
sharded safetensors, pytorch_model.bin, stored dtypes, lazy reads, and errors that name the problem."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from mole_convert import checkpoint_names as C
from mole_convert.checkpoint import expected_shapes, load_checkpoint, save_checkpoint
from mole_convert.config import MoleConfig
from mole_convert.errors import CheckpointError, ConvertError
from mole_convert.model import MoleForCausalLM
from mole_convert.testing import make_random_checkpoint, neox_tokenizer_path, random_model, tiny_config


def model_from(ckpt, dtype=torch.float64):
    model = MoleForCausalLM(ckpt.config, form="reparam" if ckpt.form == "reparam" else "training").to(dtype)
    model.load_state_dict({n: ckpt.get(n, dtype) for n in ckpt.names()}, strict=True)
    return model


@pytest.mark.parametrize("form", ["training", "reparam", "dense"])
def test_round_trip_each_form(tmp_path, form):
    cfg = tiny_config(num_experts=0) if form == "dense" else tiny_config()
    make_random_checkpoint(tmp_path, cfg, seed=7, form=form, chat_template="{{ messages }}")
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.form == form and ckpt.config == cfg
    assert sorted(ckpt.names()) == sorted(expected_shapes(cfg, form))
    assert ckpt.tokenizer_path == tmp_path / "tokenizer.json"
    assert ckpt.chat_template == "{{ messages }}"
    want = random_model(cfg, seed=7, form="reparam" if form == "reparam" else "training").state_dict()
    for name in ckpt.names():
        assert ckpt.shape(name) == tuple(want[name].shape)
        assert torch.equal(ckpt.get(name), want[name]), name


def test_training_and_reparam_checkpoints_of_one_seed_give_same_logits(tmp_path):
    cfg = tiny_config()
    make_random_checkpoint(tmp_path / "t", cfg, seed=1, form="training")
    make_random_checkpoint(tmp_path / "r", cfg, seed=1, form="reparam")
    ids = torch.tensor([[0, 5, 9, 300, 5]])
    with torch.no_grad():
        a = model_from(load_checkpoint(tmp_path / "t"))(ids)
        b = model_from(load_checkpoint(tmp_path / "r"))(ids)
    assert (a - b).abs().max().item() < 1e-5  # the table was computed in float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage(tmp_path, dtype):
    cfg = tiny_config()
    make_random_checkpoint(tmp_path, cfg, seed=2, dtype=dtype)
    ckpt = load_checkpoint(tmp_path)
    name = C.name(C.EXPERT_UP, 1, 2)
    raw = load_file(tmp_path / "model.safetensors")[name]
    assert raw.dtype == dtype and ckpt.dtype(name) == dtype
    assert torch.equal(ckpt.get(name, None), raw)
    assert torch.equal(ckpt.get(name), raw.float())
    assert ckpt.get(name, torch.float64).dtype == torch.float64


def test_sharded_safetensors(tmp_path):
    cfg = tiny_config()
    make_random_checkpoint(tmp_path / "one", cfg, seed=3)
    sd = load_file(tmp_path / "one" / "model.safetensors")
    out = tmp_path / "sharded"
    out.mkdir()
    (out / "config.json").write_text((tmp_path / "one" / "config.json").read_text())
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors": names[10:]}
    weight_map = {}
    for fname, part in shards.items():
        save_file({n: sd[n] for n in part}, str(out / fname))
        weight_map.update({n: fname for n in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ckpt = load_checkpoint(out)
    assert ckpt.form == "training" and ckpt.tokenizer_path is None and ckpt.chat_template is None
    for n in names:
        assert torch.equal(ckpt.get(n), sd[n])

    weight_map[names[0]] = "model-00003-of-00002.safetensors"
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="model-00003-of-00002.safetensors"):
        load_checkpoint(out)


def test_pytorch_model_bin_with_legacy_rotary_buffers(tmp_path):
    cfg = tiny_config()
    make_random_checkpoint(tmp_path / "src", cfg, seed=4, form="reparam")
    sd = load_file(tmp_path / "src" / "model.safetensors")
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(cfg.head_dim // 2)  # old HF saves carry it
    out = tmp_path / "bin"
    out.mkdir()
    (out / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    torch.save({k: v.half() for k, v in sd.items()}, out / "pytorch_model.bin")
    ckpt = load_checkpoint(out)
    assert ckpt.form == "reparam"
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" not in ckpt.names()
    assert ckpt.shape(C.MOE_TABLE) == (cfg.vocab_size, 2 * 4 * 64)
    assert torch.equal(ckpt.get(C.MOE_TABLE), sd[C.MOE_TABLE].half().float())


@pytest.mark.parametrize("storage", ["safetensors", "bin"])
def test_get_rows_reads_a_row_range(tmp_path, storage):
    cfg = tiny_config()
    make_random_checkpoint(tmp_path, cfg, seed=8, form="reparam", dtype=torch.bfloat16, tokenizer=None)
    if storage == "bin":
        sd = load_file(tmp_path / "model.safetensors")
        (tmp_path / "model.safetensors").unlink()
        torch.save(sd, tmp_path / "pytorch_model.bin")
    ckpt = load_checkpoint(tmp_path)
    full = ckpt.get(C.MOE_TABLE)
    assert torch.equal(ckpt.get_rows(C.MOE_TABLE, 100, 137), full[100:137])
    assert ckpt.get_rows(C.MOE_TABLE, 5, 5).shape == (0, full.shape[1])
    assert ckpt.get_rows(C.MOE_TABLE, 0, 2, None).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="row range"):
        ckpt.get_rows(C.MOE_TABLE, 500, 513)
    with pytest.raises(ValueError, match="row range"):
        ckpt.get_rows(C.OUTPUT_NORM, 0, 1)


def test_get_keeps_no_mapping_of_the_file(tmp_path):
    make_random_checkpoint(tmp_path, tiny_config(), seed=5)
    ckpt = load_checkpoint(tmp_path)
    t = ckpt.get(C.EMBED)
    maps = open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else ""
    assert str(tmp_path / "model.safetensors") not in maps
    assert t.shape == (512, 64)


def test_vocab_padded_past_tokenizer(tmp_path):
    cfg = tiny_config(vocab_size=600)
    make_random_checkpoint(tmp_path, cfg, seed=6)
    ckpt = load_checkpoint(tmp_path)
    tok = json.loads(ckpt.tokenizer_path.read_text())
    assert len(tok["model"]["vocab"]) < 600 and ckpt.config.vocab_size == 600


def test_neox_tokenizer_copied(tmp_path):
    if neox_tokenizer_path() is None:
        pytest.skip("shared data folder absent")
    make_random_checkpoint(tmp_path, tiny_config(vocab_size=50304, num_hidden_layers=1), tokenizer="neox")
    assert load_checkpoint(tmp_path).tokenizer_path.read_text() == neox_tokenizer_path().read_text()
    with pytest.raises(ValueError, match="50277"):
        make_random_checkpoint(tmp_path / "small", tiny_config(), tokenizer="neox")


# ---- errors: class and a message that names the problem --------------------------------------------

def _rewrite(tmp_path, edit):
    sd = load_file(tmp_path / "model.safetensors")
    edit(sd)
    save_file(sd, str(tmp_path / "model.safetensors"))


def test_missing_tensor(tmp_path):
    make_random_checkpoint(tmp_path, tiny_config())
    _rewrite(tmp_path, lambda sd: sd.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight.*missing"):
        load_checkpoint(tmp_path)


def test_misshaped_tensor(tmp_path):
    make_random_checkpoint(tmp_path, tiny_config())
    _rewrite(tmp_path, lambda sd: sd.update({"model.layers.0.router.weight": torch.zeros(5, 64)}))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.router\.weight.*\[4, 64\].*\[5, 64\]"):
        load_checkpoint(tmp_path)


def test_unknown_tensor(tmp_path):
    make_random_checkpoint(tmp_path, tiny_config())
    _rewrite(tmp_path, lambda sd: sd.update({"model.layers.0.mlp.gate_proj.weight": torch.zeros(128, 64)}))
    with pytest.raises(CheckpointError, match=r"unknown tensor 'model\.layers\.0\.mlp\.gate_proj\.weight'"):
        load_checkpoint(tmp_path)


def test_both_experts_and_table(tmp_path):
    make_random_checkpoint(tmp_path, tiny_config())
    _rewrite(tmp_path, lambda sd: sd.update({"model.moe_table.weight": torch.zeros(512, 512)}))
    with pytest.raises(CheckpointError, match="moe_table"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("field", ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads"])
def test_config_missing_field(tmp_path, field):
    make_random_checkpoint(tmp_path, tiny_config(), tokenizer=None)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg[field]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"'{field}'") as e:
        load_checkpoint(tmp_path)
    assert isinstance(e.value, ValueError) and isinstance(e.value, ConvertError)


@pytest.mark.parametrize("change, match", [
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"rms_norm_eps": -1}, "rms_norm_eps"),
    ({"eos_token_id": 100000}, "eos_token_id"),
])
def test_config_bad_value(change, match):
    d = tiny_config().to_hf_dict()
    d.update(change)
    with pytest.raises(CheckpointError, match=match):
        MoleConfig.from_hf_dict(d)


def test_config_hf_defaults_and_round_trip():
    d = tiny_config(rope_scaling={"type": "linear", "factor": 4.0}).to_hf_dict()
    assert d["architectures"] == ["MoleForCausalLM"] and d["num_experts"] == 4
    assert MoleConfig.from_hf_dict(d) == tiny_config(rope_scaling={"type": "linear", "factor": 4.0})
    for key in ("num_key_value_heads", "num_experts", "hidden_act"):
        d.pop(key)
    d["eos_token_id"] = [0, 1]
    c = MoleConfig.from_hf_dict(d)
    assert c.num_key_value_heads == c.num_attention_heads and c.num_experts == 0 and c.eos_token_id == 0


def test_truncated_safetensors(tmp_path):
    make_random_checkpoint(tmp_path, tiny_config(), tokenizer=None)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="offsets"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        load_checkpoint(tmp_path)


def test_no_weights_no_config_no_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_hf_dict()))
    with pytest.raises(CheckpointError, match="no weights"):
        load_checkpoint(tmp_path)


def test_save_checkpoint_validates_and_replaces(tmp_path):
    cfg = tiny_config()
    model = random_model(cfg)
    sd = model.state_dict()
    sd.pop("lm_head.weight")
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        save_checkpoint(sd, cfg, tmp_path)
    save_checkpoint(model, cfg, tmp_path, dtype=torch.bfloat16)
    save_checkpoint(model, cfg, tmp_path, dtype=torch.bfloat16)  # overwriting an existing checkpoint works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_saved_files_have_ordinary_permissions(tmp_path):
    import os
    import stat
    cfg = tiny_config()
    old = os.umask(0o022)
    try:
        save_checkpoint(random_model(cfg), cfg, tmp_path)
    finally:
        os.umask(old)
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name   # not mkstemp's 0600
