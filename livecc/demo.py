"""``livecc demo``: a model learns to comment from words interleaved with frames, then comments live.

1. Synthesize real H.264 clips of coloured shapes entering and leaving, with the commentary words
   at the event times, as Live-CC records (training and held-out clips).
2. Train a tiny Qwen2-VL-architecture model (random init; ``arch="qwen3_vl"``: Qwen3-VL) with the
   streaming objective, through ``livecc.train``: packed varlen attention and the text-only loss.
3. Stream the held-out clips through ``livecc.infer`` at real-time pace, printing the words.
4. Score words (precision / recall / F1, a word counts when the same word is said within 1 s of
   the truth) for the trained model, the untrained one, and the trained one on blank frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .data.records import ClipRecord, RecordWriter
from .data.synth import background, synthesize_clip
from .data.video import decode_clip
from .data.windows import pace
from .data.words import Word
from .infer import SessionConfig, StreamingSession

__all__ = ["DemoConfig", "run_demo", "word_f1"]

DEMO_DECODING = "--max-new-tokens 8 --repetition-penalty 1.0"  # how the demo streams, as command-line flags

TINY = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, vision_depth=2, vision_dim=64, vision_heads=4,
            tie_word_embeddings=True)
FRAME = {"qwen2_vl": 112, "qwen3_vl": 128}  # pixels per side: 16 LLM tokens per 1 s window (14- or 16-pixel patches)
STEPS = {"qwen2_vl": 450, "qwen3_vl": 450}
# Four clips (a step's batch) in one pack: a Qwen3-VL clip is ~15% longer (each frame pair announced
# by its time), and at 1600 tokens its steps took two packs of three clips, half again the work.
TOKEN_BUDGET = {"qwen2_vl": 1600, "qwen3_vl": 1900}
NAMES = {"qwen2_vl": "Qwen2-VL", "qwen3_vl": "Qwen3-VL"}


@dataclass
class DemoConfig:
    out: str = "demo_out"
    train_clips: int = 96
    test_clips: int = 6
    duration: float = 12.0
    steps: int | None = None  # training steps; None: the arch's (STEPS)
    lr: float = 1e-3
    events: int = 2  # shapes per clip
    seed: int = 0
    realtime: bool = True
    arch: str = "qwen2_vl"  # or "qwen3_vl"

    def __post_init__(self):
        if self.arch not in FRAME:
            raise ValueError(f"demo arch must be one of {', '.join(FRAME)}, got {self.arch!r}")
        if self.steps is None:
            self.steps = STEPS[self.arch]

    @property
    def frame(self) -> int:
        return FRAME[self.arch]


def word_f1(predicted: list[Word], truth: list[Word], tolerance: float = 1.0) -> dict:
    """Greedy one-to-one matching of equal words whose times (end times) differ by <= tolerance."""
    used = [False] * len(truth)
    hits = 0
    for p in predicted:
        for j, t in enumerate(truth):
            if not used[j] and t.text == p.text and abs(t.end - p.end) <= tolerance:
                used[j] = True
                hits += 1
                break
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "predicted": len(predicted), "truth": len(truth)}


def _synthesize(root: Path, cfg: DemoConfig) -> tuple[Path, list[ClipRecord]]:
    train_file = root / "train.jsonl"
    tests = []
    with RecordWriter(train_file) as writer:
        for i in tqdm(range(cfg.train_clips), desc="synthesize training clips", unit="clip"):
            writer.write(synthesize_clip(root, f"train{i:03d}", seed=cfg.seed * 100_003 + i, duration=cfg.duration,
                                         n_events=cfg.events, size=(cfg.frame, cfg.frame)))
    with RecordWriter(root / "test.jsonl") as writer:
        for i in tqdm(range(cfg.test_clips), desc="synthesize held-out clips", unit="clip"):
            record = synthesize_clip(root, f"test{i:03d}", seed=10**6 + cfg.seed * 1009 + i, duration=cfg.duration,
                                     n_events=cfg.events, size=(cfg.frame, cfg.frame))
            writer.write(record)
            tests.append(record)
    return train_file, tests


def _stream(model, processor, config: SessionConfig, root: Path, record: ClipRecord, blank: bool, realtime: bool,
            show: bool) -> list[Word]:
    """Comment on a held-out clip window by window. Each word is stamped with the time of its
    window's last frame: a window answers the words spoken up to that frame (``docs/spec.md`` section 4)."""
    session = StreamingSession(model, processor, config)
    frames = decode_clip(root / record.video, record.video_start, record.video_end, resize=False).frames
    if blank:  # the empty field: no shapes at all
        frames = torch.from_numpy(background(tuple(frames.shape[1:3]))).expand_as(frames).clone()
    words = []
    for window, _ in pace(config.plan.windows(frames), realtime=realtime):  # a live viewer's pace
        result = session.step(window)
        said = result.end - 1 / config.plan.fps
        words += [Word(said, said, w) for w in result.text.split()]
        if show and result.text:
            print(f"  [{result.start:5.1f}-{result.end:5.1f}s] {result.text}", flush=True)
    return words


