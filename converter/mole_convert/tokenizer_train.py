"""Training a GPT-2-style byte-level BPE tokenizer with the `tokenizers` package.
<|endoftext|> is id 0 and serves as BOS, EOS and document separator (as in GPT-NeoX-20B's tokenizer)."""
from __future__ import annotations

from typing import Iterable

ENDOFTEXT = "<|endoftext|>"
MIN_VOCAB = 257 + 1  # 256 byte symbols + <|endoftext|> + at least one merge


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE `tokenizers.Tokenizer` with at most vocab_size ids, trained on texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB} for a byte-level BPE, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.token_to_id(ENDOFTEXT) != 0:
        raise RuntimeError(f"{ENDOFTEXT} did not get id 0")
    return tok
