"""Several contexts of one model driven from Python threads at once (cffi releases the GIL, so the
decodes really run together) give the logits they give one after another; closing a Model twice is
harmless, and a closed Model says so."""
import threading

import numpy as np
import pytest

import mole
from mole import _ffi


def test_contexts_of_one_model_in_threads(model_factory):
    path, _, _ = model_factory("q8_0", "q8_0")
    L = _ffi.get()
    ffi, lib = L.ffi, L.lib
    out = ffi.new("struct mole_model **")
    _ffi.check(lib.mole_model_load(str(path).encode(), ffi.NULL, out))
    model = ffi.gc(out[0], lib.mole_model_free)
    info = ffi.new("struct mole_model_info *")
    _ffi.check(lib.mole_model_get_info(model, info))
    V = info.n_vocab
    seqs = [np.array([(i * 31 + t * 7 + 1) % V for i in range(40)], np.int32) for t in range(4)]

    def run(ids):
        p = ffi.new("struct mole_context_params *")
        lib.mole_context_default_params(p)
        p.n_ctx, p.n_threads, p.lut_cache_mb = 64, 1, 1
        c = ffi.new("struct mole_context **")
        _ffi.check(lib.mole_context_new(model, p, c))
        ctx = ffi.gc(c[0], lib.mole_context_free)
        logits = np.empty((len(ids), V), np.float32)
        for i in range(0, len(ids), 8):   # a few steps each, interleaving with the other threads
            chunk = ids[i:i + 8]
            _ffi.check(lib.mole_decode(ctx, len(chunk), ffi.from_buffer("int32_t[]", chunk), ffi.NULL, ffi.NULL,
                                       ffi.from_buffer("float[]", logits[i:]), logits[i:].size))
        return logits

    ref = [run(s) for s in seqs]
    got = [None] * len(seqs)

    def worker(t):
        got[t] = run(seqs[t])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(seqs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(len(seqs)):
        np.testing.assert_array_equal(got[t], ref[t])


def test_close_twice_is_harmless(model_factory):
    path, _, _ = model_factory("q8_0", "f32")
    m = mole.Model(str(path), n_ctx=32)
    m.close()
    m.close()
    with pytest.raises(mole.MoleError, match="closed"):
        m.logits([1, 2])