def _score(model, processor, config: SessionConfig, root: Path, tests: list[ClipRecord], blank=False,
           realtime=False, show=False) -> dict:
    predicted, truth = [], []
    for k, record in enumerate(tests):
        if show:
            print(f"{record.video}: truth = {' '.join(w.text for w in record.words)}")
        shift = k * 1000.0  # keep clips apart on one time axis for matching
        predicted += [Word(w.start + shift, w.end + shift, w.text)
                      for w in _stream(model, processor, config, root, record, blank, realtime, show)]
        truth += [Word(w.start + shift, w.end + shift, w.text) for w in record.words]
    return word_f1(predicted, truth)


def run_demo(cfg: DemoConfig) -> dict:
    from .models import tiny_qwen_vl
    from .train import TrainConfig, Trainer

    started = time.perf_counter()
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    train_file, tests = _synthesize(root, cfg)
    t_synth = time.perf_counter() - started

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    tiny = dict(TINY, arch=cfg.arch)
    print(f"training a tiny {NAMES[cfg.arch]} ({tiny}) for {cfg.steps} steps on {cfg.train_clips} clips, on {device}")
    train_cfg = TrainConfig(model="tiny", tiny=tiny, data=[str(train_file)], video_root=str(root),
                            output_dir=str(root / "run"), lr=cfg.lr, warmup_ratio=0.05, max_steps=cfg.steps,
                            global_batch_clips=4, token_budget=TOKEN_BUDGET[cfg.arch], gradient_checkpointing=False,
                            freeze_vision=False, min_pixels=cfg.frame**2, max_pixels=cfg.frame**2,
                            log_every=10, seed=cfg.seed)
    t0 = time.perf_counter()
    trainer = Trainer(train_cfg)
    trainer.fit()
    t_train = time.perf_counter() - t0
    model, processor = trainer.model.eval(), trainer.processor

    print("\nheld-out clips, streamed at real-time pace" if cfg.realtime else "\nheld-out clips")
    t0 = time.perf_counter()
    # as it was trained to stream (its recorded window plan and frame size), for all three runs
    config = SessionConfig.for_model(model, max_new_tokens=8, repetition_penalty=1.0)  # = DEMO_DECODING
    trained = _score(model, processor, config, root, tests, realtime=cfg.realtime, show=True)
    t_stream = time.perf_counter() - t0
    # On the device and dtype of the trained model: the kernels of one process run on one device.
    param = next(model.parameters())
    baseline = tiny_qwen_vl(seed=cfg.seed, **tiny).to(device=param.device, dtype=param.dtype).eval()
    untrained = _score(baseline, processor, config, root, tests)
    blanked = _score(model, processor, config, root, tests, blank=True)

    rows = {"trained": trained, "untrained": untrained, "trained, blank frames": blanked}
    print("\n| model | precision | recall | F1 | words said | words true |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['predicted']} "
              f"| {r['truth']} |")
    timings = {"synthesize_s": round(t_synth, 1), "train_s": round(t_train, 1), "stream_s": round(t_stream, 1),
               "total_s": round(time.perf_counter() - started, 1)}
    print("\ntimings: " + " ".join(f"{k}={v}" for k, v in timings.items()))
    checkpoint = root / "run" / f"checkpoint-{trainer.step}"
    clip = root / tests[-1].video if tests else root / "test000.mp4"
    print(f"\nthe trained model: {checkpoint} (it streams as it was trained: windows of {config.plan.initial_frames} "
          f"then {config.plan.frames_per_window} frames, {config.min_pixels} pixels a frame). Try it:\n"
          f"  livecc stream {clip} --model {checkpoint} {DEMO_DECODING}\n"
          f"  livecc serve --model {checkpoint} {DEMO_DECODING}    # then open http://127.0.0.1:8000/, "
          f"choose {clip}, Start")
    return {"scores": rows, "timings": timings, "checkpoint": str(checkpoint)}
