"""LiveCC on Qwen3-VL: the training sample as Hugging Face's processor and ``get_rope_index`` write
it, a packed training step against Hugging Face's forward clip by clip, and streaming sessions
against one masked full forward, all on a tiny random Qwen3-VL."""

import json
from unittest import mock

import numpy as np
import pytest
import torch
from oracles import check_stream_logits
from PIL import Image

from livecc.data.packing import pack_samples
from livecc.data.records import ClipRecord
from livecc.data.sequence import build_conversation_sample, build_streaming_sample
from livecc.data.video import VideoClip
from livecc.data.words import Word
from livecc.infer import StreamingSession
from livecc.infer.graphs import DecodeGraphs, PrefillGraphs
from livecc.infer.vision import VisionGraphs
from livecc.models import patch, text_only_causal_lm_loss, tiny_qwen_vl
from livecc.qwen_vl import SYSTEM_TURN, PixelBudget, VideoFormat, assistant_turn, offline_processor, user_turn

SMALL = PixelBudget(min_pixels=32 * 32, max_pixels=128 * 128)  # frames kept at their size
WORDS = ["the", "red", "ball", "rolls", "left", "and", "stops", "there"]


@pytest.fixture(scope="module")
def processor():
    return offline_processor("qwen3_vl")


def tiny(arch="qwen3_vl", **kwargs):
    # ViT head dim 72 (Qwen3-VL's: 1152 / 16), three LLM layers of which DeepStack feeds the first two
    return tiny_qwen_vl(seed=0, arch=arch, vision_dim=144, vision_heads=2, num_layers=3, **kwargs)


def clip_and_record(gen, n_frames=10, size=(64, 96), query="Go."):
    frames = torch.randint(0, 256, (n_frames, *size, 3), dtype=torch.uint8, generator=gen)
    clip = VideoClip(frames, [k / 2 for k in range(n_frames)], "clip.mp4", "test")
    step = (n_frames / 2 - 0.5) / len(WORDS)
    words = [Word(0.2 + step * k, 0.3 + step * k, w) for k, w in enumerate(WORDS)]
    return clip, ClipRecord("clip.mp4", 0.0, n_frames / 2, words, query=query)


def hugging_face_processor(processor, grids, frame_indices):
    """Hugging Face's ``Qwen3VLProcessor`` around our tokenizer. Its video processor needs torchvision,
    so a stand-in gives it what that would return for the frames: their grids and the metadata its
    timestamps come from (frame indices at 2 FPS); everything else is Hugging Face's code."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin
    from transformers.video_utils import VideoMetadata

    class Frames:
        merge_size, temporal_patch_size = 2, 2

        def __call__(self, videos, **kwargs):
            return {"video_grid_thw": grids, "video_metadata": [
                VideoMetadata(total_num_frames=len(i), fps=2.0, frames_indices=list(i)) for i in frame_indices]}

        def _merge_and_standardize_kwargs(self, **kwargs):
            return kwargs

    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", lambda *a, **k: None):
        return Qwen3VLProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                                video_processor=Frames())


def test_the_streaming_sample_is_what_hugging_face_writes_for_the_same_frames(processor, gen):
    """Ids: Hugging Face's processor over the conversation with one video per window (each frame pair
    announced by its time, its own vision block). Positions: Hugging Face's ``get_rope_index``."""
    clip, rec = clip_and_record(gen, n_frames=11)  # an odd last window: its pair repeats its last frame
    sample = build_streaming_sample(rec, processor, clip=clip, video=VideoFormat(timestamps=True),
                                    budget=SMALL)
    assert sample.video_grid_thw.tolist() == [[3, 4, 6], [1, 4, 6], [1, 4, 6], [1, 4, 6]]
    template = SYSTEM_TURN + "".join(user_turn(w.start, w.end, rec.query if i == 0 else "") + assistant_turn(w.text)
                                     for i, w in enumerate(sample.windows))
    frame_indices = [range(w.frames.start, w.frames.stop) for w in sample.windows]
    hf = hugging_face_processor(processor, sample.video_grid_thw, frame_indices)
    out = hf(text=[template], videos=[torch.zeros(len(i), 3, 8, 8) for i in frame_indices], return_tensors="pt")
    assert torch.equal(sample.input_ids, out["input_ids"][0])
    assert "Time=3.0-4.0s<3.2 seconds><|vision_start|>" in processor.tokenizer.decode(sample.input_ids)
    assert "Time=5.0-5.5s<5.0 seconds><|vision_start|>" in processor.tokenizer.decode(sample.input_ids)
    model = tiny()
    expected, _ = model.model.get_rope_index(out["input_ids"], mm_token_type_ids=out["mm_token_type_ids"],
                                             video_grid_thw=sample.video_grid_thw)
    assert torch.equal(sample.position_ids, expected[:, 0])


