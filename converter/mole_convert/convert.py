"""convert(): an HF MoLE checkpoint directory (training, re-parameterized or dense form) -> one GGUF file,
written to DST.tmp-<pid> and renamed over DST only when complete. `mole convert` is main_convert().
Under torchrun (WORLD_SIZE > 1) the same call shards the LUT over the ranks (sharded.py): same bytes."""
from __future__ import annotations

import errno
import glob
import os
import pathlib
import signal
import sys
import threading
from dataclasses import dataclass

import torch

from .checkpoint import Checkpoint, load_checkpoint
from .errors import ConvertError
from .args import DEFAULT_MAX_KL, GATED_LUT_TYPES, LUT_TYPES, WEIGHT_TYPES, convert_parser
from .gguf_out import TensorPlan, plan_tensors, write_gguf
from .lut_gate import DEFAULT_TOKENS, GateResult, measure
from .quantize import block_size, can_quantize
from .reparam import LutStream, default_budget
from .tokenizer_meta import TokenizerMeta, build_tokenizer_meta


def temp_path(dst: pathlib.Path, pid: int | None = None) -> pathlib.Path:
    """Where a conversion to dst writes until it renames: DST.tmp-<pid> (rank 0's pid under torchrun)."""
    return dst.with_name(f"{dst.name}.tmp-{os.getpid() if pid is None else pid}")


def _remove_stale_temps(dst: pathlib.Path) -> None:
    """Temp files of killed conversions (their process is gone) are removed."""
    for p in glob.glob(glob.escape(str(dst)) + ".tmp-*"):
        suffix = p.rsplit(".tmp-", 1)[1]
        if not suffix.isdigit() or int(suffix) == os.getpid():
            continue
        try:
            os.kill(int(suffix), 0)
        except ProcessLookupError:
            pathlib.Path(p).unlink(missing_ok=True)
        except PermissionError:
            pass


def _say(msg: str, enabled: bool) -> None:
    if enabled:
        print(f"mole convert: {msg}", file=sys.stderr, flush=True)


class QualityGateError(ConvertError):
    """A LUT type below 8 bits costs more than the limit against q8_0 (and force was not given)."""

    def __init__(self, msg: str, result: GateResult):
        super().__init__(msg)
        self.result = result


def _check_gated_row(lut_type: str, row_len: int) -> None:
    """A LUT type below 8 bits is asked for to save space: it is an error, not an f16 fallback, when its blocks do
    not divide the row."""
    if lut_type in GATED_LUT_TYPES and not can_quantize(lut_type, row_len):
        raise ConvertError(f"LUT row length {row_len} (L*N*d) is not a multiple of the {lut_type} block size "
                           f"{block_size(lut_type)}; a smaller LUT type must divide it (q4_0, iq4_nl: 32)")


def quality_gate(src_dir, lut_type: str, *, calibration, calibration_tokens: int, max_kl: float, force: bool,
                 threads: int | None, progress: bool) -> tuple[GateResult | None, list[str]]:
    """For a LUT below 8 bits: its cost against q8_0 (lut_gate.measure), and a note when forced past max_kl;
    QualityGateError past it otherwise. (None, []) for other types and dense checkpoints. Deterministic, so
    under torchrun every rank measures the same figure and agrees on refusing."""
    if lut_type not in GATED_LUT_TYPES:
        return None, []
    ckpt = load_checkpoint(src_dir)
    c = ckpt.config
    if ckpt.form == "dense":
        return None, []
    _check_gated_row(lut_type, c.num_hidden_layers * c.num_experts * c.hidden_size)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        gate = measure(ckpt, lut_type, calibration, calibration_tokens)
    finally:
        torch.set_num_threads(saved_threads)
    _say(gate.describe(), progress)
    if gate.kl <= max_kl:
        return gate, []
    if not force:
        raise QualityGateError(f"quality gate: {gate.describe()} passes the limit {max_kl} nats/token; keep the "
                               f"default q8_0 LUT, or pass --force (force=True) to write it anyway", gate)
    return gate, [f"LUT {lut_type}: KL {gate.kl:.5f} passes the limit {max_kl}; written because forced"]


