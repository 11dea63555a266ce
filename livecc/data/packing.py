"""Pack streaming samples into varlen batches, and the loader that feeds them to training.

A pack is one row of concatenated clips: ``cu_seqlens`` separates them for attention, each clip
keeps its own 3D M-RoPE positions (restarting at 0) and labels, and the ViT sees every frame group
of every clip at once (its own cu_seqlens come from ``video_grid_thw``). The loader shards clips
deterministically by rank, builds samples in worker processes, and resumes at a clip position.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import multiprocessing
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernels import cu_seqlens
from .records import ClipRecord, SeekableRecords
from .sequence import StreamingSample, build_conversation_sample, build_streaming_sample, is_streaming_record

__all__ = ["LoaderStats", "Pack", "PackedLoader", "SampleFailure", "StreamingDataset", "pack_samples"]

log = logging.getLogger("livecc.packing")


@dataclass
class Pack:
    input_ids: torch.Tensor  # [1, L]
    labels: torch.Tensor  # [1, L]
    position_ids: torch.Tensor  # [3, 1, L], restarting at every clip
    cu_seqlens: torch.Tensor  # [n_clips + 1] int32
    max_seqlen: int
    pixel_values_videos: torch.Tensor  # [N, 1176]
    video_grid_thw: torch.Tensor  # [groups, 3]
    n_clips: int
    pixel_values_images: torch.Tensor  # [N, 1176], the images of SFT conversations
    image_grid_thw: torch.Tensor  # [images, 3]

    @property
    def n_tokens(self) -> int:
        return self.input_ids.shape[1]

    @property
    def n_label_tokens(self) -> int:
        """Tokens that predict a label (labels are shifted by one inside the loss)."""
        return int((self.labels[:, 1:] != -100).sum())

    def model_inputs(self, device=None, grids_on_host: bool = False) -> dict:
        """Keyword arguments for a Qwen2-VL forward on livecc attention (no cross-clip attention);
        ``grids_on_host`` keeps the frame grids where livecc's loss reads them without reading the
        device (Hugging Face's own forward wants them beside the pixels)."""
        move = lambda t: t.to(device) if device is not None else t
        grid = (lambda t: t) if grids_on_host else move
        inputs = {
            "input_ids": move(self.input_ids), "position_ids": move(self.position_ids),
            "cu_seq_lens_q": move(self.cu_seqlens), "cu_seq_lens_k": move(self.cu_seqlens),
            "max_length_q": self.max_seqlen, "max_length_k": self.max_seqlen,
        }
        if self.video_grid_thw.numel():  # a pack of text-only conversations has no vision input
            inputs.update(pixel_values_videos=move(self.pixel_values_videos), video_grid_thw=grid(self.video_grid_thw))
        if self.image_grid_thw.numel():
            inputs.update(pixel_values=move(self.pixel_values_images), image_grid_thw=grid(self.image_grid_thw))
        return inputs

    @property
    def n_vision_patches(self) -> int:
        return self.pixel_values_videos.shape[0] + self.pixel_values_images.shape[0]


def pack_samples(samples: list[StreamingSample]) -> Pack:
    """Concatenate samples into one pack. A clip's first label is masked, so no loss crosses a clip
    boundary (the last token of clip i never predicts the first of clip i+1)."""
    lengths = [s.input_ids.numel() for s in samples]
    labels = []
    for s in samples:
        lab = s.labels.clone()
        lab[0] = -100
        labels.append(lab)
    return Pack(
        input_ids=torch.cat([s.input_ids for s in samples])[None],
        labels=torch.cat(labels)[None],
        position_ids=torch.cat([s.position_ids for s in samples], dim=1)[:, None],
        cu_seqlens=cu_seqlens(lengths),
        max_seqlen=max(lengths),
        pixel_values_videos=_cat_rows([s.pixel_values_videos for s in samples]),
        video_grid_thw=torch.cat([s.video_grid_thw for s in samples]),
        n_clips=len(samples),
        pixel_values_images=_cat_rows([s.pixel_values_images for s in samples]),
        image_grid_thw=torch.cat([s.image_grid_thw for s in samples]),
    )


def _cat_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Pixel rows of several samples in one tensor, on the device and in the dtype of the first
    that has any (a text-only sample's empty rows sit on the CPU even when frames were decoded on
    the GPU)."""
    first = next((r for r in rows if r.numel()), rows[0])
    return torch.cat([r.to(first.device, first.dtype) for r in rows])


# Options the conversation builder shares with the streaming one; the rest are streaming-only.
CONVERSATION_KWARGS = ("budget", "backend", "dtype", "device", "video", "frame_rule", "allow_absolute_paths")


@dataclass
class LoaderStats:
    """What a loader delivered and how long its consumer waited: ``build_s`` is the time spent
    producing packs (decoding, building, packing), ``wait_s`` the time the consumer blocked."""

    temporal_patch_size: int = 2
    packs: int = 0
    clips: int = 0
    frames: int = 0
    tokens: int = 0
    build_s: float = 0.0
    wait_s: float = 0.0

    def add(self, pack: Pack, seconds: float) -> None:
        self.packs += 1
        self.clips += pack.n_clips
        self.frames += int(pack.video_grid_thw[:, 0].sum()) * self.temporal_patch_size
        self.tokens += pack.n_tokens
        self.build_s += seconds

    def rates(self) -> dict:
        per_s = lambda n: n / self.build_s if self.build_s else None
        return {"loader_clips_per_s": per_s(self.clips), "loader_frames_per_s": per_s(self.frames),
                "data_wait_s": self.wait_s}


@dataclass
class SampleFailure:
    """A record that could not become a sample: where it is and why. Any exception building one
    sample is caught at this boundary, so one bad record never ends a run."""

    source: str  # "FILE: record i"
    error: str  # "ErrorType: message"

    @property
    def kind(self) -> str:
        return self.error.split(":", 1)[0]


class StreamingDataset(torch.utils.data.Dataset):
    """Record ``i`` of one or more JSONL files as a training sample, or the :class:`SampleFailure` it
    gave: a Live-CC record becomes a streaming sample, an ordinary chat (SFT mixes them in) a
    conversation sample."""

    def __init__(self, paths: list[str | Path], processor, video_root: str | Path | None = None, **sample_kwargs):
        self.files = [SeekableRecords(p) for p in paths]
        self.index = [(f, i) for f, records in enumerate(self.files) for i in range(len(records))]
        self.processor, self.video_root, self.sample_kwargs = processor, video_root, sample_kwargs

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> StreamingSample | SampleFailure:
        f, j = self.index[i]
        source = f"{self.files[f].path}: record {j}"
        try:
            raw = self.files[f][j]
            if is_streaming_record(raw):
                return build_streaming_sample(ClipRecord.from_messages(raw, source), self.processor,
                                              video_root=self.video_root, source=source, **self.sample_kwargs)
            shared = {k: v for k, v in self.sample_kwargs.items() if k in CONVERSATION_KWARGS}
            return build_conversation_sample(raw, self.processor, video_root=self.video_root, source=source, **shared)
        except Exception as e:  # the item's boundary: count it, never end the run
            return SampleFailure(source, f"{type(e).__name__}: {e}")


class PackedLoader:
    """Packs of at most ``token_budget`` tokens from this rank's share of a shuffled epoch.

    Order is a function of ``(seed, epoch)`` only; rank ``r`` of ``world`` takes every ``world``-th
    clip. ``state_dict()`` records how many of its clips a rank consumed; loading it skips them
    without building them. A clip longer than the budget forms a pack of its own. A record that
    fails is counted by error type and, with ``rejects``, written there with its place
    (``epoch``, ``position`` in this rank's order) and error.

    Samples are built in ``num_workers`` processes (or ``threads`` threads, for decoding on the
    GPU), and a thread keeps up to ``prefetch`` packs ready ahead of the step, so decoding and
    packing overlap training. The processes start from a fork server (:func:`_worker_processes`), so
    a script that uses them runs its work under ``if __name__ == "__main__":``, as with ``spawn``.
    ``stats`` says how fast the loader delivered (clips/s, frames/s while it worked) and how long
    its consumer waited on it.
    """

    def __init__(self, dataset: StreamingDataset, token_budget: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, num_workers: int = 0, threads: int = 0, prefetch: int = 2,
                 epoch: int = 0, rejects: str | Path | None = None, temporal_patch_size: int = 2):
        if num_workers and threads:
            raise ValueError("build samples in worker processes (num_workers) or threads (threads), not both")
        self.dataset, self.token_budget = dataset, token_budget
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.num_workers, self.threads, self.prefetch = num_workers, threads, prefetch
        self.epoch, self.consumed = epoch, 0
        self.errors: Counter = Counter()
        self.rejects = None if rejects is None else Path(rejects)
        self.stats = LoaderStats(temporal_patch_size)

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(len(self.dataset), generator=g).tolist()
        else:
            order = list(range(len(self.dataset)))
        return order[self.rank :: self.world_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "errors": dict(self.errors)}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``; rejects written past it (by a run that went on after the checkpoint)
        are cut, since those records come again."""
        self.epoch, self.consumed = state["epoch"], state["consumed"]
        self.errors = Counter(state.get("errors", {}))
        if self.rejects is not None and self.rejects.is_file():
            rows = [json.loads(line) for line in self.rejects.read_text().splitlines() if line.strip()]
            kept = [r for r in rows if (r["epoch"], r["position"]) < (self.epoch, self.consumed)]
            self.rejects.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def __iter__(self) -> Iterator[Pack]:
        """Packs until this epoch's clips run out; then the next epoch begins on the next call.

        ``consumed`` advances only when a pack is handed out, to just before the clip that opens the
        next pack, so a checkpoint taken between packs resumes with the first clip not trained on;
        failures are counted and written when the pack after them is handed out.
        """
        ahead: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(ahead, stop), daemon=True, name="livecc-loader")
        worker.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = ahead.get()
                self.stats.wait_s += time.perf_counter() - t0
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    break
                pack, position, failures = item
                for failure, at in failures:
                    self.errors[failure.kind] += 1
                    self._reject(failure, at)
                self.consumed = position
                if pack is not None:
                    yield pack
            self.epoch, self.consumed = self.epoch + 1, 0
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    ahead.get_nowait()
                worker.join(timeout=0.05)

    def _produce(self, ahead: queue.Queue, stop: threading.Event) -> None:
        """Build this epoch's packs in order and queue ``(pack, position after it, failures)``,
        then ``None``; an exception is queued for the consumer to raise."""

        def put(item) -> bool:
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    ahead.put(item, timeout=0.1)
                    return True
            return False

        try:
            indices = self._order()[self.consumed :]
            pending, size, position, failures = [], 0, self.consumed, []
            t0 = time.perf_counter()
            for sample in self._samples(indices):
                position += 1
                if isinstance(sample, SampleFailure):
                    failures.append((sample, position - 1))
                    continue
                n = sample.input_ids.numel()
                if pending and size + n > self.token_budget:
                    pack = pack_samples(pending)
                    self.stats.add(pack, time.perf_counter() - t0)
                    if not put((pack, position - 1, failures)):
                        return
                    pending, size, failures, t0 = [], 0, [], time.perf_counter()
                pending.append(sample)
                size += n
            pack = pack_samples(pending) if pending else None
            if pack is not None:
                self.stats.add(pack, time.perf_counter() - t0)
            if put((pack, position, failures)):
                put(None)
        except BaseException as e:  # raised again in the consumer's thread
            put(e)

    def _samples(self, indices: list[int]) -> Iterator[StreamingSample | SampleFailure]:
        """The dataset's items in order: from worker processes, or (``threads``) from a pool of
        threads in this process, which is what decoding on the GPU needs (an NVDEC session and the
        preprocessing kernel per thread; CUDA does not survive a fork)."""
        if not self.threads:
            yield from torch.utils.data.DataLoader(
                self.dataset, sampler=indices, batch_size=None, num_workers=self.num_workers, collate_fn=_as_built,
                prefetch_factor=2 if self.num_workers else None,
                multiprocessing_context=_worker_processes() if self.num_workers else None)
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix="livecc-sample") as pool:
            ahead: collections.deque = collections.deque()
            for i in indices:
                ahead.append(pool.submit(self.dataset.__getitem__, i))
                if len(ahead) >= 2 * self.threads:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()

    def _reject(self, failure: SampleFailure, position: int) -> None:
        log.warning("skipped %s: %s", failure.source, failure.error)
        if self.rejects is not None:
            with open(self.rejects, "a") as f:
                f.write(json.dumps({"epoch": self.epoch, "position": position, "record": failure.source,
                                    "error": failure.error}) + "\n")


def _as_built(sample):
    """The workers' collate function: a sample as the dataset built it (a lambda cannot be sent to a
    process that was not forked from this one)."""
    return sample


@functools.cache
def _worker_processes() -> multiprocessing.context.BaseContext:
    """Worker processes forked from a server that runs no thread, not from this process: the
    loader's thread would fork a process whose other threads hold locks and per-thread state, freed
    in the child (PyAV keeps one swscale context per thread, with threads of its own; freed in a
    forked child, it waits forever on threads the fork did not copy). The server imports this
    module once, so a worker starts without importing torch."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context