def test_a_conversation_video_is_what_hugging_face_writes(processor, gen):
    clip, _ = clip_and_record(gen, n_frames=6)
    messages = [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}, {"type": "text", "text": "Who?"}]},
                {"role": "assistant", "content": "Nobody."}]
    sample = build_conversation_sample(messages, processor, clip=clip, video=VideoFormat(timestamps=True),
                                    budget=SMALL)
    # Qwen3-VL's chat template writes no default system turn (Qwen2-VL's does)
    template = ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Who?<|im_end|>\n"
                "<|im_start|>assistant\nNobody.<|im_end|>\n")
    hf = hugging_face_processor(processor, sample.video_grid_thw, [range(6)])
    out = hf(text=[template], videos=[torch.zeros(6, 3, 8, 8)], return_tensors="pt")
    assert torch.equal(sample.input_ids, out["input_ids"][0])
    expected, _ = tiny().model.get_rope_index(out["input_ids"], mm_token_type_ids=out["mm_token_type_ids"],
                                              video_grid_thw=sample.video_grid_thw)
    assert torch.equal(sample.position_ids, expected[:, 0])


def test_a_qwen3vl_moe_training_step_equals_hugging_face(processor, gen):
    """The mixture-of-experts model on livecc's attention and text-only loss: the loss (its router's
    load-balancing term included, as Hugging Face's forward adds it) and every gradient, experts and
    routers among them, equal Hugging Face's own forward on the clip."""
    clip, rec = clip_and_record(gen, 7, size=(32, 64))
    sample = build_streaming_sample(rec, processor, clip=clip, video=VideoFormat(timestamps=True), budget=SMALL)
    ours = patch(tiny("qwen3_vl_moe").train(), fused_ops=False)
    loss = text_only_causal_lm_loss(ours, labels=sample.labels[None], **pack_samples([sample]).model_inputs())
    loss.backward()
    ref = tiny("qwen3_vl_moe", attn_implementation="sdpa").train()
    ids = sample.input_ids[None]
    out = ref(input_ids=ids, labels=sample.labels[None], pixel_values_videos=sample.pixel_values_videos,
              video_grid_thw=sample.video_grid_thw, mm_token_type_ids=torch.where(ids == 151656, 2, 0))
    out.loss.backward()
    assert out.aux_loss > 0
    vision = [m for m in ours.modules() if type(m).__name__.endswith("VisionAttention")]
    assert vision and all(m.forward.__name__ == "_vision_attention_forward" for m in vision)  # livecc.patch
    torch.testing.assert_close(loss.detach(), out.loss.detach(), atol=1e-5, rtol=1e-5)
    mine = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    theirs = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert mine.keys() == theirs.keys() and any("experts" in n for n in mine) and any("gate" in n for n in mine)
    for name in mine:
        assert ((mine[name] - theirs[name]).norm() / theirs[name].norm().clamp(min=1e-12)).item() < 1e-4, name


