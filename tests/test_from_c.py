"""What the Python side reads from the C library instead of repeating it: sampling and context defaults
(Model, chat, the CLI and its --help), the status codes behind the exceptions, the device ids, and the
version (CMakeLists.txt's project version, the package metadata, mole.__version__, mole_version())."""
import re
from importlib import metadata
from pathlib import Path

import pytest

import mole
from mole import _ffi, cli
from mole import gguf_names as G

REPO = Path(__file__).resolve().parent.parent
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n")
CONTEXT = ("n_ctx", "n_seq_max", "n_threads", "n_batch", "lut_cache_mb", "type_kv")
# Defaults unlike the library's, each exactly representable in float32.
ODD_SAMPLING = dict(temperature=0.5, top_k=7, top_p=0.75, min_p=0.125, repeat_penalty=1.25, repeat_last_n=9)


@pytest.fixture(scope="module")
def model_path(model_factory):
    return str(model_factory()[0])


class _Spy:
    """Stands in for the cffi lib: forwards everything, optionally fills the *_default_params structs with
    other values, and records the params every sampler and context is made with."""

    def __init__(self, real, sampling=None, context=None):
        self._real, self._sampling, self._context = real, sampling or {}, context or {}
        self.samplers, self.contexts = [], []

    def mole_sampler_default_params(self, p):
        self._real.mole_sampler_default_params(p)
        for k, v in self._sampling.items():
            setattr(p, k, v)

    def mole_context_default_params(self, p):
        self._real.mole_context_default_params(p)
        for k, v in self._context.items():
            setattr(p, k, v)

    def mole_sampler_new(self, p, out):
        self.samplers.append({k: getattr(p, k) for k in SAMPLING})
        return self._real.mole_sampler_new(p, out)

    def mole_context_new(self, model, p, out):
        self.contexts.append({k: getattr(p, k) for k in CONTEXT})
        return self._real.mole_context_new(model, p, out)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def spy(monkeypatch):
    """spy(sampling={...}, context={...}) -> a _Spy installed as the loaded library's lib."""
    L = _ffi.get()

    def install(**kw):
        s = _Spy(L.lib, **kw)
        monkeypatch.setattr(L, "lib", s)
        return s

    return install


def _c_sampling():
    d = _ffi.sampler_defaults()
    return {k: d[k] for k in SAMPLING}


# ---- sampling -------------------------------------------------------------------------------------

def test_generate_and_chat_leave_the_sampling_defaults_to_c(model_path, spy):
    real = _c_sampling()
    assert real == pytest.approx(dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                                      repeat_last_n=64))    # mole.h's documented defaults
    for sampling in ({}, ODD_SAMPLING):
        s = spy(sampling=sampling)
        want = dict(real, **sampling)
        with mole.Model(model_path, n_ctx=64) as m:
            m.generate("The", max_tokens=1)
            m.generate("The", max_tokens=1, stream=True).close()
            m.chat([{"role": "user", "content": "Hi"}], max_tokens=1)
        assert s.samplers == [want] * 2 + [want], f"with C defaults {sampling or 'unchanged'}"


def test_explicit_sampling_options_override_only_themselves(model_path, spy):
    s = spy(sampling=ODD_SAMPLING)
    with mole.Model(model_path, n_ctx=64) as m:
        m.generate("The", max_tokens=1, temperature=0.0, top_k=3)
        m.chat([{"role": "user", "content": "Hi"}], max_tokens=1, repeat_penalty=1.5, min_p=0.0)
    assert s.samplers == [dict(ODD_SAMPLING, temperature=0.0, top_k=3),
                          dict(ODD_SAMPLING, repeat_penalty=1.5, min_p=0.0)]


def test_cli_sampling_comes_from_c(model_path, spy, capsys):
    s = spy(sampling=ODD_SAMPLING, context=dict(lut_cache_mb=3))
    assert cli.main(["run", "-m", model_path, "-p", "The", "-n", "1"]) == 0
    assert s.samplers == [ODD_SAMPLING]                      # the CLI used to say repeat_penalty 1.1
    assert s.contexts[0]["lut_cache_mb"] == 3 and s.contexts[0]["n_ctx"] == 0
    assert cli.main(["run", "-m", model_path, "-p", "The", "-n", "1", "--temp", "0", "--repeat-penalty", "2"]) == 0
    assert s.samplers[1] == dict(ODD_SAMPLING, temperature=0.0, repeat_penalty=2.0)


