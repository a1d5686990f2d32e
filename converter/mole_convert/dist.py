"""torch.distributed for `mole convert` and `mole train` under torchrun: the launcher's environment noticed,
one process group per run, and the few collectives both need. A step that fails on any rank fails on
every rank with the same error, which names the ranks that failed and why."""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConvertError


class RankError(ConvertError):
    """A step failed on one or more ranks; ranks lists them (every rank raises the same message)."""

    def __init__(self, message: str, ranks: list[int]):
        super().__init__(message)
        self.ranks = ranks


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def describe(e: BaseException) -> str:
    """An exception as one line: the message of our own and OS errors, the class name too for the rest."""
    if isinstance(e, (ConvertError, OSError, ValueError)):
        return str(e)
    return f"{type(e).__name__}: {e}"


@dataclass
class World:
    """This process's place in the run. size 1 (no process group) behaves as a run of one rank."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    owns_group: bool = False           # the group was created here (and is destroyed by close())
    device: str = "cpu"                # where collective tensors live ("cuda:k" under nccl)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (every rank calls each one, in the same order) --------------------------------------
    # A peer that died (killed, out of memory) makes gloo / nccl fail the collective on the others: that is
    # a RankError too, which cannot name the rank; the launcher (torchrun) does.

    def all_gather(self, obj) -> list:
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        with _lost_contact():
            dist.all_gather_object(out, obj)
        return out

    def gather(self, obj) -> list | None:
        """obj of every rank on rank 0 (None elsewhere)."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size if self.is_main else None
        with _lost_contact():
            dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        """Rank 0's obj on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        with _lost_contact():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when flag is true on any rank."""
        if self.size == 1:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        with _lost_contact():
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks, in float64."""
        if self.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        with _lost_contact():
            dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.size > 1:
            with _lost_contact():
                dist.barrier()

    def agree(self, error: BaseException | None, what: str) -> None:
        """Every rank says whether `what` went well on it; if it failed anywhere, raise RankError on every rank,
        naming each failed rank and its error."""
        try:
            reports = self.all_gather(None if error is None else describe(error))
        except RankError as e:
            raise RankError(f"{what}: {e}", []) from (error or e)
        failed = [(r, msg) for r, msg in enumerate(reports) if msg is not None]
        if failed:
            raise RankError(f"{what} failed on " + "; ".join(f"rank {r} of {self.size}: {msg}" for r, msg in failed),
                            [r for r, _ in failed]) from error

    @contextlib.contextmanager
    def step(self, what: str):
        """`with world.step("reading the checkpoint"): ...`: the body runs on every rank, then all ranks agree
        (agree()). KeyboardInterrupt and SystemExit pass straight through: the launcher stops the others."""
        try:
            yield
        except Exception as e:
            self.agree(e, what)
            raise   # agree() always raises for a local error; this is not reached
        self.agree(None, what)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


@contextlib.contextmanager
def _lost_contact():
    try:
        yield
    except RankError:
        raise
    except Exception as e:
        raise RankError(f"lost contact with the other ranks ({describe(e)}); the launcher's log names the rank "
                        "that exited", []) from e


def init_world(backend: str = "gloo", device: str = "cpu", timeout_s: float | None = None) -> World:
    """The World of this process: the existing default process group if the caller made one, else one made
    from torchrun's environment (WORLD_SIZE > 1), else a single rank. backend: gloo (CPU tensors) or nccl
    (device must then be this rank's "cuda:k")."""
    local = dict(local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                 local_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), owns_group=False, device=device, **local)
    if launched_world_size() == 1:
        return World(device=device, **local)
    if not dist.is_available():
        raise ConvertError("WORLD_SIZE > 1 (torchrun) but this torch has no torch.distributed")
    kw = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    dist.init_process_group(backend, **kw)
    return World(dist.get_rank(), dist.get_world_size(), owns_group=True, device=device, **local)