def test_the_last_pair_of_a_decoded_odd_clip_is_timed_by_its_real_frame(processor, gen):
    """The decoder pads 11 frames to 12 by repeating the last; the last window's pair is announced at
    its real frame's time (5.0 s, as Hugging Face's processor times the frames it sampled), not at
    the mean of the frame and its copy a half second later."""
    clip, rec = clip_and_record(gen, n_frames=11)
    padded = VideoClip(torch.cat([clip.frames, clip.frames[-1:]]), clip.pts + clip.pts[-1:], "clip.mp4", "test",
                       padded=1)
    sample = build_streaming_sample(rec, processor, clip=padded, video=VideoFormat(timestamps=True), budget=SMALL)
    assert [(w.frames.start, w.frames.stop) for w in sample.windows][-1] == (10, 12)
    template = SYSTEM_TURN + "".join(user_turn(w.start, w.end, rec.query if i == 0 else "") + assistant_turn(w.text)
                                     for i, w in enumerate(sample.windows))
    real = [range(w.frames.start, min(w.frames.stop, 11)) for w in sample.windows]
    out = hugging_face_processor(processor, sample.video_grid_thw, real)(
        text=[template], videos=[torch.zeros(len(i), 3, 8, 8) for i in real], return_tensors="pt")
    assert torch.equal(sample.input_ids, out["input_ids"][0])
    assert "Time=5.0-6.0s<5.0 seconds><|vision_start|>" in processor.tokenizer.decode(sample.input_ids)


