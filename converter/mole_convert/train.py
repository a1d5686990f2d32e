"""Train a byte-level BPE tokenizer and a small MoLE (or dense) model on plain text files, on the CPU or a GPU.
`python -m mole_convert.train --data FILE... --out DIR [--preset tiny|small|demo]`; the output directory is an
HF-layout checkpoint (`mole convert` takes it) plus train_state.pt (resume) and train_log.json (results). Every
file is written to a temporary name and renamed into place: a full disk, Ctrl-C or SIGTERM leaves the last saved
checkpoint whole, and --resume continues from it.

Under torchrun the ranks train one model with DistributedDataParallel (gloo on the CPU, nccl on GPUs): every
rank draws the same global batch of windows and trains on its own slice of it, so a run matches the
single-process run of the same --batch-size and --seed; rank 0 alone writes the output directory, and the
saved state does not depend on the world size (any world size resumes it)."""
from __future__ import annotations

import errno
import io
import json
import math
import os
import pathlib
import signal
import sys
import threading
import time

import torch
import torch.nn.functional as F

from .args import MODEL_KEYS, PRESETS, parse_train_args as parse_args  # noqa: F401  (PRESETS: tests)
from .checkpoint import _atomic_write, save_checkpoint
from .config import MoleConfig
from .dist import World, init_world
from .errors import ConvertError
from .model import MoleForCausalLM
from .tokenizer_train import ENDOFTEXT, train_bpe_tokenizer

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}")


def read_texts(args) -> tuple[list[str], dict[str, str]]:
    """(training texts, {file name: held-out text}). Without --eval-file the last eval_fraction of each
    file, cut at a line break, is held out; with it, each --eval-file is scored on its own."""
    train, held = [], {}
    for path in args.data:
        if not path.is_file():
            raise FileNotFoundError(f"training file not found: {path}")
        text = path.read_text(encoding="utf-8")
        if args.eval_file is not None:
            train.append(text)
            continue
        cut = int(len(text) * (1.0 - args.eval_fraction))
        nl = text.find("\n", cut)
        cut = nl + 1 if 0 <= nl < len(text) - 1 else cut
        train.append(text[:cut])
        held[path.name if path.name not in held else str(path)] = text[cut:]
    for path in args.eval_file or ():
        if not path.is_file():
            raise FileNotFoundError(f"eval file not found: {path}")
        held[path.name if path.name not in held else str(path)] = path.read_text(encoding="utf-8")
    if not any(t.strip() for t in train) or not any(t.strip() for t in held.values()):
        raise ValueError("not enough text: training and held-out parts must both be non-empty")
    return train, held


def _chunks(text: str, size: int = 1 << 16) -> list[str]:
    """Split text at line breaks into pieces of about size characters (for parallel encoding)."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def encode(tok, texts: list[str]) -> torch.Tensor:
    """Token ids [T] of the texts, each document preceded by <|endoftext|> (id 0)."""
    ids = []
    for text in texts:
        ids.append(0)
        for enc in tok.encode_batch(_chunks(text)):
            ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.int32)


def lr_at(step: int, args, elapsed_s: float = 0.0) -> float:
    """Linear warmup to args.lr, then cosine decay to args.lr * min_lr_ratio. Progress is step/steps, or,
    with --time-limit, the elapsed fraction of the time limit when that is further along, so the rate has
    decayed when the time runs out whatever the machine's speed."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    if args.time_limit:
        progress = max(progress, elapsed_s / (args.time_limit * 60))
    progress = min(1.0, progress)
    min_lr = args.lr * args.min_lr_ratio
    return min_lr + 0.5 * (args.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def batch_share(batch_size: int, world: World) -> slice:
    """This rank's rows of a global batch of batch_size windows (every rank gets the same number)."""
    if batch_size % world.size:
        raise ValueError(f"--batch-size {batch_size} is not a multiple of the {world.size} ranks")
    n = batch_size // world.size
    return slice(world.rank * n, (world.rank + 1) * n)


def get_batch(data: torch.Tensor, args, gen: torch.Generator, rows: slice = slice(None)):
    """Random windows of the global batch: x, y [B, S] with y = x shifted by one; rows picks this rank's
    share. Every rank draws all B starts, so the generator's state is the same on every rank and for any
    world size."""
    starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch_size,), generator=gen)[rows]
    win = torch.stack([data[s:s + args.seq_len + 1] for s in starts.tolist()]).long()  # [B / ranks, S+1]
    return win[:, :-1], win[:, 1:]


def autocast(args):
    kind = "cuda" if str(getattr(args, "device", "cpu")).startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=args.precision == "bf16")


