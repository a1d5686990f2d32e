// Token sampler (llama.cpp order): repetition penalty -> top-k -> top-p -> min-p -> temperature ->
// draw from a seeded xoshiro256**. Works in a candidate buffer kept in the object: no allocation per
// sample once the buffer has grown to n_vocab.
#include "sampler.h"

#include <algorithm>
#include <cmath>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace mole {

void Rng::seed_with(uint64_t seed) {
    // splitmix64 expands the seed into the 256-bit state (never all zero).
    uint64_t x = seed;
    for (uint64_t &s : s_) {
        uint64_t z = (x += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        s = z ^ (z >> 31);
    }
}

uint64_t Rng::next() {
    auto rotl = [](uint64_t v, int k) { return (v << k) | (v >> (64 - k)); };
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
}

Status Sampler::create(const mole_sampler_params &p, std::unique_ptr<Sampler> *out) {
    if (!std::isfinite(p.temperature))   // +inf would weigh a -inf logit by inf * 0 = NaN
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: temperature = %g is not a finite number",
                         (double)p.temperature);
    if (p.top_k < 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: top_k = %d is negative (0 turns it off)", p.top_k);
    if (!(p.top_p >= 0.0f && p.top_p <= 1.0f))
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: top_p = %g is outside [0, 1] (1 turns it off)",
                         (double)p.top_p);
    if (!(p.min_p >= 0.0f && p.min_p <= 1.0f))
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: min_p = %g is outside [0, 1] (0 turns it off)",
                         (double)p.min_p);
    if (!(p.repeat_penalty > 0.0f) || std::isinf(p.repeat_penalty))
        return set_error(MOLE_STATUS_INVALID_ARGUMENT,
                         "sampler: repeat_penalty = %g must be a positive number (1 turns it off)",
                         (double)p.repeat_penalty);
    if (p.repeat_last_n < 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: repeat_last_n = %d is negative", p.repeat_last_n);
    out->reset(new Sampler(p));
    // The history grows as tokens come (a huge repeat_last_n must not reserve gigabytes up front).
    (*out)->history_.reserve((size_t)std::min(p.repeat_last_n, 4096));
    (*out)->recent_.reserve((size_t)std::min(p.repeat_last_n, 4096));
    return MOLE_STATUS_OK;
}

void Sampler::accept(int32_t token) {
    const size_t n = (size_t)params_.repeat_last_n;
    if (n == 0) return;
    if (history_.size() < n)
        history_.push_back(token);
    else
        history_[history_pos_] = token;
    history_pos_ = (history_pos_ + 1) % n;
}

void Sampler::reset() {
    history_.clear();
    history_pos_ = 0;
    rng_.seed_with(params_.seed);
}

namespace {

// Scalar scan of [i, n): the first NaN or +inf (returned), else the first of the largest values
// above *best_logit (into *best, *best_logit); -1 when none is bad.
int32_t argmax_scan(const float *x, int32_t i, int32_t n, int32_t *best, float *best_logit) {
    for (; i < n; i++) {
        const float l = x[i];
        if (!(l < INFINITY)) return i;
        if (l > *best_logit) {
            *best_logit = l;
            *best = i;
        }
    }
    return -1;
}

// The first index of the largest of x[0 .. n) into *best; returns the first NaN or +inf index, or -1.
// In blocks of 32 with SSE2 (every x86-64), each block's max and NaN/+inf flag in 4 lanes; the scalar scan
// elsewhere and for the tail.
int32_t argmax_finite(const float *x, int32_t n, int32_t *best) {
    float best_logit = -INFINITY;
    *best = 0;
    int32_t i = 0;
#if defined(__SSE2__)
    const __m128 inf = _mm_set1_ps(INFINITY);
    for (; i + 32 <= n; i += 32) {
        __m128 m0 = _mm_set1_ps(-INFINITY), m1 = m0, bad = _mm_setzero_ps();
        for (int j = 0; j < 32; j += 8) {
            const __m128 a = _mm_loadu_ps(x + i + j), b = _mm_loadu_ps(x + i + j + 4);
            bad = _mm_or_ps(bad, _mm_or_ps(_mm_cmpnlt_ps(a, inf), _mm_cmpnlt_ps(b, inf)));   // NaN or +inf
            m0 = _mm_max_ps(m0, a);
            m1 = _mm_max_ps(m1, b);
        }
        if (_mm_movemask_ps(bad)) return argmax_scan(x, i, i + 32, best, &best_logit);   // names the first
        m0 = _mm_max_ps(m0, m1);
        m0 = _mm_max_ps(m0, _mm_movehl_ps(m0, m0));
        m0 = _mm_max_ss(m0, _mm_shuffle_ps(m0, m0, 1));
        const float bm = _mm_cvtss_f32(m0);
        if (bm > best_logit) {   // earlier blocks are all below bm: its first occurrence here is the first
            int32_t j = i;
            while (x[j] != bm) j++;
            *best = j;
            best_logit = bm;
        }
    }
#endif
    return argmax_scan(x, i, n, best, &best_logit);
}

}  // namespace

