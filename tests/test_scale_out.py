"""Scale-out (issue 15): the LUT computed on a device and quantized there: the torch quantizer is byte-identical
to the numpy one, the device path gives the same LUT, the VRAM budget bounds the plan. GPU checks run when
torch sees CUDA and skip otherwise."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mole_convert.checkpoint import load_checkpoint
from mole_convert.errors import ConvertError
from mole_convert.quantize import quantize, quantize_torch
from mole_convert.reparam import LutStream, plan_lut
from mole_convert.testing import make_random_checkpoint, tiny_config

CUDA = torch.cuda.is_available()
LUT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale-ckpt")
    cfg = tiny_config()
    return SimpleNamespace(
        cfg=cfg,
        training=make_random_checkpoint(root / "training", cfg, seed=5),
        reparam=make_random_checkpoint(root / "reparam", cfg, seed=5, form="reparam"),
        dense=make_random_checkpoint(root / "dense", tiny_config(num_experts=0), seed=6, form="dense"),
    )


# ---- the LUT on a device, quantized there ---------------------------------------------------------------

def _hard_rows():
    """f32 rows [64, 256] with every kind of value the quantizers treat specially."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 256)) * rng.choice([1e-8, 1e-3, 1.0, 1e3, 7e4], (64, 1))).astype(np.float32)
    x[0, :32] = 0                                       # an all-zero block: scale 0
    x[1, :32] = np.arange(32) - 15.5                     # q8_0 scale 1 (amax 127 below): exact halves,
    x[1, 0] = 127.0                                      # rounded half away from zero
    x[2, :64] = 0.5
    x[3, 5] = -9e4                                      # f16 scale overflow
    x[4, :32] = 1e-42                                   # subnormals
    x[5, :32], x[5, 3] = -1.5, 1.5                      # q4_0: the first largest |x| picks the sign
    x[6, 7] = np.float32(1.0000001)                     # bf16 rounding ties and carries
    x[6, 8] = np.float32(-3.0039062)
    return x


@pytest.mark.parametrize("lut_type", LUT_TYPES)
def test_device_quantizer_is_byte_identical_to_numpy(lut_type):
    x = _hard_rows()
    want = quantize(x, lut_type)
    assert np.array_equal(quantize_torch(torch.from_numpy(x), lut_type).numpy(), want)
    if CUDA:
        assert np.array_equal(quantize_torch(torch.from_numpy(x).cuda(), lut_type).cpu().numpy(), want)
    if lut_type in ("f32", "f16", "bf16"):   # every bit pattern: NaN payloads, infinities, subnormals, both signs
        y = np.random.default_rng(1).integers(0, 2**32, (256, 256), dtype=np.uint64).astype(np.uint32)
        y[9, 3:5] = (0x7F800001, 0xFFFFFFFF)                  # NaNs that plain rounding would make inf / wrap
        y = y.view(np.float32)
        assert np.array_equal(quantize_torch(torch.from_numpy(y), lut_type).numpy(), quantize(y, lut_type))
        if CUDA:
            assert np.array_equal(quantize_torch(torch.from_numpy(y).cuda(), lut_type).cpu().numpy(),
                                  quantize(y, lut_type))


@pytest.mark.parametrize("lut_type", ["q8_0", "q4_0"])
def test_device_quantizer_rejects_non_finite_rows(lut_type):
    x = _hard_rows()
    x[7, 40] = np.inf
    with pytest.raises(ValueError, match=f"row 107 holds a non-finite value .* {lut_type}"):
        quantize_torch(torch.from_numpy(x), lut_type, first_row=100)


def test_device_quantize_path_gives_the_same_lut(ckpts, monkeypatch):
    # the path a GPU takes (rows quantized where computed, in slices of rows), run on the CPU
    import mole_convert.reparam as R
    ck = load_checkpoint(ckpts.training)
    host = LutStream(ck, "q4_0", chunk_tokens=100)
    a = np.concatenate([r for _, r in host.chunks()])
    calls = []
    monkeypatch.setattr(R, "quantize_torch", lambda rows, *args, **kw: (calls.append(rows.shape[0]),
                                                                         quantize_torch(rows, *args, **kw))[1])
    monkeypatch.setattr(R, "_DEVICE_QUANT_ELEMENTS", 40 * 256)      # slices of 40 rows of one layer (N*d = 256)
    dev = LutStream(ck, "q4_0", chunk_tokens=100, device_quantize=True)
    b = np.concatenate([r for _, r in dev.chunks()])
    assert np.array_equal(a, b)
    assert calls[:3] == [40, 40, 20] and sum(calls) == ckpts.cfg.vocab_size * ckpts.cfg.num_hidden_layers


def test_gpu_budget_bounds_the_plan():
    cfg = SimpleNamespace(vocab_size=50304, num_hidden_layers=12, num_experts=16, hidden_size=768,
                          n_ff_expert=3072)
    fake = SimpleNamespace(form="training", config=cfg)
    cpu = plan_lut(fake, "q8_0")
    gpu = plan_lut(fake, "q8_0", device="cuda")                 # default 8 GiB of VRAM: experts stay there
    assert gpu.keep_weights and gpu.est_bytes <= 8 << 30 and gpu.chunk_tokens > cpu.chunk_tokens
    small = plan_lut(fake, "q8_0", device="cuda", memory_budget=2 << 30)
    assert not small.keep_weights and small.est_bytes <= 2 << 30
    with pytest.raises(ConvertError, match=r"VRAM budget of 0.50 GiB cannot hold .* --memory-mb at least \d+"):
        plan_lut(fake, "q8_0", device="cuda", memory_budget=512 << 20)   # two layers' experts alone are 0.6 GB
    assert plan_lut(fake, "q8_0", memory_budget=512 << 20).chunk_tokens == 1    # the CPU keeps going, slowly


def test_gpu_out_of_memory_names_the_budget(ckpts):
    lut = LutStream(load_checkpoint(ckpts.training), "q8_0", chunk_tokens=64)
    with pytest.raises(torch.OutOfMemoryError):      # on the CPU it stays what it is
        with lut._out_of_memory():
            raise torch.OutOfMemoryError("out of memory")
    lut.device = torch.device("cuda", 0)
    with pytest.raises(ConvertError, match=r"cuda:0 ran out of memory .* 64 tokens per chunk .* --memory-mb"):
        with lut._out_of_memory():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore text")
