import pytest
import torch
from PIL import Image

from livecc.data.records import ClipRecord
from livecc.data.sequence import EmptySampleError, build_streaming_sample, context_text, plan_windows
from livecc.data.video import VideoClip
from livecc.data.words import Word


def make_clip(n_frames, size=(252, 336), fps=2.0, t0=10.0, seed=None):
    """A decoded clip with frames at exactly t0 + k/fps, sized within the pixel budget (no resize)."""
    g = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31, ())))
    frames = torch.randint(0, 256, (n_frames, *size, 3), dtype=torch.uint8, generator=g)
    return VideoClip(frames=frames, pts=[t0 + k / fps for k in range(n_frames)], source="clip.mp4", backend="test")


def record(words, query="", **kw):
    return ClipRecord(video="clip.mp4", video_start=10.0, video_end=20.0,
                      words=[Word(*w) for w in words], query=query, **kw)


def labelled_text(sample, tokenizer):
    return tokenizer.decode(sample.input_ids[sample.labels != -100])


def test_golden_sequence_character_for_character(processor):
    clip = make_clip(12)  # frames at 10.0 ... 15.5: windows cut at pts 12.5, 13.5, 14.5, 15.5
    words = [(10.2, 10.4, "all"), (10.4, 10.6, "right"), (12.6, 13.5, "here"), (14.6, 15.0, "we"), (15.0, 15.2, "go")]
    sample = build_streaming_sample(record(words, query="Comment on the video."), processor, clip=clip)
    grid_tokens = (252 // 28) * (336 // 28)  # 108 LLM tokens per 2-frame group
    pads = lambda t: "<|vision_start|>" + "<|video_pad|>" * (t * grid_tokens) + "<|vision_end|>"
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\nTime=0.0-3.0s{pads(3)}Comment on the video.<|im_end|>\n"
        "<|im_start|>assistant\nall right ...<|im_end|>\n"
        f"<|im_start|>user\nTime=3.0-4.0s{pads(1)}<|im_end|>\n"
        "<|im_start|>assistant\nhere ...<|im_end|>\n"
        f"<|im_start|>user\nTime=4.0-5.0s{pads(1)}<|im_end|>\n"
        "<|im_start|>assistant\n ...<|im_end|>\n"
        f"<|im_start|>user\nTime=5.0-6.0s{pads(1)}<|im_end|>\n"
        "<|im_start|>assistant\nwe go ...<|im_end|>\n"
    )
    assert processor.tokenizer.decode(sample.input_ids) == expected
    assert sample.video_grid_thw.tolist() == [[3, 18, 24], [1, 18, 24], [1, 18, 24], [1, 18, 24]]
    assert sample.pixel_values_videos.shape == (6 * 18 * 24, 1176)
    assert labelled_text(sample, processor.tokenizer) == (
        "all right ...<|im_end|>here ...<|im_end|> ...<|im_end|>we go ...<|im_end|>")


def test_labels_cover_exactly_assistant_content(processor):
    clip = make_clip(16)
    words = [(10.0 + 0.37 * k, 10.2 + 0.37 * k, f"w{k}") for k in range(20)]
    sample = build_streaming_sample(record(words, query="q"), processor, clip=clip)
    ids, labels = sample.input_ids, sample.labels
    assistant, newline = processor.tokenizer.convert_tokens_to_ids(["assistant", "\u010a"])
    im_start, im_end, pad = processor.tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|video_pad|>"])
    inside = torch.zeros_like(ids, dtype=torch.bool)
    turn_is_assistant = False
    for i, tok in enumerate(ids.tolist()):
        if tok == im_start:
            turn_is_assistant = ids[i + 1] == assistant
            start = i + 3
        if turn_is_assistant and i >= start:
            inside[i] = True
            if tok == im_end:
                turn_is_assistant = False
    assert torch.equal(labels != -100, inside)
    assert torch.equal(labels[inside], ids[inside])
    assert not (labels == pad).any() and (ids == pad).float().mean() > 0.5


def test_matches_hugging_face_chat_template(processor):
    """Our direct rendering equals the reference's way: apply_chat_template over window turns."""
    clip = make_clip(10)
    words = [(10.1, 10.3, "one"), (13.1, 13.4, "two"), (14.2, 14.4, "three")]
    rec = record(words, query="Describe.")
    sample = build_streaming_sample(rec, processor, clip=clip)
    conversation = []
    for i, w in enumerate(sample.windows):
        content = [{"type": "text", "text": f"Time={w.start:.1f}-{w.end:.1f}s"}, {"type": "video"}]
        if i == 0:
            content.append({"type": "text", "text": "Describe."})
        conversation += [{"role": "user", "content": content},
                         {"role": "assistant", "content": [{"type": "text", "text": w.text}]}]
    assert processor.apply_chat_template(conversation, tokenize=False) == sample.text


