"""Packed streaming training of Qwen2-VL / Qwen2.5-VL on one process or many (torchrun + FSDP2).

One optimizer step consumes ``global_batch_clips`` clips over all ranks, as packs of at most
``token_budget`` tokens. The loss is the mean over every labelled token of the step: micro-batches
backpropagate summed losses, and gradients are divided by the step's token count (all ranks)
before clipping. A step whose gradient is not finite is skipped and counted.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pickle
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.checkpoint import create_selective_checkpoint_contexts
from tqdm import tqdm

from ..data.packing import Pack, PackedLoader, StreamingDataset
from ..models import TextOnlyHead, load_model, patch, text_only_causal_lm_loss, tiny_qwen2vl
from ..qwen2vl import PixelBudget, VisionSpec, offline_processor, rope_time_interval
from .config import TrainConfig
from .metrics import peak_flops

__all__ = ["Trainer", "clear_run", "latest_checkpoint", "train"]

log = logging.getLogger("livecc.train")

class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"config key 'device': cuda, but this PyTorch ({torch.__version__}) sees no CUDA device")
        if (cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self._seed(cfg.seed)
        dtype = torch.bfloat16 if cfg.bf16 and self.device.type == "cuda" else torch.float32
        model, self.processor = self._build_model(dtype)
        self.model = self._prepare(model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.frozen_vision = sum(p.numel() for p in self.model.model.visual.parameters() if not p.requires_grad)
        # fused: one kernel over all parameters instead of a loop of small ops per tensor
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                           fused=True)
        budget = PixelBudget(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
        temporal_patch = VisionSpec.from_processor(self.processor).temporal_patch_size
        interval = rope_time_interval(model.config, temporal_patch)
        dataset = StreamingDataset(cfg.data, self.processor, cfg.video_root, with_context=cfg.with_context,
                                   budget=budget, time_interval=interval, frame_rule=cfg.frame_rule,
                                   allow_absolute_paths=cfg.allow_absolute_paths)
        budget = cfg.token_budget if cfg.engine == "livecc" else 1  # "hf": one clip per micro-batch
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.loader = PackedLoader(dataset, budget, rank=self.rank, world_size=self.world, seed=cfg.seed,
                                   num_workers=cfg.num_workers, prefetch=cfg.prefetch_packs,
                                   rejects=self.out / f"rejects.rank{self.rank}.jsonl",
                                   temporal_patch_size=temporal_patch)
        self.clips_per_rank = max(1, math.ceil(cfg.global_batch_clips / self.world))
        steps_per_epoch = max(1, math.ceil(len(dataset) / cfg.global_batch_clips))
        self.total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
        warmup = max(1, round(cfg.warmup_ratio * self.total_steps))
        schedule = lambda s: _cosine(s, warmup, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.step, self.skipped_steps = 0, 0
        self.saved_step = None  # the step of the last checkpoint written or resumed from
        self._packs = None
        self.metrics_file = None
        self.tb = None

    # ------------------------------------------------------------------ setup

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)

    def _build_model(self, dtype):
        if self.cfg.model == "tiny":
            return tiny_qwen2vl(seed=self.cfg.seed, **self.cfg.tiny).to(dtype), offline_processor()
        return load_model(self.cfg.model, "cpu", dtype)

    def _prepare(self, model):
        cfg = self.cfg
        if cfg.engine == "livecc":  # the loss goes through TextOnlyHead, which FSDP wraps
            patch(model, loss=False, fused_ops=cfg.fused_ops and self.device.type == "cuda")
        if cfg.freeze_vision:
            model.model.visual.requires_grad_(False)
        if cfg.gradient_checkpointing:
            _enable_checkpointing(model, cfg.checkpoint_policy)
        model.to(self.device).train()
        self.head = TextOnlyHead(model.lm_head)
        if self.distributed:
            from torch.distributed.fsdp import fully_shard

            # Units: each decoder layer, the rest of the decoder + ViT, and the text-only head; the
            # loss calls model.model and the head, never the whole model's forward.
            for layer in model.model.language_model.layers:
                fully_shard(layer)
            fully_shard(model.model)
            fully_shard(self.head if self.cfg.engine == "livecc" else model)
        return model

    # ------------------------------------------------------------------ loop

    def _next_pack(self) -> Pack | None:
        while True:
            if self._packs is None:
                if self.loader.epoch >= self.cfg.epochs and not self.cfg.max_steps:
                    return None
                self._packs = iter(self.loader)
            pack = next(self._packs, None)
            if pack is not None:
                return pack
            self._packs = None

    def _loss_sum(self, pack: Pack) -> torch.Tensor:
        labels = pack.labels.to(self.device)
        if self.cfg.engine == "hf":
            inputs = pack.model_inputs(self.device)
            vision = {k: v for k, v in inputs.items() if "pixel" in k or "grid" in k}
            out = self.model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], labels=labels,
                             **vision)
            return out.loss * pack.n_label_tokens
        return text_only_causal_lm_loss(self.model, labels=labels, reduction="sum", head=self.head,
                                        **pack.model_inputs(self.device))

    def train_step(self) -> dict | None:
        t0, waited = time.perf_counter(), self.loader.stats.wait_s
        clips = tokens = label_tokens = 0
        loss_sum = torch.zeros((), device=self.device)
        vision_patches = 0
        while clips < self.clips_per_rank:
            pack = self._next_pack()
            if pack is None:
                break
            loss = self._loss_sum(pack)
            loss.backward()
            loss_sum += loss.detach().float()
            clips += pack.n_clips
            tokens += pack.n_tokens
            label_tokens += pack.n_label_tokens
            vision_patches += pack.n_vision_patches
        totals = torch.tensor([clips, tokens, label_tokens, loss_sum.item()], dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(totals)
        clips, tokens, label_tokens, loss_total = totals.tolist()
        if clips == 0:
            return None
        # FSDP averages gradients over ranks; make them the mean over all labelled tokens instead.
        scale = (self.world if self.distributed else 1) / max(label_tokens, 1)
        params = [p for p in self.model.parameters() if p.grad is not None]
        for p in params:
            p.grad.mul_(scale)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        finite = bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.scheduler.step()
        else:  # the data is consumed, the update and its place in the schedule are not
            self.skipped_steps += 1
            log.warning("step %d: non-finite gradient norm, step skipped", self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        flops = 6 * self.trainable * tokens + 2 * self.frozen_vision * vision_patches
        peak = peak_flops(self.device)
        return {
            "step": self.step, "loss": loss_total / max(label_tokens, 1), "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm), "clips": int(clips), "tokens": int(tokens),
            "label_tokens": int(label_tokens),
            "seconds": seconds, "tokens_per_s": tokens / seconds,
            "mfu": flops / seconds / (peak * self.world) if peak else None,
            "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None,
            "skipped_steps": self.skipped_steps,
            # the loader's pace while it worked, and the part of this step spent waiting on it
            **self.loader.stats.rates(), "data_wait_s": self.loader.stats.wait_s - waited,
        }

    def fit(self) -> dict:
        if self.rank == 0:
            self.metrics_file = open(self.out / "metrics.jsonl", "a")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                self.tb = None
        started, history = time.perf_counter(), []
        last = min(self.cfg.stop_after if self.cfg.stop_after is not None else self.total_steps, self.total_steps)
        bar = tqdm(total=last, initial=self.step, desc="train", unit="step", disable=self.rank != 0, leave=False)
        while self.step < last:
            metrics = self.train_step()
            if metrics is None:
                break
            history.append(metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            self._log(metrics)
            if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self.save()
        bar.close()
        if self.saved_step != self.step:
            self.save()
        elapsed = time.perf_counter() - started
        summary = {
            "steps": self.step, "skipped_steps": self.skipped_steps, "seconds": round(elapsed, 2),
            "clips": sum(m["clips"] for m in history), "tokens": sum(m["tokens"] for m in history),
            "final_loss": history[-1]["loss"] if history else None, "data_errors": self._data_errors(),
        }
        summary["tokens_per_s"] = summary["tokens"] / elapsed if elapsed else None
        if self.rank == 0:
            print("summary: " + json.dumps(summary), flush=True)
            self.metrics_file.close()
            if self.tb:
                self.tb.close()
        return {"summary": summary, "history": history}

    def _log(self, m: dict) -> None:
        if self.rank != 0:
            return
        self.metrics_file.write(json.dumps(m) + "\n")
        self.metrics_file.flush()
        if self.tb:
            for k in ("loss", "lr", "grad_norm", "tokens_per_s", "data_wait_s"):
                self.tb.add_scalar(k, m[k], m["step"])
        if m["step"] % self.cfg.log_every == 0:
            mfu = f" mfu={m['mfu']:.1%}" if m["mfu"] is not None else ""
            mem = f" mem={m['max_memory_gb']:.1f}GB" if m["max_memory_gb"] is not None else ""
            fed = f" loader={m['loader_clips_per_s']:.2f}clips/s" if m["loader_clips_per_s"] else ""
            print(f"step {m['step']}/{self.total_steps} loss={m['loss']:.4f} lr={m['lr']:.2e} "
                  f"gnorm={m['grad_norm']:.3f} clips={m['clips']} tok/s={m['tokens_per_s']:.0f}{mfu}{mem}"
                  f"{fed} wait={m['data_wait_s']:.2f}s", flush=True)

    # ------------------------------------------------------------------ checkpoints

    def _state_dicts(self):
        if self.distributed:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_model_state_dict(self.model, options=opts), get_optimizer_state_dict(
                self.model, self.optimizer, options=opts)
        return self.model.state_dict(), self.optimizer.state_dict()

    def _data_errors(self) -> dict:
        """Records that failed to build, by error type, over all ranks."""
        if not self.distributed:
            return dict(self.loader.errors)
        gathered = [None] * self.world
        dist.all_gather_object(gathered, dict(self.loader.errors))
        return dict(sum((Counter(g) for g in gathered), Counter()))

    def save(self) -> Path:
        """``output_dir/checkpoint-STEP``: the model in Hugging Face layout (safetensors, loadable by
        ``from_pretrained``) plus everything to resume, as tensors and plain data only. Written into
        a hidden directory and renamed when complete, so a checkpoint that exists is whole."""
        path = self.out / f"checkpoint-{self.step}"
        partial = self.out / f".checkpoint-{self.step}.partial"
        model_state, optim_state = self._state_dicts()
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            self.model.save_pretrained(partial, state_dict=model_state)
            self.processor.save_pretrained(partial)
            torch.save({"optimizer": optim_state, "scheduler": self.scheduler.state_dict(), "step": self.step,
                        "skipped_steps": self.skipped_steps, "config": asdict(self.cfg)}, partial / "trainer.pt")
        if self.distributed:
            dist.barrier()  # the directory exists for every rank
        torch.save({"loader": self.loader.state_dict(), "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "rng_python": random.getstate()}, partial / f"rank{self.rank}.pt")
        if self.distributed:
            dist.barrier()
        if self.rank == 0:
            shutil.rmtree(path, ignore_errors=True)
            os.replace(partial, path)
        if self.distributed:
            dist.barrier()
        self.saved_step = self.step
        return path

    def resume(self, path: str | Path) -> None:
        """Continue exactly where ``save`` left off: weights, optimizer, schedule, data position, RNG.
        Nothing in a checkpoint runs: its files are read as tensors and plain data only."""
        path = Path(path)
        if not (path / "trainer.pt").is_file() or not (path / f"rank{self.rank}.pt").is_file():
            raise FileNotFoundError(f"{path}: not a livecc checkpoint directory (no trainer.pt / rank{self.rank}.pt)")
        from transformers import AutoModelForImageTextToText

        state, ranked = _load_plain(path / "trainer.pt"), _load_plain(path / f"rank{self.rank}.pt")
        # Through from_pretrained (safetensors): it maps the checkpoint's key names back to the module's.
        dtype = next(self.model.parameters()).dtype
        weights = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True).state_dict()
        if self.distributed:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            set_model_state_dict(self.model, weights, options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
        else:
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
            tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
            if set(missing) - tied or unexpected:
                raise ValueError(f"{path}: checkpoint does not match the model ({missing[:3]}, {unexpected[:3]})")
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.skipped_steps = state["step"], state["skipped_steps"]
        self.saved_step = self.step
        self.loader.load_state_dict(ranked["loader"])
        self._packs = None
        torch.set_rng_state(ranked["rng_cpu"])
        if ranked["rng_cuda"] is not None:
            torch.cuda.set_rng_state_all(ranked["rng_cuda"])
        random.setstate(ranked["rng_python"])
        if self.rank == 0:
            _cut_metrics(self.out / "metrics.jsonl", self.step)
        log.info("resumed from %s at step %d", path, self.step)


def _load_plain(path: Path) -> dict:
    """A ``torch.save`` file holding tensors and plain data only; anything that would run code on
    loading (a pickled object) is refused."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused: it holds objects other than tensors and plain data, and loading "
                         f"them could run code ({str(e).splitlines()[0][:200]})") from e