def check_device(device: str, local_rank: int = 0) -> str:
    """"cpu", "cuda" or "cuda:k" -> the torch device to compute on ("cuda" under torchrun: cuda:LOCAL_RANK).
    A CUDA device this torch cannot use is a ConvertError that says why."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not one of cpu, cuda, cuda:N") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise ValueError(f"device {device!r} is not one of cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        why = (f"this torch ({torch.__version__}) is built without CUDA" if torch.version.cuda is None
               else "no CUDA device is visible (driver missing, or CUDA_VISIBLE_DEVICES empty)")
        raise ConvertError(f"--device {device}: {why}")
    index = dev.index if dev.index is not None else local_rank
    if index >= torch.cuda.device_count():
        raise ConvertError(f"--device {device}: cuda:{index} does not exist ({torch.cuda.device_count()} visible)")
    return f"cuda:{index}"


def device_budget(device: str, memory_budget: int | None) -> tuple[int, list[str]]:
    """The working-set budget in bytes, and a note when the default had to shrink to the GPU's free memory."""
    if memory_budget is not None:
        return int(memory_budget), []
    budget = default_budget(device)
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if budget > int(free * 0.9):
            return int(free * 0.9), [f"{device} has {free / 2**30:.1f} GiB free: the LUT's VRAM budget is "
                                     f"{free * 0.9 / 2**30:.1f} GiB instead of {budget / 2**30:.0f} GiB"]
    return budget, []


def check_destination(dst: pathlib.Path) -> None:
    if dst.is_dir():
        raise ConvertError(f"output path {dst} is a directory")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"output directory {dst.parent} does not exist")


@dataclass
class Prepared:
    """What a conversion writes: the checkpoint, and (on the rank that writes the header) the tokenizer
    metadata and the dense tensors' plan; the LUT stream when the model has one."""
    ckpt: Checkpoint
    lut: LutStream | None
    tok: TokenizerMeta | None = None
    plan: TensorPlan | None = None
    notes: tuple[str, ...] = ()


def prepare(src_dir, lut_type: str, weight_type: str, *, chunk_tokens: int | None, memory_budget: int | None,
            progress: bool, device: str, header: bool = True) -> Prepared:
    """Read the checkpoint and plan the file. header=False (ranks other than 0) skips the tokenizer and the
    dense tensors, which only the header's writer needs."""
    ckpt = load_checkpoint(src_dir)
    c = ckpt.config
    notes: list[str] = []
    tok = plan = None
    if header:
        if ckpt.tokenizer_path is None:
            raise ConvertError(f"{ckpt.directory}: no tokenizer.json beside config.json; the GGUF file must carry "
                               "the tokenizer")
        tok = build_tokenizer_meta(ckpt.tokenizer_path, c.vocab_size, bos_token_id=c.bos_token_id,
                                   eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
                                   chat_template=ckpt.chat_template)
        plan = plan_tensors(ckpt, weight_type)
        notes += tok.notes + plan.notes
    lut = None
    if ckpt.form != "dense":
        row_len = c.num_hidden_layers * c.num_experts * c.hidden_size
        _check_gated_row(lut_type, row_len)
        if not can_quantize(lut_type, row_len):
            notes.append(f"LUT row length {row_len} is not a multiple of the {lut_type} block size; stored as f16")
            lut_type = "f16"
        budget, budget_notes = device_budget(device, memory_budget) if ckpt.form == "training" \
            else (memory_budget, [])
        notes += budget_notes
        lut = LutStream(ckpt, lut_type, chunk_tokens=chunk_tokens, memory_budget=budget, progress=progress,
                        device=device if ckpt.form == "training" else "cpu")
    return Prepared(ckpt, lut, tok, plan, tuple(notes))


def describe_lut(p: Prepared, world_size: int = 1) -> str:
    lut = p.lut
    q = lut.plan
    where = f" on {lut.device}" if p.ckpt.form == "training" else ""
    ranks = f", {world_size} ranks" if world_size > 1 else ""
    return (f"{p.ckpt.form} checkpoint, LUT [{q.vocab} x {q.row_len}] {q.lut_type} = {lut.nbytes / 2**30:.2f} GiB, "
            f"{q.chunk_tokens} tokens per chunk, experts {'kept' if q.keep_weights else 'read per chunk'}"
            f"{where}{ranks}")