def _subcommand_help(name: str) -> str:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[name]
    return sub.format_help()


@pytest.mark.parametrize("sampling", [None, ODD_SAMPLING])
def test_cli_help_shows_the_library_defaults(spy, sampling):
    if sampling:
        spy(sampling=sampling, context=dict(lut_cache_mb=3))
    d, ctx = _ffi.sampler_defaults(), _ffi.context_defaults()
    flags = {"temperature": "--temp", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
             "repeat_penalty": "--repeat-penalty", "repeat_last_n": "--repeat-last-n"}
    for command in ("run", "chat"):
        text = " ".join(_subcommand_help(command).split())   # argparse wraps lines
        for key, flag in flags.items():
            m = re.search(re.escape(flag) + r" \S+ [^(]*\(default ([^)]+)\)", text)
            assert m and m.group(1) == _ffi.show(d[key]), (command, flag, m and m.group(1), d[key])
        cache = "the backend's choice, 64 on the CPU" if ctx["lut_cache_mb"] == -1 else ctx["lut_cache_mb"]
        assert f"0 disables (default {cache})" in text or f"0 disables (default: {cache})" in text
    assert _ffi.show(0.949999988079071) == "0.95" and _ffi.show(40) == "40"


def test_docstrings_state_the_library_defaults():
    d = _ffi.sampler_defaults()
    doc = " ".join(mole.Model.generate.__doc__.split())
    for key in SAMPLING:
        assert f"{key} {_ffi.show(d[key])}" in doc, key
    ctx = _ffi.context_defaults()
    doc = " ".join(mole.Model.__doc__.split())
    cache = ("the backend's choice of LUT row cache" if ctx["lut_cache_mb"] == -1
             else f"{ctx['lut_cache_mb']} MB LUT row cache")
    assert f"{ctx['n_batch']} tokens per forward step" in doc and cache in doc
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"temperature {_ffi.show(d['temperature'])}, top-k {d['top_k']}, top-p {_ffi.show(d['top_p'])}, "
            f"min-p {_ffi.show(d['min_p'])}, no repetition penalty") in readme and d["repeat_penalty"] == 1.0


# ---- context ---------------------------------------------------------------------------------------

