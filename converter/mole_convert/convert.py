"""convert(): an HF MoLE checkpoint directory (training, re-parameterized or dense form) -> one GGUF file,
written to DST.tmp-<pid> and renamed over DST only when complete. `mole convert` is main_convert()."""
from __future__ import annotations

import errno
import glob
import os
import pathlib
import signal
import sys
import threading

import torch

from .checkpoint import load_checkpoint
from .errors import ConvertError
from .args import DEFAULT_MAX_KL, GATED_LUT_TYPES, LUT_TYPES, WEIGHT_TYPES, convert_parser
from .gguf_out import plan_tensors, write_gguf
from .lut_gate import DEFAULT_TOKENS, GateResult, measure
from .quantize import block_size, can_quantize
from .reparam import LutStream
from .tokenizer_meta import build_tokenizer_meta


def temp_path(dst: pathlib.Path, pid: int | None = None) -> pathlib.Path:
    """Where a conversion to dst writes until it renames: DST.tmp-<pid>."""
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


def convert(src_dir, dst_path, lut_type: str = "q8_0", weight_type: str = "f16", *,
            chunk_tokens: int | None = None, threads: int | None = None, progress: bool = True,
            memory_budget: int | None = None, calibration=None, calibration_tokens: int = DEFAULT_TOKENS,
            max_kl: float = DEFAULT_MAX_KL, force: bool = False) -> pathlib.Path:
    """Convert a checkpoint directory to a GGUF file at dst_path and return its path.

    lut_type: f32|f16|bf16|q8_0|q4_0|iq4_nl|q3_k (the LUT); weight_type: f32|f16|bf16|q8_0 (matrices; norms and
    router stay f32). chunk_tokens forces the LUT chunk size, otherwise it follows memory_budget (bytes).
    threads: torch threads for the re-parameterization (default: all cores). An existing dst_path is
    replaced only once the new file is complete; on any failure no partial file is left.
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
    if dst.is_dir():
        raise ConvertError(f"output path {dst} is a directory")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"output directory {dst.parent} does not exist")

    ckpt = load_checkpoint(src_dir)
    c = ckpt.config
    if ckpt.tokenizer_path is None:
        raise ConvertError(f"{ckpt.directory}: no tokenizer.json beside config.json; the GGUF file must carry "
                           "the tokenizer")
    tok = build_tokenizer_meta(ckpt.tokenizer_path, c.vocab_size, bos_token_id=c.bos_token_id,
                               eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
                               chat_template=ckpt.chat_template)
    plan = plan_tensors(ckpt, weight_type)
    notes = tok.notes + plan.notes
    lut = None
    if ckpt.form != "dense":
        row_len = c.num_hidden_layers * c.num_experts * c.hidden_size
        if not can_quantize(lut_type, row_len) and lut_type in GATED_LUT_TYPES:
            raise ConvertError(f"LUT row length {row_len} (L*N*d) is not a multiple of the {lut_type} block size "
                               f"{block_size(lut_type)}; a smaller LUT type must divide it (q4_0, iq4_nl: 32)")
        if not can_quantize(lut_type, row_len):
            notes.append(f"LUT row length {row_len} is not a multiple of the {lut_type} block size; stored as f16")
            lut_type = "f16"
        lut = LutStream(ckpt, lut_type, chunk_tokens=chunk_tokens, memory_budget=memory_budget, progress=progress)
    gate = None
    if lut is not None and lut_type in GATED_LUT_TYPES:
        saved_threads = torch.get_num_threads()
        torch.set_num_threads(threads or os.cpu_count() or 1)
        try:
            gate = measure(ckpt, lut_type, calibration, calibration_tokens)
        finally:
            torch.set_num_threads(saved_threads)
        _say(gate.describe(), progress)
        if gate.kl > max_kl:
            if not force:
                raise QualityGateError(
                    f"quality gate: {gate.describe()} passes the limit {max_kl} nats/token; keep the default "
                    f"q8_0 LUT, or pass --force (force=True) to write it anyway", gate)
            notes.append(f"LUT {lut_type}: KL {gate.kl:.5f} passes the limit {max_kl}; written because forced")
    for n in notes:
        _say(f"note: {n}", progress)
    if lut is not None:
        p = lut.plan
        _say(f"{ckpt.form} checkpoint, LUT [{p.vocab} x {p.row_len}] {p.lut_type} = {lut.nbytes / 2**30:.2f} GiB, "
             f"{p.chunk_tokens} tokens per chunk, experts {'kept' if p.keep_weights else 'read per chunk'}", progress)

    _remove_stale_temps(dst)
    tmp = temp_path(dst)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        write_gguf(tmp, ckpt, plan, tok, lut, name=ckpt.directory.resolve().name, progress=progress, gate=gate)
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        need = sum(t.nbytes for t in plan.tensors) + (lut.nbytes if lut is not None else 0)
        kept = f"{dst} is unchanged" if dst.exists() else f"nothing was written to {dst}"
        raise OSError(e.errno, f"no space left on device writing {tmp.name} (the file needs about "
                               f"{need / 2**20:.1f} MiB); {kept}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        torch.set_num_threads(old_threads)
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
                      progress=not a.quiet,
                      memory_budget=None if a.memory_mb is None else a.memory_mb << 20,
                      calibration=a.calibration, calibration_tokens=a.calibration_tokens, max_kl=a.max_kl,
                      force=a.force)
    except KeyboardInterrupt:
        print("mole convert: interrupted; no output written", file=sys.stderr)
        return 130
    except (ConvertError, OSError, ValueError) as e:
        print(f"mole convert: error: {e}", file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    _say(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)", not a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main_convert())