def test_an_image_in_a_conversation_is_what_hugging_face_writes(processor, tmp_path):
    """A 200x300 image sized by Qwen3-VL's rule (sides multiples of its 16-pixel patches merged 2x2:
    224x320, as its image processor sizes it), its ids as Hugging Face's processor writes them
    (no default system turn) and its positions as ``get_rope_index`` places them."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    messages = [{"role": "user", "content": [{"type": "image", "image": "p.png"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": "Noise."}]
    sample = build_conversation_sample(messages, processor, video_root=tmp_path)
    assert sample.image_grid_thw.tolist() == [[1, 14, 20]] and sample.text.startswith("<|im_start|>user\n")
    hf = hugging_face_processor(processor, torch.zeros(0, 3, dtype=torch.long), [])
    out = hf(text=[processor.apply_chat_template(messages, tokenize=False)], images=[Image.open(tmp_path / "p.png")],
             return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 14, 20]]
    assert torch.equal(sample.input_ids, out["input_ids"][0])
    expected, _ = tiny().model.get_rope_index(out["input_ids"], mm_token_type_ids=out["mm_token_type_ids"],
                                              image_grid_thw=out["image_grid_thw"])
    assert torch.equal(sample.position_ids, expected[:, 0])


def test_patch_rows_are_what_hugging_face_image_processor_makes(processor, gen):
    """16-pixel patches normalised by mean and std 0.5: a video of repeated frame pairs patchifies
    exactly like the frames as images."""
    pair = torch.randint(0, 256, (2, 256, 320, 3), dtype=torch.uint8, generator=gen)  # over HF's 65,536-pixel floor
    clip = VideoClip(pair.repeat_interleave(2, dim=0), [0.0, 0.5, 1.0, 1.5], "clip.mp4", "test")
    rec = ClipRecord("clip.mp4", 0.0, 2.0, [Word(0.0, 1.2, "x")])
    sample = build_streaming_sample(rec, processor, clip=clip, video=VideoFormat(timestamps=True),
                                    budget=PixelBudget(min_pixels=32 * 32, max_pixels=512 * 512))
    hf = processor.image_processor(images=[Image.fromarray(f.numpy()) for f in pair], return_tensors="pt")
    assert hf["image_grid_thw"].tolist() == [[1, 16, 20], [1, 16, 20]]
    torch.testing.assert_close(sample.pixel_values_videos, hf["pixel_values"].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_packed_training_step_equals_hugging_face_clip_by_clip(processor, gen, monkeypatch):
    """Two clips packed into one row on livecc's kernels (varlen attention in the LLM and in the ViT
    at head dim 72, the text-only loss; interpreted): the summed loss and every gradient equal
    Hugging Face's own forward (its positions, its DeepStack) over each clip alone. (The samples'
    patch rows are made on the torch path: the preprocessing kernel has tests of its own.)"""
    video = VideoFormat(timestamps=True)
    samples = [build_streaming_sample(r, processor, clip=c, video=video, budget=SMALL)
               for c, r in (clip_and_record(gen, 7, size=(32, 64)), clip_and_record(gen, 9, size=(64, 32), query=""))]
    pack = pack_samples(samples)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ours = patch(tiny().train(), fused_ops=False)
    loss = text_only_causal_lm_loss(ours, labels=pack.labels, reduction="sum", **pack.model_inputs())
    loss.backward()

    ref = tiny(attn_implementation="sdpa").train()
    expected = 0
    for s in samples:
        ids = s.input_ids[None]
        out = ref(input_ids=ids, labels=s.labels[None], pixel_values_videos=s.pixel_values_videos,
                  video_grid_thw=s.video_grid_thw, mm_token_type_ids=torch.where(ids == 151656, 2, 0))
        n = int((s.labels[1:] != -100).sum())
        (out.loss * n).backward()
        expected += out.loss.detach() * n
    torch.testing.assert_close(loss.detach(), expected, atol=1e-4, rtol=1e-5)
    mine = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    theirs = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert mine.keys() == theirs.keys() and any("deepstack" in n for n in mine) and any("blocks" in n for n in mine)
    for name in mine:  # fp32 sums in another order: compare norms
        assert ((mine[name] - theirs[name]).norm() / theirs[name].norm()).item() < 1e-4, name


@pytest.mark.parametrize("arch, dtype", [("qwen3_vl", torch.float32), ("qwen3_vl", torch.bfloat16),
                                         ("qwen3_vl_moe", torch.float32)], ids=["fp32", "bf16", "moe-fp32"])
def test_a_streaming_session_equals_one_masked_full_forward(processor, gen, arch, dtype):
    """Windows prefilled over the cache with the interleaved M-RoPE continuing it and DeepStack on
    each window's new visual tokens, paged decode, evictions: every logit equals Hugging Face's one
    forward over the same windows (bf16: within the tolerance of two bf16 computations; the MoE's
    decoder layers route each token to its experts)."""
    model = tiny(arch, attn_implementation="eager").to(dtype)
    session = StreamingSession(model, processor, query="What happens?", trace=True, max_new_tokens=4,
                               horizon=2.0, max_text_tokens=60, text_sink=10, page_size=16)
    for i in range(6):
        frames = torch.randint(0, 256, (session.frames_needed, 70, 100, 3), dtype=torch.uint8, generator=gen)
        session.step(frames, force_text="the ball" if i % 3 == 1 else None)
    assert session.cache.evicted > 0
    text = processor.tokenizer.decode(torch.cat(session.trace.ids))
    assert "Time=0.0-3.0s<0.2 seconds><|vision_start|>" in text and "<2.2 seconds><|vision_start|>" in text
    assert "Time=4.0-5.0s<4.2 seconds><|vision_start|>" in text
    check_stream_logits(model, session.trace, dtype, at_least=7)


@pytest.mark.slow
def test_the_kernel_path_and_static_steps_equal_one_full_forward(processor, gen, triton_interpreter):
    """The paged varlen prefill and paged decode kernels (interpreted) inside the model, from the
    static buffers CUDA graphs replay (the ViT's DeepStack features and the prefill's among them)."""
    model = tiny(attn_implementation="eager")
    session = StreamingSession(model, processor, max_new_tokens=3, trace=True, page_size=16,
                               min_pixels=32 * 32, max_pixels=32 * 32)
    session.engine.runner.decode_graphs = DecodeGraphs(model, session.cache.pool)
    session.engine.runner.prefill_graphs = PrefillGraphs(model, session.cache.pool)
    session.engine.runner.vision_graphs = VisionGraphs(model)
    for _ in range(3):
        session.step(torch.randint(0, 256, (session.frames_needed, 32, 32, 3), dtype=torch.uint8, generator=gen))
    assert session.engine.runner.prefill_graphs.builds >= 1 and session.engine.runner.decode_graphs.builds >= 1
    check_stream_logits(model, session.trace, at_least=7)


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen3_vl_moe"])
def test_livecc_train_and_stream_take_a_qwen3vl_directory(tmp_path, capsys, arch):
    """A Qwen3-VL (dense or MoE) checkpoint directory (weights, tokenizer, image settings): ``livecc
    train`` trains it with Qwen3-VL's sample format, and ``livecc stream`` comments a clip with the
    result."""
    from livecc.cli import main
    from livecc.data.records import RecordWriter
    from livecc.data.synth import synthesize_clip

    base = tmp_path / "qwen3vl"
    tiny(arch).save_pretrained(base)
    offline_processor("qwen3_vl").save_pretrained(base)
    with RecordWriter(tmp_path / "train.jsonl") as w:
        for i in range(2):
            w.write(synthesize_clip(tmp_path, f"c{i}", seed=i, duration=8.0, n_events=2, size=(64, 64)))
    overrides = dict(model=str(base), data=[str(tmp_path / "train.jsonl")], video_root=str(tmp_path),
                     output_dir=str(tmp_path / "run"), global_batch_clips=2, token_budget=3000, max_steps=2,
                     min_pixels=64 * 64, max_pixels=64 * 64, gradient_checkpointing=False)
    assert main(["train", *(f"{k}={json.dumps(v)}" for k, v in overrides.items())]) == 0
    checkpoint = tmp_path / "run" / "checkpoint-2"
    out = tmp_path / "said.jsonl"
    assert main(["stream", str(tmp_path / "c0.mp4"), "--model", str(checkpoint), "--fast", "--max-new-tokens", "3",
                 "--jsonl", str(out)]) == 0
    said = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["end"] for r in said] == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


def test_a_question_about_a_video_is_asked_at_hugging_face_positions(processor, gen):
    """``video_prompt_logits`` (multiple-choice evaluation) writes the frames as Qwen3-VL does: the
    same logits as Hugging Face's forward computing its own positions over the same ids."""
    from livecc.qwen_vl import video_prompt_logits

    model = tiny()
    frames = torch.randint(0, 256, (6, 64, 96, 3), dtype=torch.uint8, generator=gen)
    seen = {}
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: seen.update(kwargs), with_kwargs=True)
    logits = video_prompt_logits(model, processor, frames, (64, 96), "Who?", "Answer:")
    hook.remove()
    ids = seen["input_ids"]
    assert "<|im_start|>user\n<0.2 seconds><|vision_start|>" in processor.tokenizer.decode(ids[0])
    with torch.no_grad():
        theirs = model(input_ids=ids, pixel_values_videos=seen["pixel_values_videos"],
                       video_grid_thw=seen["video_grid_thw"], mm_token_type_ids=torch.where(ids == 151656, 2, 0))
    torch.testing.assert_close(logits, theirs.logits[0, -1], atol=1e-5, rtol=1e-5)


