"""The `mole` command through subprocess: run, inspect, chat from stdin, convert, exit codes."""
import json
import re
import subprocess
import sys

import pytest

import base_install
from conftest import REPO
from mole import cli


def mole(*args, stdin=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "mole", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model(model_factory):
    path, ckpt, cfg = model_factory(lut_type="q8_0", weight_type="f16", seed=5)
    return path, ckpt


def test_help_everywhere():
    r = mole("--help")
    assert r.returncode == 0 and "convert" in r.stdout and "perplexity" in r.stdout
    for sub in ("run", "chat", "perplexity", "bench", "convert", "inspect", "train", "serve"):
        r = mole(sub, "--help")
        assert r.returncode == 0, (sub, r.stderr)
        assert "usage" in r.stdout.lower(), sub


def test_run_streams_greedy_text(model):
    path, _ = model
    r = mole("run", "-m", path, "-p", "Hello", "-n", "12", "--temp", "0", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello") and len(r.stdout) > len("Hello\n")
    again = mole("run", "-m", path, "-p", "Hello", "-n", "12", "--temp", "0", "-t", "2")
    assert again.stdout == r.stdout


def test_run_missing_model_is_error_exit_1(tmp_path):
    r = mole("run", "-m", tmp_path / "nope.gguf", "-p", "x", "-n", "1")
    assert r.returncode == 1
    assert "not found" in r.stderr and "Traceback" not in r.stderr


def test_run_bad_usage_exit_2():
    r = mole("run", "--no-such-flag")
    assert r.returncode == 2


def test_inspect(model):
    path, _ = model
    r = mole("inspect", path)
    assert r.returncode == 0, r.stderr
    assert "lut.weight" in r.stdout and "mole.expert_count" in r.stdout
    r = mole("inspect", path, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info


def test_chat_from_stdin(model):
    path, _ = model
    r = mole("chat", "-m", path, "-n", "8", "--temp", "0", stdin="Hello there\n/stats\n/reset\nHow are you?\n")
    assert r.returncode == 0, r.stderr
    assert "tokens evaluated:" in r.stdout
    assert "history and counters cleared" in r.stderr


def test_convert_cli(model, tmp_path):
    _, ckpt = model
    dst = tmp_path / "out.gguf"
    r = mole("convert", ckpt, dst, "--lut-type", "q4_0", "--weight-type", "q8_0")
    assert r.returncode == 0, r.stderr
    assert dst.is_file() and dst.stat().st_size > 0
    r = mole("convert", tmp_path / "missing_dir", tmp_path / "x.gguf")
    assert r.returncode != 0 and not (tmp_path / "x.gguf").exists()


def test_perplexity(model, tmp_path):
    path, _ = model
    text = tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                    "must be in want of a wife. " * 4)
    r = mole("perplexity", "-m", path, "-f", text, "-c", "32")   # sliding windows
    assert r.returncode == 0, r.stderr
    assert "bits/byte" in r.stdout
    # one window holding the whole text: equals the log-likelihood computed here from logits
    r = mole("perplexity", "-m", path, "-f", text, "-c", "512")
    assert r.returncode == 0, r.stderr
    got = float(r.stdout.split("bits/byte")[1].split()[0])
    import math
    import numpy as np
    import mole as mole_pkg
    body = text.read_text()
    with mole_pkg.Model(str(path), n_ctx=512) as m:
        ids = m.tokenize(body)
        lg = m.logits(ids).astype(np.float64)
    lp = lg - lg.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    nll = -lp[np.arange(len(ids) - 1), ids[1:]].sum()
    assert got == pytest.approx(nll / math.log(2) / len(body.encode()), rel=1e-3)


def test_bench_without_source_tree(model, tmp_path, monkeypatch):
    """An installed package has no bench/ harness: `mole bench` then measures the model alone."""
    path, _ = model
    import os
    env = dict(os.environ, MOLE_BENCH_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "mole", "bench", "-m", str(path), "--prompt-tokens", "16",
                        "--gen-tokens", "4", "--repeats", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "prompt 16 tokens:" in r.stdout and "decode 4 tokens:" in r.stdout and "tokens/s" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mole", "bench", "-m", str(path), "--dense", str(path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "MOLE_BENCH_DIR" in r.stderr


# ---- usage errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["run", "-p", "Hello", "-n", "-5"], ["run", "-p", "Hello", "-n", "x"], ["run", "-p", "Hello", "-c", "0"],
    ["run", "-p", "Hello", "-t", "0"], ["run", "-p", "Hello", "--temp", "-1"], ["run", "-p", "Hello", "--temp", "nan"],
    ["run", "-p", "Hello", "--top-p", "1.5"], ["run", "-p", "Hello", "--min-p", "-0.1"],
    ["run", "-p", "Hello", "--top-k", "-1"], ["run", "-p", "Hello", "--repeat-last-n", "-2"],
    ["run", "-p", "Hello", "--repeat-penalty", "-1"], ["run", "-p", "Hello", "--lut-cache-mb", "-1"],
    ["run", "-p", ""], ["chat", "-n", "-1"], ["perplexity", "-f", "t.txt", "--chars", "0"],
    ["bench", "--repeats", "0"], ["serve", "--port", "-1"], ["serve", "--parallel", "0"], ["serve", "--queue", "-1"],
    ["serve", "--max-body-kb", "0"]])
def test_bad_values_are_usage_errors_exit_2(model, args):
    """A bad value is a usage error, as argparse reports it: exit 2, the usage on stderr, nothing on stdout (`mole
    run` used to echo the prompt and then fail with exit 1)."""
    path, _ = model
    r = mole(*args, "-m", path, stdin="")
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert r.stdout == "", args
    assert "usage: mole" in r.stderr and "error:" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_run_prints_nothing_before_an_error(model):
    """A prompt the context cannot hold fails before `mole run` echoes it (stdout stays empty)."""
    path, _ = model
    r = mole("run", "-m", path, "-c", "4", "-p", "Hello there, " * 20, "-n", "4")
    assert r.returncode == 1 and "context" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""


def test_good_edge_values_still_run(model):
    path, _ = model
    r = mole("run", "-m", path, "-p", "Hello", "-n", "0", "--temp", "0", "--top-p", "1", "--min-p", "0",
             "--top-k", "0", "--lut-cache-mb", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Hello\n"


# ---- mole chat ---------------------------------------------------------------------------------

def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?", text)


def test_chat_commands_are_not_sent_to_the_model(model):
    """/help lists the commands, /stats and /quit are commands: none of them reaches the model, and nothing after
    /quit is read."""
    path, _ = model
    r = mole("chat", "-m", path, "-n", "4", "--temp", "0", stdin="/help\n/stats\n/quit\nHello\n")
    assert r.returncode == 0, r.stderr
    for command in ("/help", "/reset", "/stats", "/quit"):
        assert command in r.stdout, command
    assert re.search(r"tokens evaluated:\s+0 in 0 steps", r.stdout), r.stdout
    assert re.search(r"context:\s+0 of \d+ tokens", r.stdout), r.stdout
    assert r.stdout.rstrip().splitlines()[-1].startswith("LUT cache holds:")   # no reply after /quit


def test_chat_unknown_command(model):
    path, _ = model
    r = mole("chat", "-m", path, "-n", "4", "--temp", "0", stdin="/halp\n/stats\n")
    assert r.returncode == 0, r.stderr
    assert "unknown command /halp" in r.stderr and "/help" in r.stderr
    assert re.search(r"tokens evaluated:\s+0 in 0 steps", r.stdout), r.stdout


def test_chat_stats_are_labelled_and_rounded(model):
    path, _ = model
    r = mole("chat", "-m", path, "-n", "4", "--temp", "0", stdin="Hello there\n/stats\n")
    assert r.returncode == 0, r.stderr
    stats = r.stdout[r.stdout.index("tokens evaluated:"):]
    labels = [line.split(":")[0] for line in stats.strip().splitlines()]
    assert labels == ["tokens evaluated", "context", "LUT rows fetched", "LUT cache hits", "LUT cache holds"]
    assert all(len(n.split(".")[1]) <= 2 for n in _numbers(stats) if "." in n), stats   # no raw float digits
    assert "tokens/s" in stats and "ms" in stats and "% of lookups" in stats
    assert int(re.search(r"tokens evaluated:\s+(\d+)", stats).group(1)) > 0


def test_chat_reset_clears_the_counters_it_shows(model):
    path, _ = model
    r = mole("chat", "-m", path, "-n", "4", "--temp", "0", stdin="Hello there\n/stats\n/reset\n/stats\n")
    assert r.returncode == 0, r.stderr
    before, after = r.stdout.split("tokens evaluated:")[1:]
    assert int(before.split()[0]) > 0
    assert re.match(r"\s+0 in 0 steps", after), after
    assert re.search(r"context:\s+0 of", after) and re.search(r"LUT rows fetched:\s+0 ", after), after


def test_chat_ctrl_d_leaves_a_newline(model):
    """At a terminal, Ctrl-D at the "> " prompt ends the chat on a fresh line (the shell's prompt does not land
    after "> ")."""
    import os
    import pty

    path, _ = model
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "mole", "chat", "-m", str(path), "-n", "4", "--temp", "0"],
                         stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    os.write(master, b"\x04")             # Ctrl-D at the start of a line: end of input
    out, err = p.communicate(timeout=120)
    os.close(master)
    assert p.returncode == 0, err
    assert err.decode().endswith("> \n"), err
    assert "/help" in err.decode()        # the banner names the commands


# ---- the base install (`pip install .`: no torch, gguf, safetensors, tokenizers, tqdm) --------------------------

@pytest.mark.parametrize("command", ["convert", "train"])
def test_converter_commands_on_the_base_install(command, tmp_path):
    """--help works without the converter's dependencies; running the command names the README's install command,
    with the constraints file (without it pip pulls the multi-GB CUDA torch); bad usage is still exit 2."""
    r = base_install.mole(command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: mole {command}") and "--help" in r.stdout
    args = [tmp_path / "ckpt", tmp_path / "out.gguf"] if command == "convert" else \
        ["--data", tmp_path / "t.txt", "--out", tmp_path / "out"]
    r = base_install.mole(command, *args)
    assert r.returncode == 1, r.stderr
    assert cli.CONVERT_INSTALL == 'pip install -c tests/constraints.txt ".[convert]"'
    assert cli.CONVERT_INSTALL in r.stderr and "No module named 'torch'" in r.stderr, r.stderr
    assert "mole-cpp[" not in r.stderr and "Traceback" not in r.stderr
    assert cli.CONVERT_INSTALL in (REPO / "README.md").read_text()    # the command the README gives
    r = base_install.mole(command, "--no-such-flag")
    assert r.returncode == 2 and "usage: mole " + command in r.stderr


def test_bench_from_the_clone_without_gguf(model):
    """bench/bench_cpu.py needs gguf: from the clone's root `mole bench` then measures the model alone and says why;
    asking for peers gives the install command, not a traceback."""
    path, _ = model
    r = base_install.mole("bench", "-m", path, "--prompt-tokens", "16", "--gen-tokens", "4", "--repeats", "1",
                          cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "decode 4 tokens:" in r.stdout and "tokens/s" in r.stdout
    assert "bench_cpu.py" in r.stderr and cli.CONVERT_INSTALL in r.stderr and "Traceback" not in r.stderr
    for peer in (["--dense", path], ["--torch"], ["--llama"]):
        r = base_install.mole("bench", "-m", path, *peer, "--repeats", "1", cwd=REPO)
        assert r.returncode == 1, (peer, r.stderr)
        assert cli.CONVERT_INSTALL in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_chat_drops_the_oldest_turns_past_the_trained_context(model_factory):
    """A model trained at 64 tokens: a chat of several turns keeps going, dropping its oldest turns (and saying
    so) rather than running past the context the model knows or filling the one made."""
    path, _, cfg = model_factory("q8_0", "f16", seed=5, max_position_embeddings=64)
    lines = "".join(f"Tell me about the lantern keeper number {i} and the shore.\n" for i in range(6))
    r = mole("chat", "-m", path, "-n", "8", "--temp", "0", stdin=lines + "/stats\n")
    assert r.returncode == 0, r.stderr
    assert "oldest message" in r.stderr and "the 64 tokens the model was trained at" in r.stderr, r.stderr
    assert "no longer fits" not in r.stderr
    used, n_ctx = map(int, re.search(r"context:\s+(\d+) of (\d+) tokens", r.stdout).groups())
    assert n_ctx == 64 and used <= 64
    # -c larger than the trained context: the trained one still bounds the chat
    r = mole("chat", "-m", path, "-n", "8", "--temp", "0", "-c", "256", stdin=lines)
    assert r.returncode == 0 and "trained at" in r.stderr, r.stderr


def test_trim_history_keeps_the_system_message_and_whole_turns():
    from mole.chat import trim_history

    class CharModel:   # one token per character of the rendered prompt
        metadata = {"tokenizer.ggml.tokens": ["<|endoftext|>"], "tokenizer.ggml.bos_token_id": 0,
                    "tokenizer.ggml.eos_token_id": 0}

        def tokenize(self, text, add_bos=False, special=True):
            return list(text)

    msgs = [{"role": "system", "content": "S"}]
    for i in range(4):
        msgs += [{"role": "user", "content": f"question {i}" * 3}, {"role": "assistant", "content": f"answer {i}" * 3}]
    msgs.append({"role": "user", "content": "last"})
    kept, dropped = trim_history(msgs, CharModel(), limit=10**6, reserve=0)
    assert kept == msgs and dropped == 0
    kept, dropped = trim_history(msgs, CharModel(), limit=150, reserve=20)
    assert kept[0] == msgs[0] and kept[-1] == msgs[-1] and dropped % 2 == 0 and 0 < dropped < 8
    assert kept[1]["role"] == "user" and kept == [msgs[0]] + msgs[1 + dropped:]
    kept, dropped = trim_history(msgs, CharModel(), limit=5, reserve=0)   # nothing fits: the last message stays
    assert kept == [msgs[0], msgs[-1]] and dropped == 8
