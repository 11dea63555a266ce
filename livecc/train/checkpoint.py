"""Checkpoints of a training run: everything to resume exactly, plus a Hugging Face export.

``output_dir/checkpoint-STEP`` holds
- ``shard.RANK-of-WORLD.pt`` per rank: that rank's part of the model and optimizer state (its
  FSDP2 shards as plain local tensors; the whole state in one process), the loader position and
  the RNG states. Ranks write in parallel and nothing is gathered to resume.
- ``trainer.pt``: the schedule, step counters and config (plain data).
- the model in Hugging Face layout (safetensors) and the processor, for ``from_pretrained``.

A checkpoint is written into ``.checkpoint-STEP.partial`` and renamed when every rank is done, so a
directory named ``checkpoint-STEP`` is whole. Every file is read with ``torch.load(weights_only=True)``:
tensors and plain data only, nothing in a checkpoint runs. (``torch.distributed.checkpoint`` reads
its metadata with ``pickle.load``, which would run code stored in a checkpoint; it is not used.)
Resuming a sharded checkpoint needs the world size that wrote it; the Hugging Face export starts a
run at any size.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = ["Checkpointer", "clear_run", "cut_metrics", "latest_checkpoint", "load_plain"]


class Checkpointer:
    """Saves and loads the checkpoints of ``out`` for rank ``rank`` of ``world``."""

    def __init__(self, out: str | Path, rank: int = 0, world: int = 1):
        self.out, self.rank, self.world = Path(out), rank, world
        self.distributed = world > 1

    def _shard_name(self) -> str:
        return f"shard.{self.rank}-of-{self.world}.pt"

    def save(self, step: int, model, optimizer, processor, state: dict, rank_state: dict) -> Path:
        """Write ``checkpoint-step``: ``state`` (plain data, from rank 0) and, from every rank,
        its shards and ``rank_state`` (plain data and tensors)."""
        path, partial = self.out / f"checkpoint-{step}", self.out / f".checkpoint-{step}.partial"
        full_weights = _full_model_state(model) if self.distributed else None  # None: the model's own
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            model.save_pretrained(partial, state_dict=full_weights)
            processor.save_pretrained(partial)
            torch.save(state, partial / "trainer.pt")
        self._barrier()  # the directory exists for every rank
        torch.save({"model": _local(model.state_dict()), "optimizer": _local(optimizer.state_dict()), **rank_state},
                   partial / self._shard_name())
        self._barrier()
        if self.rank == 0:
            shutil.rmtree(path, ignore_errors=True)
            os.replace(partial, path)
        self._barrier()
        return path

    def load(self, path: str | Path, model, optimizer) -> tuple[dict, dict]:
        """Load this rank's shards into ``model`` and ``optimizer``; return ``(state, rank_state)``."""
        path = Path(path)
        shard = path / self._shard_name()
        if not (path / "trainer.pt").is_file():
            raise FileNotFoundError(f"{path}: not a livecc checkpoint directory (no trainer.pt)")
        if not shard.is_file():
            written = sorted(p.name for p in path.glob("shard.*.pt"))
            raise FileNotFoundError(f"{path}: no {shard.name} (written: {', '.join(written) or 'none'}); a sharded "
                                    f"checkpoint resumes at the world size that wrote it")
        state, mine = load_plain(path / "trainer.pt"), load_plain(shard)
        _load_model(model, mine.pop("model"), path)
        optimizer.load_state_dict(_like_params(mine.pop("optimizer"), optimizer))
        return state, mine

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _full_model_state(model) -> dict:
    """The whole model's weights on CPU (a collective under FSDP2: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _local(tree):
    """``tree`` with every DTensor replaced by this rank's shard (a plain tensor)."""
    from torch.distributed.tensor import DTensor

    if isinstance(tree, DTensor):
        return tree.to_local()
    if isinstance(tree, dict):
        return {k: _local(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_local(v) for v in tree)
    return tree


def _as_param(value, param):
    """A saved local shard back in the layout of ``param`` (a DTensor under FSDP2)."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.ndim == param.to_local().ndim \
            and value.ndim > 0:
        return DTensor.from_local(value.to(param.device), param.device_mesh, param.placements,
                                  shape=param.shape, stride=param.stride(), run_check=False)
    return value


def _load_model(model, saved: dict, path: Path) -> None:
    current = model.state_dict()
    missing, unexpected = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    model.load_state_dict({k: _as_param(v, current[k]) for k, v in saved.items()})


def _like_params(saved: dict, optimizer) -> dict:
    """An optimizer state dict whose per-parameter tensors take their parameter's layout."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {i: {k: _as_param(v, params[int(i)]) for k, v in s.items()} for i, s in saved["state"].items()}
    return {**saved, "state": state}


def load_plain(path: Path) -> dict:
    """A ``torch.save`` file holding tensors and plain data only; anything that would run code on
    loading (a pickled object) is refused."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused: it holds objects other than tensors and plain data, and loading "
                         f"them could run code ({str(e).splitlines()[0][:200]})") from e


def cut_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written by a run that went on after the checkpoint)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir`` (partial ones are hidden)."""
    found = [(int(p.name.split("-", 1)[1]), p) for p in Path(output_dir).glob("checkpoint-*")
             if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return max(found)[1] if found else None


def clear_run(output_dir: str | Path) -> list[Path]:
    """Remove a run's checkpoints, metrics and rejects from ``output_dir`` (to start over); return them."""
    out = Path(output_dir)
    removed = [p for pattern in ("checkpoint-*", ".checkpoint-*.partial", "metrics.jsonl", "rejects.rank*.jsonl", "tb")
               for p in out.glob(pattern)]
    for p in removed:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return removed
