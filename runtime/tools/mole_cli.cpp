// mole-cli: load a model, tokenize a prompt, stream a sampled completion to stdout (C API only).
// Usage: mole-cli -m FILE -p PROMPT [-n N] [-t THREADS] [--temp T] [--seed S] [--top-k K]
//        [--top-p P] [--ctx N]
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mole.h"

namespace {

void usage(FILE *out) {
    std::fprintf(out,
                 "usage: mole-cli -m FILE -p PROMPT [options]\n"
                 "  -m, --model FILE     model (.gguf)\n"
                 "  -p, --prompt TEXT    prompt\n"
                 "  -n, --n-predict N    tokens to generate (default 128)\n"
                 "  -t, --threads N      CPU threads (default: one per core)\n"
                 "  --temp T             temperature, 0 = greedy (default 0.8)\n"
                 "  --seed S             sampling seed (default 0)\n"
                 "  --top-k K            top-k, 0 = off (default 40)\n"
                 "  --top-p P            top-p, 1 = off (default 0.95)\n"
                 "  --ctx N              context length (default: the model's)\n"
                 "  --no-bos             do not prepend the BOS token\n"
                 "  -h, --help           this text\n");
}

int fail(const char *what, enum mole_status st) {
    std::fprintf(stderr, "mole-cli: %s: %s (%s)\n", what, mole_last_error(), mole_status_string(st));
    return 1;
}

bool parse_long(const char *s, long long lo, long long hi, long long *out) {
    char *end = nullptr;
    errno = 0;
    long long v = std::strtoll(s, &end, 10);
    if (errno || !end || *end || end == s || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool parse_double(const char *s, double *out) {
    char *end = nullptr;
    errno = 0;
    double v = std::strtod(s, &end);
    if (errno || !end || *end || end == s) return false;
    *out = v;
    return true;
}

}  // namespace

int main(int argc, char **argv) {
    std::string model_path, prompt;
    bool have_prompt = false, add_bos = true;
    long long n_predict = 128, threads = 0, top_k = 40, ctx = 0, seed = 0;
    double temp = 0.8, top_p = 0.95;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            usage(stdout);
            return 0;
        }
        if (a == "--no-bos") {
            add_bos = false;
            continue;
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "mole-cli: %s needs a value (see --help)\n", a.c_str());
            return 2;
        }
        const char *v = argv[++i];
        bool ok = true;
        if (a == "-m" || a == "--model")
            model_path = v;
        else if (a == "-p" || a == "--prompt") {
            prompt = v;
            have_prompt = true;
        } else if (a == "-n" || a == "--n-predict")
            ok = parse_long(v, 0, 1 << 30, &n_predict);
        else if (a == "-t" || a == "--threads")
            ok = parse_long(v, 0, 4096, &threads);
        else if (a == "--temp")
            ok = parse_double(v, &temp) && temp >= 0;
        else if (a == "--seed")
            ok = parse_long(v, 0, INT64_MAX, &seed);
        else if (a == "--top-k")
            ok = parse_long(v, 0, INT32_MAX, &top_k);
        else if (a == "--top-p")
            ok = parse_double(v, &top_p) && top_p >= 0 && top_p <= 1;
        else if (a == "--ctx")
            ok = parse_long(v, 1, INT32_MAX, &ctx);
        else {
            std::fprintf(stderr, "mole-cli: unknown option %s (see --help)\n", a.c_str());
            return 2;
        }
        if (!ok) {
            std::fprintf(stderr, "mole-cli: bad value '%s' for %s\n", v, a.c_str());
            return 2;
        }
    }
    if (model_path.empty() || !have_prompt) {
        std::fprintf(stderr, "mole-cli: -m FILE and -p PROMPT are required\n");
        usage(stderr);
        return 2;
    }

    struct mole_model *model = nullptr;
    enum mole_status st = mole_model_load(model_path.c_str(), nullptr, &model);
    if (st) return fail(model_path.c_str(), st);
    struct mole_model_info info;
    mole_model_get_info(model, &info);

    struct mole_context_params cp;
    mole_context_default_params(&cp);
    cp.n_ctx = static_cast<int32_t>(ctx);
    cp.n_threads = static_cast<int32_t>(threads);
    struct mole_context *c = nullptr;
    if ((st = mole_context_new(model, &cp, &c))) {
        mole_model_free(model);
        return fail("creating the context", st);
    }

    struct mole_sampler_params sp;
    mole_sampler_default_params(&sp);
    sp.temperature = static_cast<float>(temp);
    sp.top_k = static_cast<int32_t>(top_k);
    sp.top_p = static_cast<float>(top_p);
    sp.seed = static_cast<uint64_t>(seed);
    struct mole_sampler *sampler = nullptr;
    struct mole_decoder *decoder = nullptr;
    std::vector<int32_t> tokens;
    std::vector<float> logits(static_cast<size_t>(info.n_vocab));
    std::vector<char> piece(256);
    int rc = 0;
    size_t n = 0;
    do {
        if ((st = mole_sampler_new(&sp, &sampler))) {
            rc = fail("creating the sampler", st);
            break;
        }
        if ((st = mole_decoder_new(model, &decoder))) {
            rc = fail("creating the decoder", st);
            break;
        }
        st = mole_tokenize(model, prompt.data(), prompt.size(), add_bos, 0, nullptr, 0, &n);
        if (st && st != MOLE_STATUS_BUFFER_TOO_SMALL) {
            rc = fail("tokenizing the prompt", st);
            break;
        }
        tokens.resize(n);
        if ((st = mole_tokenize(model, prompt.data(), prompt.size(), add_bos, 0, tokens.data(), tokens.size(), &n))) {
            rc = fail("tokenizing the prompt", st);
            break;
        }
        if (tokens.empty()) {
            std::fprintf(stderr, "mole-cli: the prompt has no tokens\n");
            rc = 1;
            break;
        }
        for (int32_t t : tokens) mole_sampler_accept(sampler, t);
        std::fwrite(prompt.data(), 1, prompt.size(), stdout);
        std::fflush(stdout);
        // The prompt as one batch (logits of the last entry only), then one token per step.
        std::vector<int8_t> want(tokens.size(), 0);
        want.back() = 1;
        if ((st = mole_decode(c, static_cast<int32_t>(tokens.size()), tokens.data(), nullptr, want.data(),
                              logits.data(), logits.size()))) {
            rc = fail("evaluating the prompt", st);
            break;
        }
        for (long long i = 0; i < n_predict; ++i) {
            int32_t tok = 0;
            if ((st = mole_sampler_sample(sampler, logits.data(), info.n_vocab, &tok))) {
                rc = fail("sampling", st);
                break;
            }
            if (mole_token_is_eog(model, tok)) break;
            st = mole_decoder_push(decoder, tok, piece.data(), piece.size(), &n);
            if (st == MOLE_STATUS_BUFFER_TOO_SMALL) {
                piece.resize(n + 1);
                st = mole_decoder_push(decoder, tok, piece.data(), piece.size(), &n);
            }
            if (st) {
                rc = fail("detokenizing", st);
                break;
            }
            std::fwrite(piece.data(), 1, n, stdout);
            std::fflush(stdout);
            if (i + 1 == n_predict) break;
            st = mole_decode(c, 1, &tok, nullptr, nullptr, logits.data(), logits.size());
            if (st == MOLE_STATUS_CONTEXT_FULL) break;   // stop at the end of the context
            if (st) {
                rc = fail("decoding", st);
                break;
            }
        }
        if (rc) break;
        st = mole_decoder_flush(decoder, piece.data(), piece.size(), &n);
        if (st == MOLE_STATUS_BUFFER_TOO_SMALL) {
            piece.resize(n + 1);
            st = mole_decoder_flush(decoder, piece.data(), piece.size(), &n);
        }
        if (!st) std::fwrite(piece.data(), 1, n, stdout);
        std::fputc('\n', stdout);
    } while (false);
    mole_decoder_free(decoder);
    mole_sampler_free(sampler);
    mole_context_free(c);
    mole_model_free(model);
    return rc;
}
