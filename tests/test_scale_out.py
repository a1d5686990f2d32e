"""Scale-out (issue 15): the LUT computed on a device and quantized there, sharded conversion under torchrun
with 2 gloo ranks (byte-identical to one process; a failure on any rank leaves no output and names the
rank; no two ranks write into one block), and `mole train` under torchrun (DDP losses match one process;
rank 0 alone saves; resume across world sizes). GPU checks run when torch sees CUDA and skip otherwise."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mole_convert.checkpoint import load_checkpoint
from mole_convert.convert import convert, main_convert
from mole_convert.dist import World
from mole_convert.errors import ConvertError
from mole_convert.quantize import quantize, quantize_torch, row_bytes
from mole_convert.reparam import LutStream, plan_lut
from mole_convert.sharded import share
from mole_convert.testing import _TINY_TEXT, make_random_checkpoint, tiny_config
from mole_convert.train import batch_share, get_batch, main as train_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "dist_worker.py")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device visible to torch")
LUT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")


def torchrun(*args, nproc=2, timeout=240):
    """torchrun --standalone with nproc ranks on this machine, one thread each (as torchrun sets it)."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.join(REPO, "python"), os.path.join(REPO, "converter")]))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout)


def worker(scenario, out, spec, nproc=2, timeout=240):
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{scenario}.json"
    path.write_text(json.dumps({"out": str(out), **spec}))
    return torchrun(WORKER, scenario, path, nproc=nproc, timeout=timeout)


def results(out, name):
    return [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in range(2)]


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


@pytest.mark.skipif(CUDA, reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_says_why(ckpts, tmp_path, capsys):
    with pytest.raises(ConvertError, match="--device cuda: this torch .* without CUDA|no CUDA device"):
        convert(ckpts.training, tmp_path / "x.gguf", device="cuda", progress=False)
    assert main_convert([str(ckpts.training), str(tmp_path / "x.gguf"), "--device", "cuda", "-q"]) == 1
    assert "--device cuda" in capsys.readouterr().err
    with pytest.raises(ValueError, match="device 'tpu'"):
        convert(ckpts.training, tmp_path / "x.gguf", device="tpu", progress=False)
    capsys.readouterr()
    assert train_main(["--data", str(tmp_path / "none.txt"), "--out", str(tmp_path / "t"), "--device", "cuda"]) == 1
    assert "mole train: error: --device cuda: " in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@needs_cuda
def test_gpu_lut_matches_cpu_and_comes_back_quantized(ckpts, tmp_path):
    cpu = convert(ckpts.training, tmp_path / "cpu.gguf", "f32", "f32", chunk_tokens=100, progress=False)
    gpu = convert(ckpts.training, tmp_path / "gpu.gguf", "f32", "f32", chunk_tokens=100, progress=False,
                  device="cuda")
    import gguf
    rows = {}
    for name, path in (("cpu", cpu), ("gpu", gpu)):
        t = next(t for t in gguf.GGUFReader(path).tensors if t.name == "lut.weight")
        rows[name] = np.asarray(t.data).reshape(ckpts.cfg.vocab_size, -1).copy()
    err = np.abs(rows["gpu"] - rows["cpu"]).max(axis=1) / np.abs(rows["cpu"]).max(axis=1)
    assert err.max() <= 1e-5      # fp32 on both (TF32 off): a few ulps apart
    q = convert(ckpts.training, tmp_path / "q.gguf", "q8_0", "f32", chunk_tokens=100, progress=False, device="cuda")
    t = next(t for t in gguf.GGUFReader(q).tensors if t.name == "lut.weight")
    assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(ckpts.cfg.vocab_size, -1),
                          quantize(rows["gpu"], "q8_0"))


# ---- sharded conversion under torchrun ---------------------------------------------------------------------

def test_shares_cover_every_chunk_once():
    for n in (0, 1, 5, 7, 64):
        for size in (1, 2, 3, 8):
            got = [i for r in range(size) for i in share(n, r, size)]
            assert got == list(range(n))
            lens = [len(share(n, r, size)) for r in range(size)]
            assert max(lens) - min(lens) <= 1