@torch.no_grad()
def _eval_nats(model, data: torch.Tensor, args, world: World | None = None) -> tuple[float, int]:
    """Summed next-token loss (nats) over non-overlapping windows of data [T], and the tokens predicted.
    Under torchrun each rank evaluates every world.size-th batch and the sums are added over the ranks."""
    S = args.seq_len
    windows = [data[s:s + S + 1].long() for s in range(0, len(data) - 1, S)]  # each [<= S+1]
    full = [w for w in windows if len(w) == S + 1]
    batches = [torch.stack(full[i:i + args.batch_size]) for i in range(0, len(full), args.batch_size)]
    batches += [w[None] for w in windows if len(w) != S + 1]  # the ragged tail, alone
    if world is not None:
        batches = batches[world.rank::world.size]
    total, count = 0.0, 0
    for win in batches:  # [b, <= S+1]
        win = win.to(args.device)
        with autocast(args):
            logits = model(win[:, :-1])
        total += F.cross_entropy(logits.float().flatten(0, 1), win[:, 1:].flatten(), reduction="sum").item()
        count += win[:, 1:].numel()
    if world is not None:
        total, count = world.sum([total, count])
    return total, int(count)


def evaluate(model, held: dict[str, tuple[torch.Tensor, int]], args, world: World | None = None) -> dict:
    """Held-out loss (nats/token) and bits per byte (nats / ln 2 / UTF-8 bytes), overall and per file.
    held: name -> (ids [T], bytes of its text). With --eval-tokens, each file's first tokens are used and
    its bytes are prorated."""
    model.eval()
    files, nats, toks, nbytes = {}, 0.0, 0, 0.0
    for name, (ids, n_bytes) in held.items():
        if args.eval_tokens and len(ids) > args.eval_tokens + 1:
            n_bytes = n_bytes * args.eval_tokens / (len(ids) - 1)
            ids = ids[:args.eval_tokens + 1]
        total, count = _eval_nats(model, ids, args, world)
        files[name] = {"loss": total / count, "bpb": total / math.log(2) / n_bytes}
        nats, toks, nbytes = nats + total, toks + count, nbytes + n_bytes
    model.train()
    return {"loss": nats / toks, "bpb": nats / math.log(2) / nbytes, "tokens": toks, "files": files}


def _fmt_eval(step: int, ev: dict) -> str:
    per = ", ".join(f"{n} {f['bpb']:.3f}" for n, f in ev["files"].items()) if len(ev["files"]) > 1 else ""
    return f"step {step}: eval loss {ev['loss']:.4f}, {ev['bpb']:.3f} bits/byte" + (f" ({per})" if per else "")


def build_tokenizer(args, train_texts, world: World):
    """The run's tokenizer: OUT/tokenizer.json on --resume, else trained by rank 0 and sent to the others."""
    from tokenizers import Tokenizer

    path = args.out / "tokenizer.json"
    if args.resume:
        if not path.is_file():
            raise FileNotFoundError(f"--resume: {path} not found")
        return Tokenizer.from_file(str(path))
    say(args, f"training a {args.vocab_size}-id byte-level BPE tokenizer on {sum(map(len, train_texts))} chars")
    text = train_bpe_tokenizer(train_texts, args.vocab_size).to_str() if world.is_main else None
    return Tokenizer.from_str(world.broadcast(text))


def say(args, msg: str) -> None:
    if not args.quiet and getattr(args, "rank", 0) == 0:
        print(msg, flush=True)


def _no_space(e: BaseException) -> bool:
    """A full disk, as Python reports it or as safetensors' writer does (SafetensorError with Rust's io::Error
    text)."""
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        f"(os error {errno.ENOSPC})" in str(e)


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)   # unwinds like Ctrl-C: the temporary files are removed