def _cut_metrics(path: Path, step: int) -> None:
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


def _enable_checkpointing(model, policy: str = "full") -> None:
    """Non-reentrant activation checkpointing of every decoder layer. ``"full"`` recomputes the
    whole layer in the backward; ``"selective"`` saves the outputs of the GEMMs and attention (the
    costly ops) and recomputes only the elementwise ones (norms, rotary, activations, residuals).

    transformers 5.23 renamed ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)``
    (the only spelling of the GPU image's 5.17) to ``activation_checkpointing_enable(...)``."""
    kwargs = {"use_reentrant": False}
    if policy == "selective":
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _saved_ops())
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _saved_ops() -> list:
    """The ops whose outputs selective checkpointing keeps: matrix products and attention."""
    aten = torch.ops.aten
    ops = [aten.mm.default, aten.addmm.default, aten.bmm.default, torch.ops.livecc.varlen_attention_fwd.default]
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu"):
        if hasattr(aten, name):
            ops.append(getattr(aten, name).default)
    return ops


def _cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(cfg: TrainConfig, resume: str | Path | None = None, restart: bool = False) -> dict:
    """Train; by default continue from the latest complete checkpoint in ``cfg.output_dir``.
    ``resume`` names another checkpoint to continue from; ``restart`` removes the run's checkpoints,
    metrics and rejects first and starts at step 0."""
    if resume is not None and restart:
        raise ValueError("--resume and --restart contradict each other")
    trainer = Trainer(cfg)
    if restart and trainer.rank == 0:
        for p in clear_run(cfg.output_dir):
            print(f"removed {p}", flush=True)
    if trainer.distributed:
        dist.barrier()  # every rank sees the same checkpoints
    if resume is None and not restart:
        resume = latest_checkpoint(cfg.output_dir)
    if resume is not None:
        if trainer.rank == 0:
            print(f"resuming from {resume}", flush=True)
        trainer.resume(resume)
    return trainer.fit()