def test_context_defaults_come_from_c(model_path, spy):
    with mole.Model(model_path) as m:             # n_ctx None: C's 0, the model's training context
        assert m.n_ctx == m.metadata[G.KEY_CONTEXT_LENGTH] == 256
        assert m.n_batch == _ffi.context_defaults()["n_batch"] == 512
    s = spy(context=dict(n_batch=7, lut_cache_mb=3))
    with mole.Model(model_path) as m:
        assert m.n_batch == 7
        assert m.logits(list(range(20))).shape == (20, m.n_vocab)    # 20 tokens in chunks of 7
    with mole.Model(model_path, n_ctx=32, n_threads=1, n_batch=5, lut_cache_mb=0) as m:
        assert (m.n_ctx, m.n_threads, m.n_batch) == (32, 1, 5)
    assert s.contexts[0] == dict(_ffi.context_defaults(), n_batch=7, lut_cache_mb=3)
    assert s.contexts[1] == dict(s.contexts[0], n_ctx=32, n_threads=1, n_batch=5, lut_cache_mb=0)
    assert s.contexts[0]["type_kv"] == -1           # kv_type None: the backend's own (C's -1)
    with mole.Model(model_path, n_ctx=32, kv_type="f32") as m:
        assert m.kv_type == "f32"
    assert s.contexts[2] == dict(s.contexts[0], n_ctx=32, type_kv=_ffi.get().lib.MOLE_TYPE_F32)
    for bad in (dict(n_ctx=0), dict(n_batch=0), dict(n_threads=-1), dict(lut_cache_mb=-2), dict(n_ctx=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            mole.Model(model_path, **bad)


# ---- statuses and devices --------------------------------------------------------------------------

EXPECTED_CLASSES = {
    "MOLE_STATUS_INVALID_ARGUMENT": mole.InvalidArgumentError,
    "MOLE_STATUS_FILE_NOT_FOUND": mole.ModelFileNotFoundError,
    "MOLE_STATUS_IO_ERROR": mole.ModelIOError, "MOLE_STATUS_FORMAT_ERROR": mole.FormatError,
    "MOLE_STATUS_OUT_OF_MEMORY": mole.ModelMemoryError, "MOLE_STATUS_CONTEXT_FULL": mole.ContextFullError,
    "MOLE_STATUS_UNSUPPORTED": mole.UnsupportedError, "MOLE_STATUS_CANCELLED": mole.CancelledError,
    "MOLE_STATUS_BACKEND_ERROR": mole.BackendError,
    "MOLE_STATUS_BUFFER_TOO_SMALL": mole.MoleError, "MOLE_STATUS_INTERNAL_ERROR": mole.MoleError,
}


def test_every_status_of_the_header_has_its_exception():
    L = _ffi.get()
    statuses = L.ffi.typeof("enum mole_status").relements      # name -> value, as the header declares them
    assert set(statuses) == set(EXPECTED_CLASSES) | {"MOLE_STATUS_OK"}, "a status without a decided exception"
    assert _ffi.check(statuses["MOLE_STATUS_OK"]) is None
    for name, cls in EXPECTED_CLASSES.items():
        with pytest.raises(mole.MoleError) as e:
            _ffi.check(statuses[name], "doing it")
        assert type(e.value) is cls, name
        assert str(e.value).startswith("doing it: "), name


def test_status_map_and_device_ids_follow_the_header(model_path, monkeypatch, tmp_path):
    """With a header whose statuses and devices are renumbered, the binding follows the header's numbers:
    no integer literal of its own stands in for them."""
    header = _ffi._header_path().read_text()
    header = re.sub(r"(MOLE_STATUS_(?!OK\b)\w+\s*=\s*)(\d+)", lambda m: f"{m.group(1)}{int(m.group(2)) + 20}", header)
    header = re.sub(r"(MOLE_DEVICE_CPU\s*=\s*)0", r"\g<1>5", header)
    assert "MOLE_STATUS_FORMAT_ERROR = 24" in header and "MOLE_DEVICE_CPU = 5" in header
    (tmp_path / "mole.h").write_text(header)
    monkeypatch.setattr(_ffi, "_header_path", lambda: tmp_path / "mole.h")
    monkeypatch.setattr(_ffi, "_loaded", _ffi._Lib())
    assert _ffi.get().BUFFER_TOO_SMALL == 27
    with pytest.raises(mole.FormatError):
        _ffi.check(24)
    with pytest.raises(mole.MoleError) as e:
        _ffi.check(4)                                  # 4 is no longer FORMAT_ERROR
    assert type(e.value) is mole.MoleError
    # device="cpu" is sent as the header's MOLE_DEVICE_CPU, which this library does not know
    with pytest.raises(mole.MoleError, match="unknown device 5"):
        mole.Model(model_path, n_ctx=16, device="cpu")


# ---- version ---------------------------------------------------------------------------------------

def _cmake_version() -> str:
    """The project version, read with pyproject.toml's own regex (so that regex is tested too)."""
    tomllib = pytest.importorskip("tomllib")
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in tool["project"] and "version" in tool["project"]["dynamic"]
    cfg = tool["tool"]["scikit-build"]["metadata"]["version"]
    assert cfg["provider"] == "scikit_build_core.metadata.regex" and cfg["input"] == "CMakeLists.txt"
    m = re.search(cfg["regex"], (REPO / cfg["input"]).read_text(), re.MULTILINE)
    assert m, f"pyproject.toml's version regex finds nothing in {cfg['input']}"
    line = next(ln for ln in (REPO / "CMakeLists.txt").read_text().splitlines() if ln.startswith("project("))
    assert f"VERSION {m['value']} " in line, line
    return m["value"]


def test_one_version_everywhere():
    v = _cmake_version()
    L = _ffi.get()
    assert L.ffi.string(L.lib.mole_version()).decode() == v, "the library's mole_version()"
    assert mole.__version__ == v
    try:
        installed = metadata.version(mole.DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{mole.DISTRIBUTION} is not installed: no package metadata to compare")
    assert installed == v, f"installed {mole.DISTRIBUTION} {installed} is stale: reinstall after a version change"


def test_version_is_read_from_the_metadata_else_from_the_library(monkeypatch):
    monkeypatch.setattr(metadata, "version", lambda name: {mole.DISTRIBUTION: "9.8.7"}[name])
    assert mole.__version__ == "9.8.7"

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)   # a source tree that is not installed
    L = _ffi.get()
    assert mole.__version__ == L.ffi.string(L.lib.mole_version()).decode()
    fake = L.ffi.new("char[]", b"7.6.5")
    monkeypatch.setattr(L, "lib", type("Lib", (), {"mole_version": staticmethod(lambda: fake)})())
    assert mole.__version__ == "7.6.5"