def test_a_served_stream_comments_with_qwen3vl(processor, tmp_path):
    """``livecc serve``'s hub steps a Qwen3-VL stream fed frame by frame: windows of its plan, said
    with their times."""
    import time

    from livecc.serve import Hub

    hub = Hub(tiny(), processor, max_streams=1, upload_dir=tmp_path / "u")
    try:
        stream = hub.open(hub.reserve(), "frames", "Go.")
        for _ in range(8):
            hub.add_frame(stream, torch.zeros(64, 64, 3, dtype=torch.uint8))
        deadline = time.monotonic() + 60
        while len(stream.viewers.said) < 2:
            assert time.monotonic() < deadline and not stream.closed
            time.sleep(0.05)
        assert [(e["start"], e["end"]) for e in stream.viewers.said] == [(0.0, 3.0), (3.0, 4.0)]
    finally:
        hub.shutdown()


def test_every_qwen_vl_family_has_its_format_and_any_other_model_type_is_refused():
    from types import SimpleNamespace

    timestamps = {arch: VideoFormat.of(tiny_qwen_vl(arch=arch).config).timestamps
                  for arch in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")}
    assert timestamps == {"qwen2_vl": False, "qwen2_5_vl": False, "qwen3_vl": True, "qwen3_vl_moe": True}
    with pytest.raises(ValueError, match="'llava' is not a Qwen-VL family"):
        VideoFormat.of(SimpleNamespace(model_type="llava"))
