// Token sampler: repetition penalty, top-k, top-p, min-p, temperature, seeded draw (llama.cpp order
// and semantics). Deterministic across platforms: its own xoshiro256** RNG seeded by splitmix64.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "error.h"

namespace mole {

// xoshiro256** seeded with splitmix64: the same seed gives the same stream everywhere.
class Rng {
public:
    explicit Rng(uint64_t seed = 0) { seed_with(seed); }
    void seed_with(uint64_t seed);
    uint64_t next();
    double uniform() { return (double)(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)

private:
    uint64_t s_[4];
};

// Chain, as llama.cpp's default: penalties -> top_k -> top_p -> min_p -> temperature -> draw.
// temperature <= 0 means greedy: argmax of the penalized logits, ties to the lowest id.
// top_p and min_p use the softmax at temperature 1 of the candidates that top_k kept.
class Sampler {
public:
    // Checks the params (NaN, top_k < 0, top_p/min_p outside [0, 1], repeat_penalty <= 0,
    // repeat_last_n < 0 give MOLE_STATUS_INVALID_ARGUMENT naming the field).
    static Status create(const mole_sampler_params &params, std::unique_ptr<Sampler> *out);

    // Picks a token from logits[n_vocab] (not modified) and accepts it. Errors (INVALID_ARGUMENT):
    // n_vocab < 1, a NaN logit, no finite logit.
    Status sample(const float *logits, int32_t n_vocab, int32_t *token_out);
    // Records a token for the repetition penalty (keeps the last repeat_last_n).
    void accept(int32_t token);
    // Forgets accepted tokens and re-seeds the RNG with the params' seed.
    void reset();
    const mole_sampler_params &params() const { return params_; }

private:
    explicit Sampler(const mole_sampler_params &p) : params_(p), rng_(p.seed) {}
    struct Cand {
        float logit;
        int32_t id;
    };

    mole_sampler_params params_;
    Rng rng_;
    std::vector<int32_t> history_;   // ring buffer of the last repeat_last_n accepted tokens
    size_t history_pos_ = 0;
    std::vector<Cand> cands_;        // [V] working buffer, kept between calls
    std::vector<int32_t> recent_;    // scratch: distinct ids of the history
};

}  // namespace mole