def test_word_window_edges(processor):
    clip = make_clip(14)  # cuts at 12.5, 13.5, 14.5, 15.5, 16.5
    words = [
        (12.0, 12.5, "exact"),  # ends exactly on the first window's last pts
        (12.9, 13.6, "spans"),  # starts in window 2, ends in window 3 -> window 3
        (16.0, 16.5, "late"),  # after a long silence, in the last window
        (16.6, 17.0, "after"),  # after the last frame: belongs to no window
    ]
    sample = build_streaming_sample(record(words), processor, clip=clip)
    assert [w.text for w in sample.windows] == ["exact ...", " ...", "spans ...", " ...", "late ..."]
    assert "after" not in processor.tokenizer.decode(sample.input_ids)


def test_last_word_is_not_repeated_and_trailing_windows_are_dropped(processor):
    """The reference re-emits a clip's last word in every later window (and crashes once the words
    run out); here every word appears once and trailing silent windows are removed."""
    clip = make_clip(20)
    sample = build_streaming_sample(record([(10.2, 10.5, "hello"), (13.1, 13.3, "world")]), processor, clip=clip)
    text = labelled_text(sample, processor.tokenizer)
    assert text.count("hello") == 1 and text.count("world") == 1
    assert len(sample.windows) == 2 and sample.video_grid_thw[:, 0].sum() == 4  # frames of dropped windows too


def test_clip_shorter_than_the_first_window(processor):
    clip = make_clip(4)
    sample = build_streaming_sample(record([(10.1, 11.4, "short")]), processor, clip=clip)
    assert len(sample.windows) == 1 and "Time=0.0-2.0s" in sample.text
    assert sample.video_grid_thw.tolist() == [[2, 18, 24]]


def test_clip_without_words_in_its_frames_is_an_error(processor):
    with pytest.raises(EmptySampleError, match="no words within the frames of clip.mp4"):
        build_streaming_sample(record([(30.0, 30.5, "later")]), processor, clip=make_clip(6))


def test_context_text():
    assert context_text(record([], query="q", title="T", previous=""), True) == "q\nT"
    assert context_text(record([], query="", title="T", previous="before"), True) == "before"
    assert context_text(record([], query="q", title="T", previous="before"), False) == "q"


def test_plan_windows():
    assert [(w.frames.start, w.frames.stop) for w in plan_windows(11)] == [(0, 6), (6, 8), (8, 10), (10, 11)]
    assert [(w.start, w.end) for w in plan_windows(8)] == [(0.0, 3.0), (3.0, 4.0)]


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_position_ids_match_hugging_face_rope_index(processor, arch):
    from livecc.models import tiny_qwen_vl
    from livecc.qwen_vl import VideoFormat

    model = tiny_qwen_vl(arch=arch)
    video = VideoFormat.of(model.config)
    assert video.time_interval == (1.0 if arch == "qwen2_vl" else 2.0)  # Qwen2.5-VL: 2 positions per second
    assert not video.timestamps
    clip = make_clip(12)
    sample = build_streaming_sample(record([(10.1, 10.3, "a"), (15.1, 15.4, "b")], query="q"), processor, clip=clip,
                                    video=video)
    ids = sample.input_ids[None]
    mm_types = torch.where(ids == model.config.video_token_id, 2, 0)
    seconds = {"second_per_grid_ts": torch.ones(len(sample.video_grid_thw))} if arch == "qwen2_5_vl" else {}
    expected, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm_types, video_grid_thw=sample.video_grid_thw,
                                             **seconds)
    assert torch.equal(sample.position_ids, expected[:, 0])


def test_patch_rows_of_a_sample_match_hugging_face_image_processor(processor, gen):
    """HF's video processor needs torchvision; its image processor is the oracle instead: a video of
    repeated frame pairs [a, a, b, b] patchifies exactly like the images a and b."""
    pair = torch.randint(0, 256, (2, 252, 336, 3), dtype=torch.uint8, generator=gen)
    frames = pair.repeat_interleave(2, dim=0)
    clip = VideoClip(frames, [10.0, 10.5, 11.0, 11.5], "clip.mp4", "test")
    sample = build_streaming_sample(record([(10.0, 11.2, "x")]), processor, clip=clip)
    hf = processor.image_processor(images=[Image.fromarray(f.numpy()) for f in pair], return_tensors="pt")
    assert hf["image_grid_thw"].tolist() == [[1, 18, 24], [1, 18, 24]]
    torch.testing.assert_close(sample.pixel_values_videos, hf["pixel_values"].float(), atol=1e-5, rtol=1e-5)


