"""mole.batch (continuous batching over one context's sequences) and Model.generate_batch: batched text equals
one-by-one text, each job keeps its own options, a new prompt joins in chunks beside running sequences, cancelled
and finished jobs free their sequences at the next step, shared LUT rows are fetched once, the prefix cache."""
import numpy as np
import pytest

import mole
from mole.batch import Batcher, Job

PROMPTS = ["Hello there", "The cat", "a", "Once upon a time in a land far away", "x y z", "Hello world", "ab cd"]


@pytest.fixture(scope="module")
def path(model_factory):
    p, _, _ = model_factory(lut_type="q8_0", weight_type="f16", seed=21, max_position_embeddings=512)
    return str(p)


@pytest.fixture(scope="module")
def model(path):
    with mole.Model(path, n_ctx=256, n_threads=1, n_seq_max=3) as m:
        yield m


def test_generate_batch_equals_generate_one_by_one(model):
    solo = [model.generate(p, max_tokens=24, temperature=0) for p in PROMPTS]
    assert model.generate_batch(PROMPTS, max_tokens=24, temperature=0) == solo
    # seeded sampling too: a sequence's logits do not depend on the others in its step
    solo = [model.generate(p, max_tokens=24, temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=5) for p in PROMPTS]
    assert model.generate_batch(PROMPTS, max_tokens=24, temperature=0.9, top_k=0, top_p=1.0, min_p=0.0,
                                seed=5) == solo
    assert len(set(solo)) > 1
    # the repetition penalty sees each prompt's tokens, as generate's does
    kw = dict(max_tokens=24, temperature=0.7, seed=3, repeat_penalty=1.5, repeat_last_n=64)
    assert model.generate_batch(PROMPTS[:3], **kw) == [model.generate(p, **kw) for p in PROMPTS[:3]]
    # the Model is usable as before afterwards
    assert model.generate(PROMPTS[0], max_tokens=24, temperature=0) == \
        model.generate_batch(PROMPTS[:1], max_tokens=24, temperature=0)[0]


def test_generate_batch_checks_its_arguments(model):
    with pytest.raises(ValueError):
        model.generate_batch("one string", max_tokens=4)
    with pytest.raises(ValueError):
        model.generate_batch(["a"], max_tokens=-1)
    with pytest.raises(ValueError):
        model.generate_batch(["a"], temperature=-1)
    with pytest.raises(mole.ContextFullError):
        model.generate_batch(["a", [1] * 300])
    assert model.generate_batch([], max_tokens=4) == []


def run(b: Batcher, jobs):
    """Steps until every job is done; returns each job's text and the steps' deltas."""
    for j in jobs:
        b.submit(j)
    text = {id(j): [] for j in jobs}
    while b.busy:
        for d in b.step():
            text[id(d.job)].append(d.text)
    return ["".join(text[id(j)]) for j in jobs]


