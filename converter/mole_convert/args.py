"""The command lines of `mole convert` and `mole train`, importable without torch: `mole convert --help` and
`mole train --help` work on the base install, and usage errors exit 2 before the converter's dependencies load."""
from __future__ import annotations

import argparse
import pathlib

WEIGHT_TYPES = ("f32", "f16", "bf16", "q8_0")
LUT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "iq4_nl", "q3_k")
GATED_LUT_TYPES = ("q4_0", "iq4_nl", "q3_k")   # below 8 bits: measured against q8_0 before writing (lut_gate.py)
# The gate's defaults live here, where they are importable without torch (lut_gate.py uses them): the limit on
# the mean KL against q8_0 in nats per token (on text the model writes, the perplexity rise is about exp(KL) - 1,
# so 0.03 allows ~3%: the target for a 3-bit LUT), and the calibration tokens used at most.
DEFAULT_MAX_KL = 0.03
DEFAULT_CALIBRATION_TOKENS = 4096

TRAIN_DESCRIPTION = ("Train a byte-level BPE tokenizer and a small MoLE (or dense) model on plain text files, on the "
                     "CPU or a GPU. Under torchrun (torchrun --nproc-per-node N -m mole_convert.train ...) the ranks "
                     "train one model with DistributedDataParallel, each on its share of every batch.")

# Model and schedule presets for a 2-core CPU. "demo": V*L*N*d = 4096*4*4*256 = 16.8M LUT values
# (~17.8 MB at q8_0) + ~4.6M dense weights (~4.9 MB at q8_0): a GGUF under 24 MB.
PRESETS = {
    "tiny": dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, num_experts=2, seq_len=32, batch_size=4, steps=40, lr=3e-3, warmup=4,
                 eval_every=20, log_every=5, save_every=20),
    "small": dict(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, num_experts=4, seq_len=128, batch_size=16,
                  steps=600, lr=2e-3, warmup=30, eval_every=100, log_every=10, save_every=200),
    "demo": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4, num_experts=4, seq_len=128, batch_size=16,
                 steps=1500, lr=2e-3, warmup=50, eval_every=500, log_every=10, save_every=250, time_limit=55.0),
    # The bundled demo since 0.3 (docs/demo.md): trained at the context chat runs at, with 7 experts (the most whose
    # 4-bit LUT keeps the file under 24 MB).
    "demo512": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=4, num_experts=7, seq_len=512, batch_size=8,
                    steps=800, lr=2e-3, warmup=30, eval_every=100, log_every=10, save_every=25),
    # The bundled demo since 76132b2 (docs/demo.md): demo512 with 6 layers and 6 experts, the most whose 3-bit LUT
    # (Q3_K) keeps the file under 24 MB; bf16 autocast. Its run ended at its 95-minute limit at step 2965;
    # --steps 2965 gives the same schedule without the clock.
    "demo6": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                  num_attention_heads=4, num_key_value_heads=4, num_experts=6, seq_len=512, batch_size=8,
                  steps=2965, lr=2e-3, warmup=30, eval_every=250, log_every=10, save_every=50),
}
MODEL_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "num_experts")


def convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mole convert",
                                description="Convert an HF MoLE checkpoint directory (training, re-parameterized "
                                            "or dense form) to a GGUF file; the LUT is computed in streaming chunks. "
                                            "Under torchrun (torchrun --nproc-per-node N -m mole_convert.convert "
                                            "...) the ranks share the LUT and write the same file.")
    p.add_argument("src", metavar="SRC", help="checkpoint directory (config.json, weights, tokenizer.json)")
    p.add_argument("dst", metavar="DST", help="output .gguf path (replaced only when complete)")
    p.add_argument("--lut-type", choices=LUT_TYPES, default="q8_0",
                   help="LUT storage type (default q8_0). iq4_nl: 4.5 bits per value, q3_k: 3.44 (rows a multiple "
                        "of 256 values); below 8 bits the conversion first measures the cost (--calibration)")
    p.add_argument("--calibration", metavar="FILE", default=None,
                   help="text the low-bit LUT's cost is measured on (KL of the next-token distributions against "
                        "the q8_0 LUT, and the perplexity ratio); default: windows over a seeded permutation of "
                        "the vocabulary (each LUT row at most once, up to --calibration-tokens rows; not text)")
    p.add_argument("--calibration-tokens", type=int, default=DEFAULT_CALIBRATION_TOKENS, metavar="N",
                   help=f"calibration tokens used at most (default {DEFAULT_CALIBRATION_TOKENS})")
    p.add_argument("--max-kl", type=float, default=DEFAULT_MAX_KL, metavar="NATS",
                   help=f"refuse a low-bit LUT whose KL against q8_0 passes this, in nats per token (default "
                        f"{DEFAULT_MAX_KL}: about +3%% perplexity on text the model writes)")
    p.add_argument("--force", action="store_true", help="write a low-bit LUT even past --max-kl")
    p.add_argument("--weight-type", choices=WEIGHT_TYPES, default="f16",
                   help="type of the dense matrices (default f16); norms and router stay f32")
    p.add_argument("--device", default="cpu",
                   help="where the LUT is computed: cpu, cuda or cuda:N (default cpu; under torchrun, cuda is "
                        "cuda:LOCAL_RANK); rows come back quantized")
    p.add_argument("--threads", type=int, default=None,
                   help="compute threads (default: all cores, divided among the ranks on one machine)")
    p.add_argument("--chunk-tokens", type=int, default=None, help="LUT rows per chunk (default: from --memory-mb)")
    p.add_argument("--memory-mb", type=int, default=None,
                   help="working-set budget for LUT chunks and expert weights in MiB (default 1536 on the CPU, "
                        "8192 of VRAM on a GPU, at most 90%% of what is free)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes")
    return p


def parse_train_args(argv) -> argparse.Namespace:
    """`mole train`'s arguments with the preset's values filled in; usage errors exit 2 (argparse)."""
    p = argparse.ArgumentParser(prog="mole train", description=TRAIN_DESCRIPTION)
    p.add_argument("--data", nargs="+", type=pathlib.Path, help="training text files (UTF-8)")
    p.add_argument("--out", type=pathlib.Path, required=True, help="output checkpoint directory")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--experts", type=int, help="number of experts N (0 = dense); overrides the preset")
    p.add_argument("--steps", type=int, help="total optimizer steps (also the end of the cosine schedule)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--stop-after", type=int, help="stop (and save) after this step; the schedule still ends at --steps")
    p.add_argument("--time-limit", type=float,
                   help="minutes: the lr schedule ends and training stops (and saves) by then, counting resumed time")
    p.add_argument("--eval-file", type=pathlib.Path, nargs="+",
                   help="held-out text files (whole books the model never sees; each scored on its own); default: "
                        "the last --eval-fraction of each --data file")
    p.add_argument("--eval-fraction", type=float, default=0.02)
    p.add_argument("--eval-tokens", type=int, default=0, help="cap on held-out tokens per eval (0 = all)")
    for key in MODEL_KEYS[:-1]:
        p.add_argument("--" + key.replace("_", "-"), type=int, dest=key)
    for key, typ in (("seq_len", int), ("batch_size", int), ("lr", float), ("warmup", int),
                     ("eval_every", int), ("log_every", int), ("save_every", int)):
        p.add_argument("--" + key.replace("_", "-"), type=typ, dest=key)
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr = lr * this")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="autocast dtype for matmuls")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu, or cuda (under torchrun: cuda:LOCAL_RANK, ranks joined by nccl; on the CPU by gloo)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: all cores, divided among the ranks on one machine)")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.experts is not None:
        args.num_experts = args.experts
    if not args.resume and not args.data:
        p.error("--data is required (except with --resume)")
    if args.stop_after is not None and args.stop_after < 1:
        p.error("--stop-after must be at least 1")
    for name in ("steps", "seq_len", "batch_size", "eval_every", "log_every", "save_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.num_experts < 0:
        p.error("--experts must be >= 0")
    if not 0.0 < args.eval_fraction < 0.5:
        p.error("--eval-fraction must be in (0, 0.5)")
    return args
