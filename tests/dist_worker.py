"""One rank of the distributed tests (tests/test_scale_out.py), started by torchrun:

    torchrun --standalone --nproc-per-node 2 tests/dist_worker.py SCENARIO SPEC.json

SCENARIO convert: every case of SPEC is converted in the one process group, each rank logging where it
wrote; failures: every case injects a failure on one rank and logs what each rank raised; kill: rank 1
SIGKILLs itself inside the LUT (main_convert, so SIGTERM from torchrun cleans up as in `mole convert`);
train: mole_convert.train.main with SPEC's argv, logging what each rank saved and the batch shapes it
trained on (SPEC's full_disk: rank 0's saves fail). Results go to SPEC's "out"."""
import json
import os
import pathlib
import signal
import sys

import torch.distributed as dist

RANK = int(os.environ["RANK"])


def log(out: pathlib.Path, name: str, obj) -> None:
    (out / f"{name}.rank{RANK}.json").write_text(json.dumps(obj))


def record_writes(sharded):
    """Every pwrite this rank makes through sharded._pwrite_all: [offset, length]."""
    writes = []
    orig = sharded._pwrite_all

    def pwrite_all(fd, data, offset):
        writes.append([offset, len(memoryview(data).cast("B"))])
        orig(fd, data, offset)

    sharded._pwrite_all = pwrite_all
    return writes


def inject(case: dict):
    """Install the case's failure on its rank; returns a function that removes it."""
    import mole_convert.reparam as reparam
    import mole_convert.sharded as sharded

    conv = sys.modules["mole_convert.convert"]   # the module (mole_convert.convert is the function)
    if case["rank"] != RANK:
        return lambda: None
    where = case["where"]
    if where == "lut":   # after this rank's first chunk is written
        orig = reparam.LutStream._computed

        def failing(self, *args):
            for i, item in enumerate(orig(self, *args)):
                if i == 1:
                    raise RuntimeError("injected failure in the LUT")
                yield item
        reparam.LutStream._computed = failing
        return lambda: setattr(reparam.LutStream, "_computed", orig)
    if where == "checkpoint":
        orig = conv.load_checkpoint

        def missing(src):
            raise FileNotFoundError(f"injected: no checkpoint at {src} on this node")
        conv.load_checkpoint = missing
        return lambda: setattr(conv, "load_checkpoint", orig)
    if where == "open":   # the file rank 0 created is not on this rank's filesystem
        orig = sharded.os.open

        def elsewhere(path, *args):
            if ".tmp-" in str(path):
                raise FileNotFoundError(2, "No such file or directory", str(path))
            return orig(path, *args)
        sharded.os.open = elsewhere
        return lambda: setattr(sharded.os, "open", orig)
    if where == "fsync":
        orig = sharded.os.fsync

        def eio(fd):
            raise OSError(5, "injected write-back error (EIO)")
        sharded.os.fsync = eio
        return lambda: setattr(sharded.os, "fsync", orig)
    raise ValueError(where)


def main() -> int:
    scenario, spec = sys.argv[1], json.loads(pathlib.Path(sys.argv[2]).read_text())
    out = pathlib.Path(spec["out"])
    if scenario == "train":
        import torch
        import mole_convert.train as train
        from mole_convert.model import MoleForCausalLM
        saves, batches = [], []
        forward = MoleForCausalLM.forward

        def recording(self, input_ids):
            if self.training:
                batches.append(list(input_ids.shape))
            return forward(self, input_ids)
        MoleForCausalLM.forward = recording
        orig_ckpt, orig_save = train.save_checkpoint, torch.save
        train.save_checkpoint = lambda *a, **k: (saves.append("checkpoint"), orig_ckpt(*a, **k))[1]
        torch.save = lambda *a, **k: (saves.append("state"), orig_save(*a, **k))[1]
        if spec.get("full_disk") and RANK == 0:   # rank 0's first save finds the disk full
            def full(*a, **k):
                raise OSError(28, "No space left on device (injected)")
            train.save_checkpoint = full
        rc = train.main(spec["argv"])
        log(out, "saves", saves)
        log(out, "batches", batches)
        return rc
    if scenario == "kill":
        import mole_convert.reparam as reparam
        from mole_convert.convert import main_convert
        orig = reparam.LutStream._computed

        def killed(self, *args):
            for i, item in enumerate(orig(self, *args)):
                if i == 1 and RANK == 1:
                    pathlib.Path(spec["marker"]).write_text("killing")
                    os.kill(os.getpid(), signal.SIGKILL)
                yield item
        reparam.LutStream._computed = killed
        return main_convert(spec["argv"])

    import mole_convert.sharded as sharded
    from mole_convert.convert import convert
    from mole_convert.dist import RankError
    dist.init_process_group("gloo")
    writes = record_writes(sharded)
    for case in spec["cases"]:
        sharded.SHARED_BLOCK = case.get("block", 1 << 20)
        writes.clear()
        undo = inject(case) if scenario == "failures" else (lambda: None)
        result = {"ok": True}
        try:
            convert(case["src"], case["dst"], case["lut_type"], "f32", chunk_tokens=case["chunk"], progress=False)
        except RankError as e:
            result = {"ok": False, "error": str(e), "ranks": e.ranks}
        finally:
            undo()
        result["writes"] = list(writes)
        log(out, case["name"], result)
        dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