def test_each_job_keeps_its_own_options(model):
    ids = [model.tokenize(p) for p in PROMPTS[:4]]
    opts = [dict(max_tokens=5, temperature=0), dict(max_tokens=30, temperature=0.8, seed=1),
            dict(max_tokens=12, temperature=1.2, seed=2, top_k=5), dict(max_tokens=20, temperature=0)]
    solo = [model.generate(i, **o) for i, o in zip(ids, opts, strict=True)]
    greedy = model.generate(ids[3], max_tokens=20, temperature=0)
    stop = greedy[len(greedy) // 2:len(greedy) // 2 + 2]
    with Batcher(model) as b:
        jobs = [Job(i, **o) for i, o in zip(ids, opts, strict=True)]
        jobs[3] = Job(ids[3], max_tokens=20, temperature=0, stop=[stop])
        texts = run(b, jobs)
    assert texts[:3] == solo[:3]
    assert texts[3] == greedy[:greedy.index(stop)] and jobs[3].finish_reason == "stop"
    assert jobs[0].n_generated == 5 and jobs[0].finish_reason == "length"


def test_a_new_prompt_joins_in_chunks_beside_running_sequences(model):
    """step_tokens 8: the running job gets its token every step, the new prompt is read 7 tokens at a time."""
    with Batcher(model, step_tokens=8) as b:
        a = Job(model.tokenize("Hello"), max_tokens=40, temperature=0, ignore_eos=True)
        b.submit(a)
        while a.status != "decode":
            b.step()
        long_prompt = list(np.random.default_rng(0).integers(1, model.n_vocab, size=30))
        c = Job(long_prompt, max_tokens=3, temperature=0, ignore_eos=True)
        b.submit(c)
        seen = []
        while c.status != "decode":
            before = a.n_generated
            b.step()
            assert a.n_generated == before + 1          # never held up
            seen.append(c.n_past)
        assert seen == [7, 14, 21, 28, 30] and b.last_step_rows == 3
        b.step()
        assert c.n_generated >= 1 and a.status == "decode"


def test_cancel_and_finish_free_the_sequence_at_the_next_step(model):
    with Batcher(model, n_seq=2) as b:
        jobs = [Job(model.tokenize(p), max_tokens=100, temperature=0, ignore_eos=True) for p in PROMPTS[:3]]
        for j in jobs:
            b.submit(j)
        b.step()
        assert [j.status for j in jobs] == ["decode", "decode", "waiting"]
        jobs[0].cancel()
        assert jobs[0].slot is not None                  # nothing happens until the next step
        deltas = b.step()
        assert jobs[0].finish_reason == "cancelled" and any(d.job is jobs[0] and d.finish == "cancelled"
                                                            for d in deltas)
        assert jobs[0].slot is None and jobs[2].status == "decode"
        used, _ = b.kv_tokens()
        assert used == sum(len(j.slot.tokens) for j in jobs[1:])
        jobs[1].cancel()
        jobs[2].cancel()
        b.step()
        assert not b.busy and b.kv_tokens()[0] == 0 and not b.running


def test_shared_rows_fetched_once_per_step(path):
    """Two sequences holding the same token in one step fetch its LUT row once (no row cache)."""
    with mole.Model(path, n_ctx=64, n_threads=1, n_seq_max=2, lut_cache_mb=0) as m:
        with Batcher(m) as b:
            p = [5, 6, 7, 8]
            b.submit(Job(p, max_tokens=1, temperature=0))
            b.submit(Job(p, max_tokens=1, temperature=0))
            b.step()
            assert b.last_step_rows == 8
        s = m.stats()
        assert s["lut_rows_fetched"] == 4 and s["tokens_evaluated"] == 8


def test_prefix_cache_reuses_a_free_sequence(model):
    ids = model.tokenize("Once upon a time in a land far away there lived")
    with Batcher(model, n_seq=2) as b:
        first = run(b, [Job(ids, max_tokens=8, temperature=0)])
        again = Job(ids + model.tokenize(" a"), max_tokens=8, temperature=0)
        second = run(b, [again])
        assert again.n_cached == len(ids)                 # the whole earlier prompt came from the cache
        scored = Job(ids, max_tokens=8, temperature=0, prompt_logprobs=True)
        assert run(b, [scored]) == first and scored.n_cached == 0
    assert second == [model.generate(ids + model.tokenize(" a"), max_tokens=8, temperature=0)]


def test_logprobs_are_the_models_log_softmax(model):
    ids = model.tokenize("The cat")
    with Batcher(model) as b:
        j = Job(ids, max_tokens=4, temperature=0, logprobs=3, prompt_logprobs=True)
        b.submit(j)
        lps, prompt_lps = [], None
        while b.busy:
            for d in b.step():
                lps += d.logprobs
                prompt_lps = d.prompt_logprobs if d.prompt_logprobs is not None else prompt_lps
    toks = [e.token for e in lps]
    ref = model.logits(ids + toks).astype(np.float64)
    ref -= ref.max(axis=1, keepdims=True)
    ref -= np.log(np.exp(ref).sum(axis=1, keepdims=True))
    # The generated tokens' logits come from one-token decode steps, the reference's from one prompt
    # pass: the attention sums in another order there (1.3e-6 apart on AVX2), so float32 rounding,
    # not 1e-6; a wrong position, temperature or normalization is off by far more.
    tol = 1e-5
    for k, e in enumerate(lps):
        row = ref[len(ids) - 1 + k]
        assert e.token == int(np.argmax(row))             # greedy
        assert abs(e.logprob - row[e.token]) < tol
        assert [t for t, _ in e.top] == list(np.argsort(-row, kind="stable")[:3])
    assert [e.token for e in prompt_lps] == ids and prompt_lps[0].logprob is None
    for k in range(1, len(ids)):
        assert abs(prompt_lps[k].logprob - ref[k - 1][ids[k]]) < 1e-6


def test_model_methods_wait_for_the_batcher(model):
    """While a Batcher owns the context, the Model's own calls raise and leave its sequences alone."""
    ids = model.tokenize("Once upon a time")
    with Batcher(model, n_seq=1) as b:
        alone = run(b, [Job(ids, max_tokens=12, temperature=0, ignore_eos=True)])
    b = Batcher(model, n_seq=1)
    j = Job(ids, max_tokens=12, temperature=0, ignore_eos=True)
    b.submit(j)
    text = [d.text for d in b.step()]
    for call in (lambda: model.generate("a", max_tokens=2), lambda: model.logits([1, 2]), model.reset,
                 lambda: model.eval([3])):
        with pytest.raises(mole.MoleError, match="in use by a batch"):
            call()
    with pytest.raises(mole.MoleError, match="already in use"):
        Batcher(model)
    while b.busy:
        text += [d.text for d in b.step()]
    assert ["".join(text)] == alone                        # the sequence was not touched
    b.close()
    assert isinstance(model.generate("a", max_tokens=2, temperature=0), str)
