/* embed: the smallest desktop-app use of libmole: load a model, stream a completion to stdout.
 * Build it against an installed libmole: README, section C (CMake: CMakeLists.txt here; or pkg-config). */
#include <mole.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what) {
    fprintf(stderr, "embed: %s: %s\n", what, mole_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT [N_TOKENS]\n", argv[0]);
        return 2;
    }
    const int n_predict = argc > 3 ? atoi(argv[3]) : 32;
    struct mole_model *model = NULL;
    struct mole_context *ctx = NULL;
    struct mole_sampler *sampler = NULL;
    struct mole_decoder *decoder = NULL;
    int32_t *tokens = NULL;
    float *logits = NULL;
    int rc = 1;

    if (mole_model_load(argv[1], NULL, &model) != MOLE_STATUS_OK) return fail("load");
    struct mole_model_info info;
    mole_model_get_info(model, &info);
    if (mole_context_new(model, NULL, &ctx) != MOLE_STATUS_OK) {
        fail("context");
        goto done;
    }

    struct mole_sampler_params sp;
    mole_sampler_default_params(&sp);
    sp.temperature = 0.0f; /* greedy: the same text every run */
    if (mole_sampler_new(&sp, &sampler) != MOLE_STATUS_OK || mole_decoder_new(model, &decoder) != MOLE_STATUS_OK) {
        fail("sampler");
        goto done;
    }

    size_t n_prompt = 0;
    mole_tokenize(model, argv[2], strlen(argv[2]), 0, 0, NULL, 0, &n_prompt); /* asks the size */
    tokens = malloc((n_prompt + 1) * sizeof *tokens);
    logits = malloc((size_t)info.n_vocab * sizeof *logits);
    if (!tokens || !logits) {
        fprintf(stderr, "embed: out of memory\n");
        goto done;
    }
    if (mole_tokenize(model, argv[2], strlen(argv[2]), 0, 0, tokens, n_prompt, &n_prompt) != MOLE_STATUS_OK) {
        fail("tokenize");
        goto done;
    }
    if (n_prompt == 0) {
        fprintf(stderr, "embed: empty prompt\n");
        goto done;
    }

    /* the prompt in one step; logits of its last token only */
    int8_t *want = calloc(n_prompt, 1);
    if (!want) goto done;
    want[n_prompt - 1] = 1;
    enum mole_status st = mole_decode(ctx, (int32_t)n_prompt, tokens, NULL, want, logits, (size_t)info.n_vocab);
    free(want);
    if (st != MOLE_STATUS_OK) {
        fail("decode");
        goto done;
    }

    fputs(argv[2], stdout);
    char piece[256];
    for (int i = 0; i < n_predict; i++) {
        int32_t tok;
        size_t n;
        if (mole_sampler_sample(sampler, logits, info.n_vocab, &tok) != MOLE_STATUS_OK) {
            fail("sample");
            goto done;
        }
        if (mole_token_is_eog(model, tok)) break;
        if (mole_decoder_push(decoder, tok, piece, sizeof piece, &n) == MOLE_STATUS_OK) fwrite(piece, 1, n, stdout);
        fflush(stdout);
        if (mole_decode(ctx, 1, &tok, NULL, NULL, logits, (size_t)info.n_vocab) != MOLE_STATUS_OK) {
            if (i + 1 < n_predict) {
                fail("decode");
                goto done;
            }
        }
    }
    {
        size_t n;
        if (mole_decoder_flush(decoder, piece, sizeof piece, &n) == MOLE_STATUS_OK) fwrite(piece, 1, n, stdout);
    }
    fputc('\n', stdout);
    rc = 0;
done:
    free(tokens);
    free(logits);
    mole_decoder_free(decoder);
    mole_sampler_free(sampler);
    mole_context_free(ctx);
    mole_model_free(model);
    return rc;
}
