"""LiveCC on Qwen3-VL: the training sample as Hugging Face's processor and ``get_rope_index`` write
it, a packed training step against Hugging Face's forward clip by clip, and streaming sessions
against one masked full forward, all on a tiny random Qwen3-VL."""

import json
from unittest import mock

import pytest
import torch
from PIL import Image

from livecc.data.packing import pack_samples
from livecc.data.records import ClipRecord
from livecc.data.sequence import build_conversation_sample, build_streaming_sample
from livecc.data.video import VideoClip
from livecc.data.words import Word
from livecc.infer import StreamingSession
from livecc.infer.graphs import DecodeGraphs, PrefillGraphs
from livecc.models import patch, text_only_causal_lm_loss, tiny_qwen2vl
from livecc.qwen2vl import SYSTEM_TURN, PixelBudget, VideoFormat, assistant_turn, offline_processor, user_turn

TOL = {torch.float32: dict(atol=2e-4, rtol=1e-4), torch.bfloat16: dict(atol=8e-2, rtol=5e-2)}
SMALL = PixelBudget(min_pixels=32 * 32, max_pixels=128 * 128)  # frames kept at their size
WORDS = ["the", "red", "ball", "rolls", "left", "and", "stops", "there"]


@pytest.fixture(scope="module")
def processor():
    return offline_processor("qwen3_vl")


def tiny(**kwargs):
    # ViT head dim 72 (Qwen3-VL's: 1152 / 16), three LLM layers of which DeepStack feeds the first two
    return tiny_qwen2vl(seed=0, arch="qwen3_vl", vision_dim=144, vision_heads=2, num_layers=3, **kwargs)


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
    template = SYSTEM_TURN + ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Who?<|im_end|>\n"
                              "<|im_start|>assistant\nNobody.<|im_end|>\n")
    hf = hugging_face_processor(processor, sample.video_grid_thw, [range(6)])
    out = hf(text=[template], videos=[torch.zeros(6, 3, 8, 8)], return_tensors="pt")
    assert torch.equal(sample.input_ids, out["input_ids"][0])
    expected, _ = tiny().model.get_rope_index(out["input_ids"], mm_token_type_ids=out["mm_token_type_ids"],
                                              video_grid_thw=sample.video_grid_thw)
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


def test_a_packed_training_step_equals_hugging_face_clip_by_clip(processor, gen, triton_interpreter):
    """Two clips packed into one row on livecc's kernels (varlen attention in the LLM and in the ViT
    at head dim 72, the text-only loss; interpreted): the summed loss and every gradient equal
    Hugging Face's own forward (its positions, its DeepStack) over each clip alone."""
    video = VideoFormat(timestamps=True)
    samples = [build_streaming_sample(r, processor, clip=c, video=video, budget=SMALL)
               for c, r in (clip_and_record(gen, 8), clip_and_record(gen, 10, size=(96, 64), query=""))]
    pack = pack_samples(samples)
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


def full_forward_logits(model, trace):
    """Hugging Face's forward over everything a session fed (its own positions from ``get_rope_index``
    over the ids, its DeepStack), evicted tokens hidden from later queries."""
    ids = torch.cat(trace.ids)[None]
    n = ids.shape[1]
    visible = torch.ones(n, n, dtype=torch.bool).tril()
    for fed_by_then, origins in trace.evictions:
        visible[fed_by_then:, origins] = False
    mask = torch.zeros(1, 1, n, n, dtype=model.dtype).masked_fill(~visible, float("-inf"))
    grids = torch.cat(trace.grids)
    positions, _ = model.model.get_rope_index(ids, mm_token_type_ids=torch.where(ids == 151656, 2, 0),
                                              video_grid_thw=grids)
    assert torch.equal(positions[:, 0], torch.cat(trace.positions, dim=1))
    with torch.no_grad():
        out = model(input_ids=ids, position_ids=positions, attention_mask=mask,
                    pixel_values_videos=torch.cat(trace.pixel_values).to(model.dtype), video_grid_thw=grids)
    return out.logits[0]


def check_logits(model, session, dtype=torch.float32):
    full = full_forward_logits(model, session.trace)
    assert len(session.trace.logits) > 6
    for index, logits in session.trace.logits:
        torch.testing.assert_close(logits, full[index].float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_streaming_session_equals_one_masked_full_forward(processor, gen, dtype):
    """Windows prefilled over the cache with the interleaved M-RoPE continuing it and DeepStack on
    each window's new visual tokens, paged decode, evictions: every logit equals Hugging Face's one
    forward over the same windows (bf16: within the tolerance of two bf16 computations)."""
    model = tiny(attn_implementation="eager").to(dtype)
    session = StreamingSession(model, processor, query="What happens?", trace=True, max_new_tokens=4,
                               horizon=2.0, max_text_tokens=60, text_sink=10, page_size=16)
    for i in range(6):
        frames = torch.randint(0, 256, (session.frames_needed, 70, 100, 3), dtype=torch.uint8, generator=gen)
        session.step(frames, force_text="the ball" if i % 3 == 1 else None)
    assert session.cache.evicted > 0
    text = processor.tokenizer.decode(torch.cat(session.trace.ids))
    assert "Time=0.0-3.0s<0.2 seconds><|vision_start|>" in text and "<2.2 seconds><|vision_start|>" in text
    assert "Time=4.0-5.0s<4.2 seconds><|vision_start|>" in text
    check_logits(model, session, dtype)


def test_the_kernel_path_and_static_steps_equal_one_full_forward(processor, gen, triton_interpreter):
    """The paged varlen prefill and paged decode kernels (interpreted) inside the model, from the
    static buffers CUDA graphs replay (the prefill's DeepStack features among them)."""
    model = tiny(attn_implementation="eager")
    session = StreamingSession(model, processor, max_new_tokens=3, trace=True, page_size=16,
                               min_pixels=64 * 64, max_pixels=64 * 64)
    session.engine.runner.decode_graphs = DecodeGraphs(model, session.cache.pool)
    session.engine.runner.prefill_graphs = PrefillGraphs(model, session.cache.pool)
    for _ in range(3):
        session.step(torch.randint(0, 256, (session.frames_needed, 64, 64, 3), dtype=torch.uint8, generator=gen))
    assert session.engine.runner.prefill_graphs.builds >= 1 and session.engine.runner.decode_graphs.builds >= 1
    check_logits(model, session)


def test_livecc_train_and_stream_take_a_qwen3vl_directory(tmp_path, capsys):
    """A Qwen3-VL checkpoint directory (weights, tokenizer, image settings): ``livecc train`` trains
    it with Qwen3-VL's sample format, and ``livecc stream`` comments a clip with the result."""
    from livecc.cli import main
    from livecc.data.records import RecordWriter
    from livecc.data.synth import synthesize_clip

    base = tmp_path / "qwen3vl"
    tiny().save_pretrained(base)
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
    from livecc.qwen2vl import video_prompt_logits

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
        stream = hub.open("frames", "Go.")
        for _ in range(8):
            hub.add_frame(stream, torch.zeros(64, 64, 3, dtype=torch.uint8))
        deadline = time.monotonic() + 60
        while len(stream.viewers.said) < 2:
            assert time.monotonic() < deadline and not stream.closed
            time.sleep(0.05)
        assert [(e["start"], e["end"]) for e in stream.viewers.said] == [(0.0, 3.0), (3.0, 4.0)]
    finally:
        hub.shutdown()
