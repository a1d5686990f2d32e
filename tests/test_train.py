"""Tests of mole_convert.train: a few-step run lowers the held-out loss, resuming continues from the saved
step exactly as an uninterrupted run, and the output directory is a checkpoint load_checkpoint accepts."""
import json

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from mole_convert.checkpoint import load_checkpoint
from mole_convert.testing import _TINY_TEXT
from mole_convert.train import PRESETS, lr_at, main, parse_args


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(_TINY_TEXT * 30)
    return path


def run(out, files, *extra):
    argv = ["--data", *map(str, files), "--out", str(out), "--preset", "tiny", "--threads", "1", "--quiet",
            "--eval-every", "4", "--save-every", "4", *extra]
    assert main(argv) == 0
    return json.loads((out / "train_log.json").read_text())


def test_loss_falls_and_output_is_a_checkpoint(tmp_path, text_file):
    log = run(tmp_path, [text_file], "--steps", "16")
    evals = log["evals"]
    assert [e["step"] for e in evals] == [0, 4, 8, 12, 16]
    assert evals[-1]["loss"] < evals[0]["loss"] - 0.5
    assert log["final_bpb"] == evals[-1]["bpb"] and 0 < log["final_bpb"] < evals[0]["bpb"]
    assert log["steps"] == 16 and len(log["train_loss"]) == 16 and log["wall_time_s"] > 0
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.form == "training" and ckpt.config.num_experts == PRESETS["tiny"]["num_experts"]
    assert ckpt.chat_template and "messages" in ckpt.chat_template
    tok = Tokenizer.from_file(str(ckpt.tokenizer_path))
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.get_vocab_size() <= ckpt.config.vocab_size
    assert tok.decode(tok.encode("The lantern keeper, 2024!").ids) == "The lantern keeper, 2024!"


def test_resume_continues_like_an_uninterrupted_run(tmp_path, text_file):
    straight = run(tmp_path / "a", [text_file], "--steps", "12")
    run(tmp_path / "b", [text_file], "--steps", "12", "--stop-after", "8")
    state = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)
    assert state["step"] == 8
    resumed = run(tmp_path / "b", [text_file], "--steps", "12", "--resume")
    assert resumed["resumed_from"] == 8 and resumed["steps"] == 12
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-5)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_dense_run_with_per_file_eval(tmp_path, text_file):
    other = tmp_path / "other.txt"
    other.write_text("Numbers remember what people forget.\n" * 200)
    log = run(tmp_path / "out", [text_file, other], "--steps", "4", "--experts", "0", "--precision", "fp32")
    ckpt = load_checkpoint(tmp_path / "out")
    assert ckpt.form == "dense" and ckpt.config.num_experts == 0
    by_file = log["final_bpb_by_file"]
    assert set(by_file) == {"text.txt", "other.txt"}
    assert min(by_file.values()) < log["final_bpb"] < max(by_file.values())


def test_time_limit_still_leaves_a_checkpoint(tmp_path, text_file):
    log = run(tmp_path, [text_file], "--steps", "1000", "--time-limit", "0")
    assert log["steps"] == 0 and [e["step"] for e in log["evals"]] == [0]
    assert load_checkpoint(tmp_path).form == "training"


def test_schedule_and_argument_errors(tmp_path, text_file):
    args = parse_args(["--data", str(text_file), "--out", str(tmp_path), "--steps", "100", "--lr", "1e-3",
                       "--warmup", "10"])
    lrs = [lr_at(s, args) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] == pytest.approx(1e-4, rel=0.01)
    args.time_limit = 10.0  # minutes: half the time gone puts the cosine at least half way
    assert lr_at(20, args, elapsed_s=300.0) == pytest.approx(lr_at(55, args))
    assert lr_at(20, args, elapsed_s=700.0) == pytest.approx(1e-4)
    assert lr_at(80, args, elapsed_s=1.0) == lr_at(80, args)
    with pytest.raises(FileNotFoundError, match="train_state.pt"):
        main(["--out", str(tmp_path / "none"), "--resume", "--quiet"])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        main(["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), "--quiet"])
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path)])  # --data required without --resume


def test_held_out_books_and_the_trained_context(tmp_path, text_file):
    """--eval-file takes several whole books, each scored on its own; the checkpoint (and so the converted file's
    mole.context_length) declares the context the model was trained at, not a longer one it never saw."""
    import mole
    from mole_convert.convert import convert

    books = []
    for name, line in (("book-a.txt", "Numbers remember what people forget.\n"),
                       ("book-b.txt", "The lantern keeper walked the shore at dusk.\n")):
        books.append(tmp_path / name)
        books[-1].write_text(line * 100)
    log = run(tmp_path / "out", [text_file], "--steps", "4", "--eval-file", *map(str, books))
    assert set(log["final_bpb_by_file"]) == {"book-a.txt", "book-b.txt"}
    seq_len = PRESETS["tiny"]["seq_len"]
    ckpt = load_checkpoint(tmp_path / "out")
    assert ckpt.config.max_position_embeddings == seq_len
    convert(tmp_path / "out", tmp_path / "m.gguf", progress=False)
    with mole.Model(tmp_path / "m.gguf") as m:
        assert m.info["n_ctx_train"] == seq_len and m.n_ctx == seq_len