CONVERSATION = [
    {"role": "user", "content": [{"type": "video", "video": "clip.mp4"}, {"type": "text", "text": "Who scores?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "The striker."}]},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "A corner."},
]


def test_conversation_sample_for_sft(processor):
    from livecc.data.sequence import build_conversation_sample, is_streaming_record
    from livecc.models import tiny_qwen_vl

    assert not is_streaming_record(CONVERSATION) and is_streaming_record(record([(10.1, 10.3, "a")]).to_messages())
    sample = build_conversation_sample(CONVERSATION, processor, clip=make_clip(8))
    as_template = [{"role": m["role"], "content": [{"type": "video"} if c.get("type") == "video" else c
                                                   for c in m["content"]] if isinstance(m["content"], list)
                    else [{"type": "text", "text": m["content"]}]} for m in CONVERSATION]
    assert processor.apply_chat_template(as_template, tokenize=False) == sample.text
    assert labelled_text(sample, processor.tokenizer) == "The striker.<|im_end|>A corner.<|im_end|>"
    assert sample.video_grid_thw.tolist() == [[4, 18, 24]] and sample.windows == []
    model = tiny_qwen_vl()
    ids = sample.input_ids[None]
    mm_types = torch.where(ids == model.config.video_token_id, 2, 0)
    expected, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm_types, video_grid_thw=sample.video_grid_thw)
    assert torch.equal(sample.position_ids, expected[:, 0])


def test_mixed_streaming_and_conversation_records_pack_and_train(processor, tmp_path):
    from livecc.data.packing import PackedLoader, StreamingDataset, pack_samples
    from livecc.data.records import RecordWriter
    from livecc.data.synth import synthesize_clip
    from livecc.models import text_only_causal_lm_loss, tiny_qwen_vl, use_livecc_attention

    with RecordWriter(tmp_path / "mix.jsonl") as w:
        w.write(synthesize_clip(tmp_path, "clip", seed=0, duration=8.0))
        w.write([{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}])
        w.write([{"role": "user", "content": [{"type": "video", "video": "clip.mp4", "video_start": 1.0,
                                               "video_end": 4.0}, {"type": "text", "text": "Colour?"}]},
                 {"role": "assistant", "content": "Red."}])
        w.write([{"role": "user", "content": "no answer"}])  # nothing to learn: counted, skipped
        w.write([{"role": "robot", "content": "?"}])  # malformed: counted, skipped
    dataset = StreamingDataset([tmp_path / "mix.jsonl"], processor, tmp_path)
    loader = PackedLoader(dataset, token_budget=100_000, shuffle=False)
    (pack,) = list(loader)
    assert pack.n_clips == 3 and sum(loader.errors.values()) == 2
    model = tiny_qwen_vl()
    use_livecc_attention(model)
    loss = text_only_causal_lm_loss(model, labels=pack.labels, **pack.model_inputs())
    assert torch.isfinite(loss)
    alone = pack_samples([dataset[1]])  # text only
    assert "pixel_values_videos" not in alone.model_inputs()
    assert torch.isfinite(text_only_causal_lm_loss(model, labels=alone.labels, **alone.model_inputs()))


def test_windows_of_odd_length_pad_their_own_last_pair(processor):
    """With 4- then 3-frame windows, each window's last frame is repeated into its last pair (as a
    stream pads each window), so the patch rows are the windows' own and agree with the grids."""
    from livecc.data.windows import WindowPlan
    from livecc.kernels import preprocess_frames
    from livecc.qwen_vl import VisionSpec

    clip = make_clip(12)
    sample = build_streaming_sample(record([(10.2, 10.4, "a"), (15.0, 15.2, "b")]), processor, clip=clip,
                                    plan=WindowPlan(initial_frames=4, frames_per_window=3))
    assert [(w.frames.start, w.frames.stop) for w in sample.windows] == [(0, 4), (4, 7), (7, 10), (10, 12)]
    assert sample.video_grid_thw.tolist() == [[2, 18, 24], [2, 18, 24], [2, 18, 24], [1, 18, 24]]
    spec = VisionSpec.from_processor(processor)
    rows = [preprocess_frames(clip.frames[w.frames], (252, 336), spec)[0] for w in sample.windows]
    assert torch.equal(sample.pixel_values_videos, torch.cat(rows))
    assert sample.pixel_values_videos.shape[0] == int(sample.video_grid_thw.prod(-1).sum())