def start_world(args) -> World:
    """This process's rank (a single one outside torchrun) and device; sets args.device, args.rank."""
    if args.device == "cuda":
        if not torch.cuda.is_available():
            why = (f"this torch ({torch.__version__}) is built without CUDA" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise ConvertError(f"--device cuda: {why}")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConvertError(f"--device cuda: local rank {local} has no GPU of its own "
                               f"({torch.cuda.device_count()} visible); start at most that many ranks per machine")
        torch.cuda.set_device(local)
        world = init_world("nccl", device=f"cuda:{local}")
    else:
        world = init_world("gloo")
    args.device, args.rank = world.device, world.rank
    return world


def main(argv=None) -> int:
    """Runs training; returns 0, or 130 on Ctrl-C. SIGTERM exits with 143 (SystemExit). Either way, and on a
    full disk (OSError), the files of the last save are left whole."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _sigterm) if in_main else None
    world = None
    try:
        world = start_world(args)
        rc = _train(args, world, argv)
        # Every rank reaches the teardown together: a rank that tore its process group down while rank 0 was
        # still saving made rank 0's teardown abort ("terminate called without an active exception", SIGABRT)
        # in about one run in four of tests/test_scale_out.py's resume from one process to two.
        world.barrier()
        return rc
    except KeyboardInterrupt:
        if world is None or world.is_main:
            state = args.out / "train_state.pt"
            kept = (f"{state} holds the last saved step; continue with --resume" if state.is_file()
                    else "no checkpoint was saved yet")
            print(f"interrupted; {kept}", file=sys.stderr, flush=True)
        return 130
    except ConvertError as e:   # a device that is not there, or a step that failed on some rank (RankError)
        named = getattr(e, "ranks", None)
        if world is None or world.is_main or not named or world.rank in named:
            print(f"mole train: error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if world is not None:
            world.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _train(args, world: World, argv) -> int:
    rows = batch_share(args.batch_size, world)
    torch.set_num_threads(max(1, args.threads or (os.cpu_count() or 1) // world.local_size))
    t_start = time.time()
    state_path = args.out / "train_state.pt"
    state = None
    if args.resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: {state_path} not found")
        state = torch.load(state_path, map_location="cpu", weights_only=True)   # every rank reads it
        saved = state["args"]  # the run's data, model and optimizer settings; --steps and logging may change
        for key in ("eval_fraction", "seq_len", "batch_size", "lr", "warmup", "min_lr_ratio", "weight_decay",
                    "precision", "seed", *MODEL_KEYS):
            setattr(args, key, saved[key])
        if not args.data:
            args.data = [pathlib.Path(p) for p in saved["data"]]
        if args.eval_file is None and saved["eval_file"]:
            ev = saved["eval_file"]   # one path (before 0.3) or a list
            args.eval_file = [pathlib.Path(f) for f in ([ev] if isinstance(ev, str) else ev)]
    if world.is_main:
        args.out.mkdir(parents=True, exist_ok=True)

    train_texts, held_texts = read_texts(args)
    tok = build_tokenizer(args, train_texts, world)
    if tok.token_to_id(ENDOFTEXT) != 0:
        raise ValueError(f"tokenizer must have {ENDOFTEXT} at id 0")
    train_ids = encode(tok, train_texts)
    held = {name: (encode(tok, [t]), len(t.encode("utf-8"))) for name, t in held_texts.items() if t.strip()}
    if len(train_ids) < args.seq_len + 2:
        raise ValueError(f"text too short: {len(train_ids)} training tokens for windows of {args.seq_len}")
    n_held_tokens, n_held_bytes = sum(len(i) - 1 for i, _ in held.values()), sum(b for _, b in held.values())
    say(args, f"data: {len(train_ids)} training tokens, {n_held_tokens} held-out tokens "
              f"({n_held_bytes / max(1, n_held_tokens):.2f} bytes/token)")

    config = MoleConfig(**{k: getattr(args, k) for k in MODEL_KEYS}, max_position_embeddings=args.seq_len,
                        rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=0, eos_token_id=0)
    model = MoleForCausalLM(config, form="training").init_weights(std=0.02, seed=args.seed)
    if state is not None:
        model.load_state_dict(state["model"])
    model.to(args.device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)
    step, history, prior_elapsed = 0, {"train": [], "eval": []}, 0.0  # prior_elapsed: earlier sessions' seconds
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step, history = state["step"], state["history"]
        prior_elapsed = state["elapsed_s"]
        say(args, f"resumed from step {step}")
    resumed_from = step
    n_params = sum(p.numel() for p in model.parameters())
    ranks = f", {world.size} ranks of {args.batch_size // world.size}" if world.size > 1 else ""
    say(args, f"model: {n_params / 1e6:.2f}M parameters, V={config.vocab_size} d={config.hidden_size} "
              f"L={config.num_hidden_layers} N={config.num_experts} D={config.intermediate_size}; "
              f"{args.steps} steps of {args.batch_size}x{args.seq_len} tokens{ranks}, {args.precision}, "
              f"{args.device}, {torch.get_num_threads()} threads")
    ddp = model
    if world.size > 1:   # gradients averaged over the ranks' equal shares = the global batch's mean gradient
        from torch.nn.parallel import DistributedDataParallel
        ddp = DistributedDataParallel(model, device_ids=[args.device] if args.device != "cpu" else None)

    saved = [step if state is not None else None]   # the step train_state.pt holds

    def save():
        """Rank 0 writes; under torchrun the others wait for it, and a failure there (a full disk) stops every
        rank. One process saves directly, so its errors (a full disk's OSError) reach the caller as they are."""
        if world.size == 1:
            _save()
            return
        with world.step("saving the checkpoint"):
            if world.is_main:
                _save()

    def _save():
        # The checkpoint, then the state --resume reads; each replaces its file only once written whole.
        # The state is serialized in memory first so that a full disk is an OSError, not torch's RuntimeError.
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "step": step, "history": history, "world_size": world.size,
                    "elapsed_s": prior_elapsed + time.time() - t_start,
                    "args": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()
                             if k not in ("data", "eval_file", "rank")} | {
                        "data": [str(p) for p in args.data],
                        "eval_file": [str(f) for f in args.eval_file] if args.eval_file else None}}, buf)
        try:
            save_checkpoint(model, config, args.out, tokenizer_json=tok.to_str(), chat_template=CHAT_TEMPLATE)
            _atomic_write(state_path, lambda p: p.write_bytes(buf.getbuffer()))
        except Exception as e:
            if not _no_space(e):
                raise
            kept = (f"{state_path.name} still holds step {saved[0]} (--resume continues from it)"
                    if saved[0] is not None else "no earlier checkpoint was saved")
            raise OSError(errno.ENOSPC, f"no space left on device saving the checkpoint of step {step} in "
                                        f"{args.out}; {kept}") from e
        saved[0] = step

    if step == 0:
        ev = evaluate(model, held, args, world)
        history["eval"].append({"step": 0, **ev})
        say(args, _fmt_eval(0, ev))
    model.train()
    t_loop, tokens_done = time.time(), 0
    stop_at = min(args.steps, args.stop_after or args.steps)
    while step < stop_at:
        elapsed = prior_elapsed + time.time() - t_start
        if args.time_limit is not None and world.size > 1:
            elapsed = world.broadcast(elapsed)   # one clock: every rank stops at the same step, same lr
        if args.time_limit is not None and elapsed > args.time_limit * 60:
            say(args, f"time limit of {args.time_limit} min reached at step {step}")
            break
        lr = lr_at(step, args, elapsed)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_ids, args, gen, rows)
        x, y = x.to(args.device), y.to(args.device)
        with autocast(args):
            logits = ddp(x)
        loss = F.cross_entropy(logits.float().view(-1, config.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        tokens_done += x.numel() * world.size
        loss_value = world.sum([loss.item()])[0] / world.size   # the global batch's mean loss
        history["train"].append({"step": step, "loss": loss_value})
        if step % args.log_every == 0 or step == args.steps:
            elapsed = time.time() - t_loop
            tps = tokens_done / max(elapsed, 1e-9)
            eta = (stop_at - step) * x.numel() * world.size / max(tps, 1e-9)
            if args.time_limit is not None:
                eta = min(eta, max(0.0, args.time_limit * 60 - (prior_elapsed + time.time() - t_start)))
            say(args, f"step {step}/{args.steps}: loss {loss_value:.4f}, lr {lr:.2e}, {tps:.0f} tok/s, "
                      f"ETA {eta / 60:.1f} min")
        if step % args.eval_every == 0 or step == stop_at:
            ev = evaluate(model, held, args, world)
            history["eval"].append({"step": step, **ev})
            say(args, _fmt_eval(step, ev))
        if step % args.save_every == 0 and step < stop_at:
            save()

    if history["eval"][-1]["step"] != step:  # stopped by the time limit, or nothing was left to do
        ev = evaluate(model, held, args, world)
        history["eval"].append({"step": step, **ev})
        say(args, _fmt_eval(step, ev))
    save()
    final = history["eval"][-1]
    wall = time.time() - t_start
    log = {"steps": step, "resumed_from": resumed_from, "final_eval_loss": final["loss"], "final_bpb": final["bpb"],
           "final_bpb_by_file": {n: f["bpb"] for n, f in final["files"].items()},
           "eval_tokens": final["tokens"], "held_out_bytes": n_held_bytes, "wall_time_s": wall,
           "tokens_per_s": tokens_done / max(time.time() - t_loop, 1e-9) if tokens_done else None,
           "parameters": n_params, "config": config.to_hf_dict(), "preset": args.preset, "world_size": world.size,
           "command": "python -m mole_convert.train " + " ".join(sys.argv[1:] if argv is None else argv),
           "evals": history["eval"], "train_loss": [h["loss"] for h in history["train"]]}
    if world.is_main:
        _atomic_write(args.out / "train_log.json", lambda p: p.write_text(json.dumps(log, indent=2) + "\n"))
        print(f"done: {step} steps, eval loss {final['loss']:.4f}, {final['bpb']:.3f} bits/byte, "
              f"{wall / 60:.1f} min; checkpoint in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
