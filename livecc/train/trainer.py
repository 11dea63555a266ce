"""Packed streaming training of Qwen2-VL / Qwen2.5-VL on one process or many (torchrun + FSDP2).

One optimizer step consumes ``global_batch_clips`` clips over all ranks, as packs of at most
``token_budget`` tokens. The loss is the mean over every labelled token of the step: micro-batches
backpropagate summed losses, and gradients are divided by the step's token count (all ranks)
before clipping. A step whose gradient is not finite is skipped and counted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..data.packing import Pack, PackedLoader, StreamingDataset
from ..data.windows import StreamFormat, WindowPlan
from ..models import TextOnlyHead, load_model, patch, text_only_causal_lm_loss, tiny_qwen_vl
from ..qwen_vl import PixelBudget, VideoFormat, VisionSpec, offline_processor
from .checkpoint import Checkpointer, clear_run, cut_metrics, latest_checkpoint
from .config import TrainConfig
from .flops import FlopAccount
from .metrics import MetricsLog, step_throughput
from .parallelize import apply_activation_checkpointing, apply_compile, parallelize

__all__ = ["Trainer", "train"]

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
        # fused: one kernel over all parameters instead of a loop of small ops per tensor
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                           fused=True)
        budget = PixelBudget(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
        plan = WindowPlan(cfg.initial_frames, cfg.frames_per_window)
        StreamFormat(plan, cfg.min_pixels, cfg.max_pixels).record_in(model)  # saved with every export
        temporal_patch = VisionSpec.from_processor(self.processor).temporal_patch_size
        video = VideoFormat.of(model.config, temporal_patch, plan.fps)
        gpu_decode = cfg.decode_device == "cuda"
        if gpu_decode and self.device.type != "cuda":
            raise ValueError("config key 'decode_device': cuda needs training on a CUDA device")
        dataset = StreamingDataset(cfg.data, self.processor, cfg.video_root, with_context=cfg.with_context,
                                   plan=plan, budget=budget, video=video, frame_rule=cfg.frame_rule,
                                   allow_absolute_paths=cfg.allow_absolute_paths,
                                   device=str(self.device) if gpu_decode else "cpu")
        budget = cfg.token_budget if cfg.engine == "livecc" else 1  # "hf": one clip per micro-batch
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.checkpointer = Checkpointer(self.out, self.rank, self.world)
        self.loader = PackedLoader(dataset, budget, rank=self.rank, world_size=self.world, seed=cfg.seed,
                                   num_workers=0 if gpu_decode else cfg.num_workers,
                                   threads=cfg.decode_threads if gpu_decode else 0, prefetch=cfg.prefetch_packs,
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

    # ------------------------------------------------------------------ setup

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)

    def _build_model(self, dtype):
        if self.cfg.model == "tiny":
            model = tiny_qwen_vl(seed=self.cfg.seed, **self.cfg.tiny).to(dtype)
            return model, offline_processor(model.config.model_type)
        return load_model(self.cfg.model, "cpu", dtype)

    def _prepare(self, model):
        cfg = self.cfg
        if cfg.engine == "livecc":  # the loss goes through TextOnlyHead, which FSDP wraps
            patch(model, loss=False, fused_ops=cfg.fused_ops and self.device.type == "cuda")
        if cfg.freeze_vision:
            model.model.visual.requires_grad_(False)
        if cfg.gradient_checkpointing:
            apply_activation_checkpointing(model, cfg.checkpoint_policy)
        self.flops = FlopAccount(model, cfg.checkpoint_policy if cfg.gradient_checkpointing else None,
                                 flash_backward=cfg.engine == "livecc" and self.device.type == "cuda",
                                 train_vision=not cfg.freeze_vision)
        if cfg.compile:
            apply_compile(model)
        model.to(self.device).train()
        self.head = TextOnlyHead(model.lm_head)
        if self.distributed:
            parallelize(model, self.head, world=self.world, device=self.device,
                        compute_dtype=next(model.parameters()).dtype, replicas=cfg.replicas,
                        whole_model=cfg.engine == "hf")
        return model

    # ------------------------------------------------------------------ loop

    def _next_pack(self) -> Pack | None:
        empty = 0  # passes in a row that built no pack: two (a resumed tail, then a whole epoch) mean none ever will
        while True:
            if self._packs is None:
                if self.loader.epoch >= self.cfg.epochs and not self.cfg.max_steps:
                    return None
                if empty == 2:
                    raise RuntimeError(f"no record of {', '.join(map(str, self.cfg.data))} builds a sample "
                                       f"({sum(self.loader.errors.values())} failures; see "
                                       f"{self.out}/rejects.rank{self.rank}.jsonl)")
                self._packs = iter(self.loader)
            pack = next(self._packs, None)
            if pack is not None:
                return pack
            self._packs = None
            empty += 1

    def _loss_sum(self, pack: Pack) -> torch.Tensor:
        if self.cfg.engine == "hf":
            inputs = pack.model_inputs(self.device)
            vision = {k: v for k, v in inputs.items() if "pixel" in k or "grid" in k}
            out = self.model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                             labels=pack.labels.to(self.device), **vision)
            return out.loss * pack.n_label_tokens
        # the labels and frame grids stay on the host: the labelled rows and the ViT's geometry are found there
        return text_only_causal_lm_loss(self.model, labels=pack.labels, reduction="sum", head=self.head,
                                        **pack.model_inputs(self.device, grids_on_host=True))

    def train_step(self) -> dict | None:
        t0, waited = time.perf_counter(), self.loader.stats.wait_s
        clips = tokens = label_tokens = model_flops = hardware_flops = 0
        loss_sum = torch.zeros((), device=self.device)
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
            flops = self.flops(pack.cu_seqlens.diff().tolist(), pack.n_label_tokens,
                               pack.video_grid_thw.tolist() + pack.image_grid_thw.tolist())
            model_flops, hardware_flops = model_flops + flops.model, hardware_flops + flops.hardware
        if self.distributed:  # every rank's counts and loss: the ranks must agree on what the step did (a read)
            totals = torch.cat([torch.tensor([clips, tokens, label_tokens, model_flops, hardware_flops],
                                             dtype=torch.float64, device=self.device), loss_sum.double()[None]])
            dist.all_reduce(totals)
            clips, tokens, label_tokens, model_flops, hardware_flops = totals[:5].tolist()
            loss_sum = totals[5]
        if clips == 0:
            return None
        # FSDP averages gradients over ranks; make them the mean over all labelled tokens instead.
        scale = (self.world if self.distributed else 1) / max(label_tokens, 1)
        params = [p for p in self.model.parameters() if p.grad is not None]
        for p in params:
            p.grad.mul_(scale)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # sharded gradients' norm: a DTensor, reduced on the device
            grad_norm = grad_norm.full_tensor()
        # A non-finite gradient norm skips the update on the device, as under a gradient scaler (the
        # fused AdamW applies nothing and takes its step count back), so the host need not wait here.
        self.optimizer.found_inf = (~torch.isfinite(grad_norm)).float()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # The step's one read of the device, once all its work is queued: its loss, norm and whether it applied.
        loss_total, norm, skipped = torch.stack([loss_sum.double(), grad_norm.double(),
                                                 self.optimizer.found_inf.double()]).tolist()
        if skipped:  # the data is consumed, the update and its place in the schedule are not
            self.skipped_steps += 1
            log.warning("step %d: non-finite gradient norm, step skipped", self.step + 1)
        else:
            self.scheduler.step()
        self.step += 1
        return {
            "step": self.step, "loss": loss_total / max(label_tokens, 1), "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": norm, "clips": int(clips), "tokens": int(tokens),
            "label_tokens": int(label_tokens),
            **step_throughput(tokens, time.perf_counter() - t0, model_flops, hardware_flops, self.device, self.world),
            "skipped_steps": self.skipped_steps,
            # the loader's pace while it worked, and the part of this step spent waiting on it
            **self.loader.stats.rates(), "data_wait_s": self.loader.stats.wait_s - waited,
        }

    def fit(self) -> dict:
        metrics_log = MetricsLog(self.out, self.rank, self.total_steps, self.cfg.log_every, self.cfg.wandb_project,
                                 asdict(self.cfg))
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
            metrics_log.log(metrics)
            if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self.save()
        bar.close()
        if self._packs is not None:  # stop the loader's thread and workers before anything else ends
            self._packs.close()
            self._packs = None
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
        metrics_log.close()
        return {"summary": summary, "history": history}

    # ------------------------------------------------------------------ checkpoints

    def _data_errors(self) -> dict:
        """Records that failed to build, by error type, over all ranks."""
        if not self.distributed:
            return dict(self.loader.errors)
        gathered = [None] * self.world
        dist.all_gather_object(gathered, dict(self.loader.errors))
        return dict(sum((Counter(g) for g in gathered), Counter()))

    def save(self) -> Path:
        """``output_dir/checkpoint-STEP`` (:mod:`livecc.train.checkpoint`)."""
        state = {"scheduler": self.scheduler.state_dict(), "step": self.step, "skipped_steps": self.skipped_steps,
                 "config": asdict(self.cfg)}
        rank_state = {"loader": self.loader.state_dict(), "rng_cpu": torch.get_rng_state(),
                      "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                      "rng_python": random.getstate()}
        path = self.checkpointer.save(self.step, self.model, self.optimizer, self.processor, state, rank_state)
        self.saved_step = self.step
        return path

    def resume(self, path: str | Path) -> None:
        """Continue exactly where ``save`` left off: weights, optimizer, schedule, data position, RNG."""
        state, ranked = self.checkpointer.load(path, self.model, self.optimizer)
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
            cut_metrics(self.out / "metrics.jsonl", self.step)
        log.info("resumed from %s at step %d", path, self.step)


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
    try:
        return trainer.fit()
    finally:
        if trainer.distributed:  # a process group left to the interpreter's exit can abort it
            dist.destroy_process_group()