def convert(src_dir, dst_path, lut_type: str = "q8_0", weight_type: str = "f16", *,
            chunk_tokens: int | None = None, threads: int | None = None, progress: bool = True,
            memory_budget: int | None = None, device: str = "cpu", distributed: bool | None = None,
            calibration=None, calibration_tokens: int = DEFAULT_TOKENS, max_kl: float = DEFAULT_MAX_KL,
            force: bool = False) -> pathlib.Path:
    """Convert a checkpoint directory to a GGUF file at dst_path and return its path.

    lut_type: f32|f16|bf16|q8_0|q4_0|iq4_nl|q3_k (the LUT); weight_type: f32|f16|bf16|q8_0 (matrices; norms and
    router stay f32). chunk_tokens forces the LUT chunk size, otherwise it follows memory_budget (bytes; VRAM when
    device is a GPU). device: where the LUT is computed ("cpu", "cuda", "cuda:N"); rows come back quantized.
    threads: torch threads (default: all cores, shared among the ranks of one machine). An existing dst_path
    is replaced only once the new file is complete; on any failure no partial file is left.
    distributed: None = shard over the ranks when run under torchrun (or inside an initialized default
    process group), False = one process whatever the environment. Every rank calls convert() with the same
    arguments; all return dst_path or all raise the same error, which names the ranks that failed.
    A LUT below 8 bits (q4_0, iq4_nl, q3_k) is first measured against q8_0 (lut_gate.measure on the calibration
    text, or on the vocabulary when None); the KL goes into the metadata, and past max_kl the conversion raises
    QualityGateError unless force.
    """
    if lut_type not in LUT_TYPES:
        raise ValueError(f"LUT type {lut_type!r} is not one of {', '.join(LUT_TYPES)}")
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight type {weight_type!r} is not one of {', '.join(WEIGHT_TYPES)}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    dst = pathlib.Path(dst_path)
    world = None
    if distributed is not False:
        from .dist import init_world
        world = init_world("gloo")
        if world.size == 1:
            world = None
    old_threads = torch.get_num_threads()
    local_size = world.local_size if world is not None else 1
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_size))
    try:
        gate_args = dict(calibration=calibration, calibration_tokens=calibration_tokens, max_kl=max_kl, force=force,
                         threads=threads)
        if world is not None:
            from .sharded import convert_sharded
            try:
                gate, notes = quality_gate(src_dir, lut_type, **gate_args, progress=progress and world.is_main)
                for n in notes:
                    _say(f"note: {n}", progress and world.is_main)
                return convert_sharded(world, src_dir, dst, lut_type, weight_type, chunk_tokens=chunk_tokens,
                                       memory_budget=memory_budget, progress=progress, device=device, gate=gate)
            finally:
                world.close()
        gate, notes = quality_gate(src_dir, lut_type, **gate_args, progress=progress)
        return _convert_one(src_dir, dst, lut_type, weight_type, chunk_tokens=chunk_tokens,
                            memory_budget=memory_budget, progress=progress, device=device, gate=gate,
                            gate_notes=notes)
    finally:
        torch.set_num_threads(old_threads)


def _convert_one(src_dir, dst: pathlib.Path, lut_type: str, weight_type: str, *, chunk_tokens, memory_budget,
                 progress, device, gate=None, gate_notes=()) -> pathlib.Path:
    """One process writes the whole file through GGUFWriter, the LUT streamed last."""
    device = check_device(device)
    check_destination(dst)
    p = prepare(src_dir, lut_type, weight_type, chunk_tokens=chunk_tokens, memory_budget=memory_budget,
                progress=progress, device=device)
    for n in (*p.notes, *gate_notes):
        _say(f"note: {n}", progress)
    if p.lut is not None:
        _say(describe_lut(p), progress)
    _remove_stale_temps(dst)
    tmp = temp_path(dst)
    try:
        write_gguf(tmp, p.ckpt, p.plan, p.tok, p.lut, name=p.ckpt.directory.resolve().name, progress=progress,
                   gate=gate)
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        need = sum(t.nbytes for t in p.plan.tensors) + (p.lut.nbytes if p.lut is not None else 0)
        kept = f"{dst} is unchanged" if dst.exists() else f"nothing was written to {dst}"
        raise OSError(e.errno, f"no space left on device writing {tmp.name} (the file needs about "
                               f"{need / 2**20:.1f} MiB); {kept}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main_convert(argv=None) -> int:
    """`mole convert SRC DST [--lut-type ...] [--weight-type ...] [--threads N]`; returns the exit status."""
    a = convert_parser().parse_args(argv)
    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _sigterm) if in_main else None   # SIGTERM cleans up like Ctrl-C
    try:
        out = convert(a.src, a.dst, a.lut_type, a.weight_type, chunk_tokens=a.chunk_tokens, threads=a.threads,
                      progress=not a.quiet, device=a.device,
                      memory_budget=None if a.memory_mb is None else a.memory_mb << 20,
                      calibration=a.calibration, calibration_tokens=a.calibration_tokens, max_kl=a.max_kl,
                      force=a.force)
    except KeyboardInterrupt:
        print("mole convert: interrupted; no output written", file=sys.stderr)
        return 130
    except (ConvertError, OSError, ValueError) as e:
        # under torchrun every rank holds the same error: rank 0 and the ranks it names print it
        rank, named = int(os.environ.get("RANK", "0")), getattr(e, "ranks", None)
        if rank == 0 or not named or rank in named:
            print(f"mole convert: error: {e}", file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    _say(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)", not a.quiet and int(os.environ.get("RANK", "0")) == 0)
    return 0


if __name__ == "__main__":
    sys.exit(main_convert())