def test_sharded_cli_is_byte_identical(ckpts, tmp_path):
    one = convert(ckpts.training, tmp_path / "one.gguf", lut_type="q8_0", chunk_tokens=80, progress=False)
    two = tmp_path / "two.gguf"
    r = torchrun("-m", "mole_convert.convert", ckpts.training, two, "--lut-type", "q8_0", "--chunk-tokens", "80")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "2 ranks" in r.stderr and r.stderr.count("mole convert: wrote") == 1     # rank 0 speaks
    assert two.read_bytes() == one.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.gguf", "two.gguf"]


def _blocks(writes, block):
    return {b for off, n in writes for b in range(off // block, (off + n - 1) // block + 1)}


def test_sharded_forms_are_byte_identical_and_ranks_share_no_block(ckpts, tmp_path):
    block = 4096
    cases = [dict(name="training-f32", src=ckpts.training, lut_type="f32", chunk=80, block=block),
             dict(name="reparam-q4_0", src=ckpts.reparam, lut_type="q4_0", chunk=50, block=block),
             dict(name="dense", src=ckpts.dense, lut_type="q8_0", chunk=None),
             dict(name="training-bf16-one-block", src=ckpts.training, lut_type="bf16", chunk=64)]
    for c in cases:
        c["src"], c["dst"] = str(c["src"]), str(tmp_path / f"{c['name']}.gguf")
    r = worker("convert", tmp_path / "logs", {"cases": cases})
    assert r.returncode == 0, r.stderr[-4000:]
    for c in cases:
        one = convert(c["src"], tmp_path / "one.gguf", c["lut_type"], "f32", chunk_tokens=c["chunk"], progress=False)
        assert (tmp_path / f"{c['name']}.gguf").read_bytes() == one.read_bytes(), c["name"]
        r0, r1 = results(tmp_path / "logs", c["name"])
        assert r0["ok"] and r1["ok"]
        if c["name"] == "dense":
            assert r0["writes"] == r1["writes"] == []
            continue
        b = c.get("block", 1 << 20)
        assert not _blocks(r0["writes"], b) & _blocks(r1["writes"], b), c["name"]   # no block written by both
        w1 = sorted(r1["writes"])     # rank 1 writes one run of whole blocks: its share less the partial ends
        assert all(o + n == o2 for (o, n), (o2, _) in zip(w1, w1[1:], strict=False)), c["name"]
        assert not w1 or (w1[0][0] % b == 0 and sum(w1[-1]) % b == 0), c["name"]
        if b == block:
            V, cfg = ckpts.cfg.vocab_size, ckpts.cfg
            n_chunks = -(-V // c["chunk"])
            own = (V - share(n_chunks, 1, 2).start * c["chunk"]) * row_bytes(
                c["lut_type"], cfg.num_hidden_layers * cfg.num_experts * cfg.hidden_size)
            assert sum(n for _, n in w1) >= own - 2 * block > 0, c["name"]   # all but the partial ends, itself
        else:
            assert r1["writes"] == []    # a 1 MiB block holds the whole LUT: rank 0 writes rank 1's rows
    assert not list(tmp_path.glob("*.tmp-*"))


def test_a_failure_on_any_rank_leaves_no_output(ckpts, tmp_path):
    cases = [dict(name="lut-rank1", rank=1, where="lut", want="writing the LUT failed on rank 1 of 2: "
                  "RuntimeError: injected failure in the LUT"),
             dict(name="lut-rank0", rank=0, where="lut", want="writing the LUT failed on rank 0 of 2: "
                  "RuntimeError: injected failure in the LUT"),
             dict(name="checkpoint-rank1", rank=1, where="checkpoint",
                  want="reading the checkpoint failed on rank 1 of 2: injected: no checkpoint at"),
             dict(name="not-shared-rank1", rank=1, where="open",
                  want="opening the output file failed on rank 1 of 2: ", also="which rank 0 created, is not there: "
                  "the output must be on a filesystem every rank shares, at the same path"),
             dict(name="fsync-rank1", rank=1, where="fsync",
                  want="flushing the LUT failed on rank 1 of 2: [Errno 5] injected write-back error"),
             dict(name="afterwards", rank=-1, where="none")]
    for c in cases:
        d = tmp_path / c["name"]
        d.mkdir()
        (d / "model.gguf").write_bytes(b"previous file")
        c.update(src=str(ckpts.training), dst=str(d / "model.gguf"), lut_type="q8_0", chunk=64, block=4096)
    r = worker("failures", tmp_path / "logs", {"cases": cases})
    assert r.returncode == 0, r.stderr[-4000:]
    for c in cases[:-1]:
        for res in results(tmp_path / "logs", c["name"]):       # every rank raised the same error
            assert not res["ok"] and res["ranks"] == [c["rank"]], (c["name"], res)
            assert c["want"] in res["error"] and c.get("also", "") in res["error"], (c["name"], res["error"])
        d = tmp_path / c["name"]
        assert [p.name for p in d.iterdir()] == ["model.gguf"], c["name"]     # no temp file left
        assert (d / "model.gguf").read_bytes() == b"previous file", c["name"]
    # rank 1 failed in its 2nd of 4 chunks: rank 0 stopped at its next check-in, not at the end of its share
    assert len(results(tmp_path / "logs", "lut-rank1")[0]["writes"]) == 2
    one = convert(ckpts.training, tmp_path / "one.gguf", "q8_0", "f32", chunk_tokens=64, progress=False)
    assert all(res["ok"] for res in results(tmp_path / "logs", "afterwards"))
    assert (tmp_path / "afterwards" / "model.gguf").read_bytes() == one.read_bytes()


def test_a_killed_rank_leaves_no_output(ckpts, tmp_path):
    dst, marker = tmp_path / "model.gguf", tmp_path / "killed"
    dst.write_bytes(b"previous file")
    r = worker("kill", tmp_path / "logs", {"marker": str(marker), "argv": [
        str(ckpts.training), str(dst), "--chunk-tokens", "64", "-q"]})
    assert r.returncode != 0 and marker.exists(), r.stderr[-4000:]
    assert dst.read_bytes() == b"previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "logs", "model.gguf"]


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_sharded_gpu_conversion_is_byte_identical(ckpts, tmp_path):
    one = convert(ckpts.training, tmp_path / "one.gguf", "q8_0", chunk_tokens=80, progress=False, device="cuda")
    r = torchrun("-m", "mole_convert.convert", ckpts.training, tmp_path / "two.gguf", "--chunk-tokens", "80",
                 "--device", "cuda", "-q")
    assert r.returncode == 0, r.stderr[-4000:]
    assert (tmp_path / "two.gguf").read_bytes() == one.read_bytes()


# ---- training under torchrun -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale-data") / "text.txt"
    path.write_text(_TINY_TEXT * 30)
    return path


def train_argv(out, text, *extra):
    return ["--data", str(text), "--out", str(out), "--preset", "tiny", "--quiet", "--precision", "fp32",
            "--eval-every", "4", "--save-every", "4", "--steps", "8", *extra]


def train_log(out):
    return json.loads((out / "train_log.json").read_text())


def test_batch_shares_make_the_global_batch():
    data = torch.arange(1000, dtype=torch.int32)
    args = SimpleNamespace(seq_len=8, batch_size=6)
    whole = get_batch(data, args, torch.Generator().manual_seed(1))[0]
    parts = [get_batch(data, args, torch.Generator().manual_seed(1), batch_share(6, World(rank=r, size=3)))[0]
             for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(ValueError, match="--batch-size 6 is not a multiple of the 4 ranks"):
        batch_share(6, World(rank=0, size=4))


def test_ddp_matches_one_process_and_resumes_across_world_sizes(tmp_path, text_file):
    straight = tmp_path / "straight"
    assert train_main(train_argv(straight, text_file, "--threads", "1")) == 0
    want = train_log(straight)

    # 2 ranks, 4 of the 8 steps: the same losses as one process; only rank 0 saved
    two = tmp_path / "two"
    r = worker("train", tmp_path / "logs-two", {"argv": train_argv(two, text_file, "--stop-after", "4")})
    assert r.returncode == 0, r.stderr[-4000:]
    got = train_log(two)
    assert got["world_size"] == 2 and got["steps"] == 4
    assert got["train_loss"] == pytest.approx(want["train_loss"][:4], rel=1e-5)
    assert [e["loss"] for e in got["evals"]] == pytest.approx([e["loss"] for e in want["evals"][:2]], rel=1e-5)
    saves = results(tmp_path / "logs-two", "saves")
    assert saves[0] and "state" in saves[0] and saves[1] == []
    assert results(tmp_path / "logs-two", "batches") == [[[2, 32]] * 4] * 2     # each rank: half of 4 windows

    # its checkpoint resumed by one process: the rest of the single-process curve
    assert train_main(train_argv(two, text_file, "--threads", "1", "--resume")) == 0
    resumed = train_log(two)
    assert resumed["resumed_from"] == 4 and resumed["world_size"] == 1
    assert resumed["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)

    # a one-process checkpoint resumed by 2 ranks
    one = tmp_path / "one"
    assert train_main(train_argv(one, text_file, "--threads", "1", "--stop-after", "4")) == 0
    r = worker("train", tmp_path / "logs-one", {"argv": train_argv(one, text_file, "--resume")})
    assert r.returncode == 0, r.stderr[-4000:]
    resumed = train_log(one)
    assert resumed["resumed_from"] == 4 and resumed["world_size"] == 2
    assert resumed["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
    assert resumed["final_eval_loss"] == pytest.approx(want["final_eval_loss"], rel=1e-5)


def test_a_failed_save_on_rank_0_stops_every_rank(tmp_path, text_file):
    out = tmp_path / "run"
    r = worker("train", tmp_path / "logs", {"full_disk": True, "argv": train_argv(out, text_file, "--steps", "4")})
    assert r.returncode != 0
    # rank 0's full-disk message (which step, what train_state.pt still holds) reaches the launcher whole
    msg = ("mole train: error: saving the checkpoint failed on rank 0 of 2: [Errno 28] no space left on device "
           "saving the checkpoint of step 4 in ")
    assert r.stderr.count(msg) == 1, r.stderr[-4000:]          # rank 0 says it; rank 1 stops quietly
    assert results(tmp_path / "logs", "saves")[1] == []        # rank 1 never wrote
    assert not (out / "train_state.pt").exists() and not (out / "train_log.json").exists()


@needs_cuda
def test_training_on_a_gpu_follows_the_cpu(tmp_path, text_file):
    assert train_main(train_argv(tmp_path / "cpu", text_file, "--steps", "4", "--threads", "1")) == 0
    assert train_main(train_argv(tmp_path / "gpu", text_file, "--steps", "4", "--device", "cuda")) == 0
    assert train_log(tmp_path / "gpu")["train_loss"] == pytest.approx(train_log(tmp_path / "cpu")["train_loss"],
                                                                      rel=1e-3)


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_ddp_on_gpus_with_nccl(tmp_path, text_file):
    assert train_main(train_argv(tmp_path / "one", text_file, "--steps", "4", "--device", "cuda")) == 0
    r = worker("train", tmp_path / "logs", {"argv": train_argv(tmp_path / "two", text_file, "--steps", "4",
                                                                "--device", "cuda")})
    assert r.returncode == 0, r.stderr[-4000:]
    assert train_log(tmp_path / "two")["train_loss"] == pytest.approx(train_log(tmp_path / "one")["train_loss"],
                                                                      rel=1e-4)


def test_types_without_a_torch_quantizer_are_quantized_on_the_host(ckpts):
    """iq4_nl and q3_k have numpy quantizers only: a LUT of theirs computed on a device must not go through
    quantize_torch (whose last branch is q4_0's), and asking for it is an error, not other bytes."""
    for t in ("iq4_nl", "q3_k"):
        with pytest.raises(ValueError, match="no .* quantizer"):
            quantize_torch(torch.zeros(2, 256), t)
    ck = load_checkpoint(ckpts.training)
    with pytest.raises(ValueError, match="device_quantize"):
        LutStream(ck, "iq4_nl", chunk_tokens=64, device_quantize=True)
    assert LutStream(ck, "iq4_nl", chunk_tokens=64).device_quantize is False