Status Sampler::sample(const float *logits, int32_t n_vocab, int32_t *token_out) {
    if (logits == nullptr || token_out == nullptr)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: logits or token_out is NULL");
    if (n_vocab < 1) return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: n_vocab = %d (need at least 1)", n_vocab);
    if (params_.temperature <= 0.0f && (params_.repeat_penalty == 1.0f || history_.empty())) {
        // Greedy without a penalty: one pass over the logits, no candidate list. bench/bench_sampler.py
        // --temperature 0 (50,304 logits, Zen 4): 0.010 ms a draw against 0.073-0.117 ms for writing the
        // candidates and scanning them, once per sequence in every batched server step. The same checks,
        // in the same order, and the same token (the first of equal maxima: lowest id).
        int32_t best = 0;
        const int32_t bad = argmax_finite(logits, n_vocab, &best);
        if (bad >= 0)
            return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: logit %d is %s", bad,
                             std::isnan(logits[bad]) ? "NaN" : "+inf");
        if (logits[best] == -INFINITY) return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: every logit is -inf");
        *token_out = best;
        accept(best);
        return MOLE_STATUS_OK;
    }
    cands_.resize((size_t)n_vocab);
    for (int32_t i = 0; i < n_vocab; i++) {
        const float l = logits[i];
        if (std::isnan(l) || l == INFINITY)
            return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: logit %d is %s", i,
                             std::isnan(l) ? "NaN" : "+inf");
        cands_[(size_t)i] = {l, i};
    }
    // Repetition penalty, once per distinct recent token: divide positive logits, multiply negative.
    if (params_.repeat_penalty != 1.0f && !history_.empty()) {
        recent_.assign(history_.begin(), history_.end());
        std::sort(recent_.begin(), recent_.end());
        recent_.erase(std::unique(recent_.begin(), recent_.end()), recent_.end());
        for (int32_t id : recent_) {
            if (id < 0 || id >= n_vocab) continue;
            float &l = cands_[(size_t)id].logit;
            l = l > 0.0f ? l / params_.repeat_penalty : l * params_.repeat_penalty;
        }
    }
    // Strict total order: higher logit first, then lower id (any sort gives the same result).
    auto better = [](const Cand &a, const Cand &b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); };

    size_t n = cands_.size();
    if (params_.temperature <= 0.0f) {
        size_t best = 0;
        for (size_t i = 1; i < n; i++)
            if (cands_[i].logit > cands_[best].logit) best = i;
        if (cands_[best].logit == -INFINITY)
            return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: every logit is -inf");
        *token_out = cands_[best].id;
        accept(*token_out);
        return MOLE_STATUS_OK;
    }

    bool sorted = false;
    if (params_.top_k > 0 && (size_t)params_.top_k < n) {
        const auto kth = cands_.begin() + params_.top_k;
        if ((size_t)params_.top_k <= n / 16) {
            // One pass with a heap of the best k so far (its front the worst of them): most candidates
            // lose one comparison with the front. The set is the one nth_element finds (the order is
            // total), at a fraction of its cost (0.3 ms for top-40 of 50k candidates).
            std::make_heap(cands_.begin(), kth, better);
            for (size_t i = (size_t)params_.top_k; i < n; i++)
                if (better(cands_[i], cands_.front())) {
                    std::pop_heap(cands_.begin(), kth, better);
                    *(kth - 1) = cands_[i];
                    std::push_heap(cands_.begin(), kth, better);
                }
        } else {
            std::nth_element(cands_.begin(), kth - 1, cands_.end(), better);
        }
        std::sort(cands_.begin(), kth, better);
        n = (size_t)params_.top_k;
        sorted = true;
    }
    float max_logit = -INFINITY;
    for (size_t i = 0; i < n; i++) max_logit = std::max(max_logit, cands_[i].logit);
    if (max_logit == -INFINITY) return set_error(MOLE_STATUS_INVALID_ARGUMENT, "sampler: every logit is -inf");
    // Softmax normalizer (temperature 1) of the top-k candidates, for top-p.
    double z = 0.0;
    for (size_t i = 0; i < n; i++) z += std::exp((double)cands_[i].logit - max_logit);

    // min-p: keep p >= min_p * p_max, i.e. logit >= max + log(min_p). Top-p and min-p each keep a
    // prefix of the sorted candidates, so filtering by min-p first (cheap) and then applying top-p
    // with the top-k normalizer gives llama.cpp's top-p-then-min-p result.
    if (params_.min_p > 0.0f) {
        const double threshold = (double)max_logit + std::log((double)params_.min_p);
        size_t w = 0;
        for (size_t i = 0; i < n; i++)
            if ((double)cands_[i].logit >= threshold) cands_[w++] = cands_[i];
        n = w;
    }
    // top-p: the smallest prefix (by probability) whose mass reaches top_p; at least one token.
    if (params_.top_p < 1.0f) {
        double cum = 0.0;
        size_t keep = n;
        if (sorted) {
            for (size_t i = 0; i < n; i++) {
                cum += std::exp((double)cands_[i].logit - max_logit) / z;
                if (cum >= (double)params_.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        } else {
            // Best first off a heap until the mass reaches top_p: the prefix a full sort gives, without
            // sorting the tail (a whole 50k vocabulary sorted took ~3 ms a draw). pop_heap leaves the
            // i-th best at n-1-i; the kept ones are reversed and rotated to the front.
            const auto first = cands_.begin(), last = cands_.begin() + (long)n;
            auto worse = [&](const Cand &a, const Cand &b) { return better(b, a); };   // heap top: the best
            std::make_heap(first, last, worse);
            for (size_t i = 0; i < n; i++) {
                std::pop_heap(first, last - (long)i, worse);
                cum += std::exp((double)(last - (long)i - 1)->logit - max_logit) / z;
                if (cum >= (double)params_.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            std::reverse(last - (long)keep, last);
            std::rotate(first, last - (long)keep, last);
            sorted = true;
        }
        n = keep;
    }
    // Temperature, then one draw. Candidates are in id order or in sorted order: both deterministic.
    const double inv_t = 1.0 / (double)params_.temperature;
    double total = 0.0;
    for (size_t i = 0; i < n; i++) total += std::exp(((double)cands_[i].logit - max_logit) * inv_t);
    const double u = rng_.uniform() * total;
    double cum = 0.0;
    size_t pick = n;
    for (size_t i = 0; i < n; i++) {
        const double w = std::exp(((double)cands_[i].logit - max_logit) * inv_t);
        cum += w;
        if (w > 0.0) pick = i;  // rounding fallback: the last candidate with weight
        if (u < cum && w > 0.0) break;
    }
    *token_out = cands_[pick].id;
    accept(*token_out);
    return MOLE_STATUS_OK;
}

}  // namespace mole
