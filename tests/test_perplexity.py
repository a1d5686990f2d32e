"""`mole perplexity` (and mole.perplexity) against a perplexity computed in PyTorch, here, from the model the
file was converted from: the same sliding windows, each token's NLL, the mean, its standard error, bits/byte."""
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import mole  # noqa: E402
from mole.perplexity import perplexity, token_nll  # noqa: E402

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
        "of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families. ") * 3


def torch_nll(cfg, ids, window: int) -> np.ndarray:
    """float64 NLL of ids[1:] from the PyTorch model: windows [b, b + window) for b = 0, window/2, ...; target i
    is scored in the first window whose end passes it (the window giving it the most context)."""
    from mole_convert.testing import random_model
    model = random_model(cfg, 0, "training").double().eval()
    nll = np.full(len(ids) - 1, np.nan)
    b = 0
    with torch.no_grad():
        while np.isnan(nll).any():
            chunk = torch.tensor([ids[b:b + window]])
            logp = torch.log_softmax(model(chunk)[0], dim=-1)                  # [len(chunk), V]
            for i in range(b + 1, min(b + window, len(ids))):
                if np.isnan(nll[i - 1]):
                    nll[i - 1] = -float(logp[i - 1 - b, ids[i]])
            b += window // 2
    return nll


@pytest.fixture(scope="module")
def model(model_factory):
    path, _, cfg = model_factory("f32", "f32")
    return path, cfg


@pytest.mark.parametrize("window", [16, 40, 256])   # many windows, an odd stride, one window for the whole text
def test_token_nll_matches_pytorch(model, window):
    path, cfg = model
    with mole.Model(str(path), n_ctx=256, n_threads=2, kv_type="f32") as m:   # the windows' math, unrounded
        ids = m.tokenize(TEXT)
        assert len(ids) > 2 * window or window == 256
        got = token_nll(m, ids, window)
    ref = torch_nll(cfg, ids, window)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_cli_reports_the_pytorch_numbers_with_standard_errors(model, tmp_path):
    path, cfg = model
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    r = subprocess.run([sys.executable, "-m", "mole", "perplexity", "-m", str(path), "-f", str(text), "-c", "40"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fields = r.stdout.split()
    def value(name):   # "name X ± SE"
        i = fields.index(name)
        assert fields[i + 2] == "±", r.stdout
        return float(fields[i + 1]), float(fields[i + 3])

    with mole.Model(str(path), n_ctx=256) as m:
        ids = m.tokenize(TEXT)
    ref = torch_nll(cfg, ids, 40)
    n, n_bytes = ref.size, len(TEXT.encode())
    se = ref.std(ddof=1) / math.sqrt(n)
    assert int(fields[fields.index("tokens") + 1]) == n
    ppl, ppl_se = value("ppl")
    assert ppl == pytest.approx(math.exp(ref.mean()), rel=1e-3) and ppl_se == pytest.approx(ppl * se, rel=1e-2)
    nll, nll_se = value("nll/token")
    assert nll == pytest.approx(ref.mean(), rel=1e-3) and nll_se == pytest.approx(se, rel=1e-2)
    bpb, bpb_se = value("bits/byte")
    assert bpb == pytest.approx(ref.sum() / math.log(2) / n_bytes, rel=1e-3)
    assert bpb_se == pytest.approx(se * n / math.log(2) / n_bytes, rel=1e-2)


def test_library_result_and_bad_input(model):
    path, _ = model
    with mole.Model(str(path), n_ctx=64) as m:
        r = perplexity(m, TEXT, 64)
        assert r.n_tokens == len(m.tokenize(TEXT)) - 1 and r.n_bytes == len(TEXT.encode())
        assert 0 < r.nll_se < r.nll and r.ppl == pytest.approx(math.exp(r.nll))
        assert perplexity(m, TEXT, 10**6).n_tokens == r.n_tokens        # a window past n_ctx is n_ctx
        with pytest.raises(ValueError, match="at least 2 tokens"):
            perplexity(m, "", 64)
        with pytest.raises(ValueError, match="window of at least 2"):
            token_nll(m, [1, 2, 3], 1)
