"""Nothing lost (issue 12 section 6): conversion and training write temporary files and rename them into place,
so a full disk (a small tmpfs; skipped where this process cannot mount one) or SIGINT / SIGTERM part way leaves
the earlier files whole, with an error that says so; training resumes from its last checkpoint exactly as an
uninterrupted run goes on. (An interrupt inside a LUT chunk of a conversion: tests/test_convert.py.)"""
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from mole_convert.convert import convert, main_convert  # noqa: E402
from mole_convert.testing import _TINY_TEXT, make_random_checkpoint, tiny_config  # noqa: E402
from mole_convert.train import main as train_main  # noqa: E402

from conftest import child_takes_sigint  # noqa: E402

PAGE = 4096
STEPS = ["--preset", "tiny", "--threads", "1", "--quiet", "--steps", "12", "--eval-every", "4", "--save-every", "4"]


def _pages(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


@contextlib.contextmanager
def small_disk(path, size: int):
    """A tmpfs of `size` bytes mounted at path (made here), unmounted after."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _grow(path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def _temp_files(d):
    return sorted(p.name for p in d.iterdir() if ".tmp" in p.name)


def _files(d) -> dict:
    return {p.name: p.read_bytes() for p in d.iterdir()}


# ---- conversion ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    c = make_random_checkpoint(root / "training", tiny_config(), seed=3)
    ref = convert(c, root / "ref.gguf", progress=False)
    return c, ref.read_bytes()


def test_conversion_on_a_full_disk_keeps_the_earlier_file(ckpt, tmp_path, capsys):
    src, ref = ckpt
    size = len(ref)
    with small_disk(tmp_path / "disk", _pages(size) + _pages(size // 2)) as disk:
        dst = disk / "out.gguf"
        earlier = b"GGUF" + bytes(size - 4)   # an earlier file of the same size: the new one cannot fit beside it
        dst.write_bytes(earlier)
        with pytest.raises(OSError) as e:
            convert(src, dst, progress=False)
        assert e.value.errno == errno.ENOSPC
        assert str(e.value).startswith(f"[Errno {errno.ENOSPC}] no space left on device writing out.gguf.tmp-")
        assert f"(the file needs about {size / 2**20:.1f} MiB); {dst} is unchanged" in str(e.value)
        assert dst.read_bytes() == earlier and _temp_files(disk) == []
        # The command line says the same and exits 1.
        assert main_convert([str(src), str(dst), "-q"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("mole convert: error: [Errno 28] no space left on device writing out.gguf.tmp-"), err
        assert dst.read_bytes() == earlier and _temp_files(disk) == []
        # No earlier file: nothing is left behind at all.
        dst.unlink()
        (disk / "filler").write_bytes(bytes(_pages(size)))   # leaves half the file's size free
        with pytest.raises(OSError, match=f"nothing was written to {dst}"):
            convert(src, dst, progress=False)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
        # Room again: the conversion goes through and gives the same file as anywhere else.
        (disk / "filler").unlink()
        convert(src, dst, progress=False)
        assert dst.read_bytes() == ref


# ---- training --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(_TINY_TEXT * 30)
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory, text_file):
    """An uninterrupted 12-step run (saves at 4, 8 and 12): its log and the size of each file it saves."""
    out = tmp_path_factory.mktemp("straight")
    assert train_main(["--data", str(text_file), "--out", str(out), *STEPS]) == 0
    log = json.loads((out / "train_log.json").read_text())
    sizes = {p.name: p.stat().st_size for p in out.iterdir() if p.name != "train_log.json"}
    return log, sizes


def _resume_matches(out, text_file, straight_log, resumed_from):
    assert train_main(["--data", str(text_file), "--out", str(out), *STEPS, "--resume"]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["resumed_from"] == resumed_from and log["steps"] == 12
    assert log["train_loss"] == pytest.approx(straight_log["train_loss"], rel=1e-5)
    assert _temp_files(out) == []


def test_training_on_a_full_disk_keeps_the_last_checkpoint_and_resumes(tmp_path, text_file, straight):
    """Room for one save and, beside it, a new model.safetensors but not a new train_state.pt: the save at step 8
    fails with an error saying what train_state.pt still holds; every file is whole; with room again, --resume
    continues from step 4 and ends as the uninterrupted run does."""
    log, sizes = straight
    one_save = sum(_pages(n) for n in sizes.values())
    size = one_save + _pages(sizes["model.safetensors"]) + _pages(sizes["train_state.pt"] // 2)
    with small_disk(tmp_path / "disk", size) as disk:
        out = disk / "run"
        with pytest.raises(OSError) as e:
            train_main(["--data", str(text_file), "--out", str(out), *STEPS])
        assert e.value.errno == errno.ENOSPC
        assert str(e.value) == (f"[Errno {errno.ENOSPC}] no space left on device saving the checkpoint of step 8 in "
                                f"{out}; train_state.pt still holds step 4 (--resume continues from it)")
        assert _temp_files(out) == []
        assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 4
        load_file(out / "model.safetensors")   # whole (step 8's: it was replaced before the state failed)
        assert not (out / "train_log.json").exists()
        _grow(disk, 4 * one_save)
        _resume_matches(out, text_file, log, resumed_from=4)


_SLOW_SAVE = r"""
import pathlib, sys, time
import safetensors.torch as st
orig, calls = st.save_file, []
def slow(tensors, filename, metadata=None):
    orig(tensors, filename, metadata=metadata)   # the temporary file is written whole, not yet renamed
    calls.append(filename)
    if len(calls) == 2:
        pathlib.Path(sys.argv[1]).write_text(filename)
        time.sleep(60)
st.save_file = slow
from mole_convert.train import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_training_keeps_the_last_checkpoint_and_resumes(tmp_path, text_file, straight, sig):
    """SIGINT or SIGTERM in the middle of the save at step 8: the files of step 4's save are left byte for byte,
    the temporary file is removed, and --resume goes on from step 4 as the uninterrupted run did."""
    out, marker = tmp_path / "run", tmp_path / "saving"
    p = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(marker), "--data", str(text_file), "--out", str(out),
                          *STEPS], stderr=subprocess.PIPE, text=True, preexec_fn=child_takes_sigint)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert p.poll() is None, p.stderr.read()
            assert time.time() < deadline, "training never reached its second save"
            time.sleep(0.05)
        before = {n: b for n, b in _files(out).items() if ".tmp" not in n}
        assert _temp_files(out) and torch.load(out / "train_state.pt", weights_only=True)["step"] == 4
        p.send_signal(sig)
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = p.stderr.read()
    if sig == signal.SIGINT:
        assert rc == 130, err
        assert f"interrupted; {out / 'train_state.pt'} holds the last saved step; continue with --resume" in err
    else:
        assert rc == 128 + signal.SIGTERM, err
    assert _temp_files(out) == [] and _files(out) == before
    if sig == signal.SIGINT:
        _resume_matches(out, text_file, straight[0], resumed_from=4)
