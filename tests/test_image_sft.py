"""Image SFT conversations (single and multiple images, images beside a video): the tokens, vision
inputs and 3D positions equal Hugging Face's processor rule and ``get_rope_index``, labels cover
the answers only, and the packed loss equals Hugging Face's forward on the same conversation."""

import numpy as np
import pytest
import torch
from PIL import Image

from livecc.data.image import ImageError, image_pixel_bounds
from livecc.data.records import RecordError
from livecc.data.sequence import build_conversation_sample
from livecc.data.video import VideoClip
from livecc.qwen_vl import smart_resize

LEVEL = 1 / 255 / 0.26130258  # one uint8 step, in normalised units


def smooth_image(path, h, w, seed):
    """A smooth picture (PIL's and torch's bicubic then agree within a level or so)."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(x * g.uniform(2, 6) + y * g.uniform(2, 6) + g.uniform(0, 6)) for _ in range(3)]
    pixels = ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def hugging_face(processor, text, images, video_grid=None):
    """What Qwen2VLProcessor produces: its image processor's rows and grids, each ``<|image_pad|>``
    expanded to grid.prod() / merge**2 pads before tokenizing (as its __call__ does)."""
    out = processor.image_processor(images=[Image.fromarray(p) for p in images], return_tensors="pt")
    grids = out["image_grid_thw"]
    expanded, it = "", iter(grids.tolist())
    for i, piece in enumerate(text.split("<|image_pad|>")):
        expanded += piece if i == 0 else "<|image_pad|>" * (np.prod(next(it)) // 4) + piece
    if video_grid is not None:
        expanded = expanded.replace("<|video_pad|>", "<|video_pad|>" * int(video_grid.prod() // 4))
    ids = torch.tensor(processor.tokenizer(expanded, add_special_tokens=False).input_ids)
    return ids, out["pixel_values"].float(), grids


@pytest.fixture
def pictures(tmp_path):
    return [smooth_image(tmp_path / f"p{i}.png", h, w, seed=i) for i, (h, w) in enumerate([(300, 420), (97, 61)])]


def test_images_match_hugging_face(processor, tmp_path, pictures):
    from livecc.models import tiny_qwen_vl

    conversation = [
        {"role": "user", "content": [{"type": "image", "image": "p0.png"}, {"type": "text", "text": "And this one?"},
                                     {"type": "image", "image": "p1.png"}]},
        {"role": "assistant", "content": "A wave and a stripe."},
        {"role": "user", "content": [{"type": "text", "text": "Again?"}, {"type": "image", "image": "p0.png"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The wave."}]},
    ]
    sample = build_conversation_sample(conversation, processor, video_root=tmp_path)
    assert processor.apply_chat_template(conversation, tokenize=False) == sample.text
    ids, pixels, grids = hugging_face(processor, sample.text, [pictures[0], pictures[1], pictures[0]])
    assert torch.equal(sample.input_ids, ids)
    assert torch.equal(sample.image_grid_thw, grids) and sample.video_grid_thw.numel() == 0
    low, high = image_pixel_bounds(processor)
    assert grids[1].tolist() == [1, *(s // 14 for s in smart_resize(97, 61, 28, low, high))]
    diff = (sample.pixel_values_images - pixels).abs() / LEVEL
    assert diff.max() <= 3.001 and diff.mean() < 0.25
    assert processor.tokenizer.decode(sample.input_ids[sample.labels != -100]) == \
        "A wave and a stripe.<|im_end|>The wave.<|im_end|>"
    model = tiny_qwen_vl()
    mm_types = torch.where(ids == model.config.image_token_id, 1, 0)[None]
    expected, _ = model.model.get_rope_index(ids[None], mm_token_type_ids=mm_types, image_grid_thw=grids)
    assert torch.equal(sample.position_ids, expected[:, 0])


def test_images_beside_a_video_keep_the_order_of_their_blocks(processor, tmp_path, pictures):
    from livecc.models import tiny_qwen_vl

    frames = torch.randint(0, 256, (4, 84, 112, 3), dtype=torch.uint8)
    clip = VideoClip(frames, [0.0, 0.5, 1.0, 1.5], "clip.mp4", "test")
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": "p1.png"}, {"type": "video", "video": "clip.mp4"},
                                     {"type": "image", "image": "p0.png"}, {"type": "text", "text": "Same?"}]},
        {"role": "assistant", "content": "No."},
    ]
    sample = build_conversation_sample(conversation, processor, video_root=tmp_path, clip=clip)
    ids, _, grids = hugging_face(processor, sample.text, [pictures[1], pictures[0]], sample.video_grid_thw)
    assert torch.equal(sample.input_ids, ids) and torch.equal(sample.image_grid_thw, grids)
    model = tiny_qwen_vl()
    mm_types = (torch.where(ids == model.config.image_token_id, 1, 0)
                + torch.where(ids == model.config.video_token_id, 2, 0))[None]
    expected, _ = model.model.get_rope_index(ids[None], mm_token_type_ids=mm_types, image_grid_thw=grids,
                                             video_grid_thw=sample.video_grid_thw)
    assert torch.equal(sample.position_ids, expected[:, 0])


def test_packed_image_conversations_train_like_hugging_face(processor, tmp_path, pictures):
    from livecc.data.packing import pack_samples
    from livecc.models import text_only_causal_lm_loss, tiny_qwen_vl, use_livecc_attention

    one = [{"role": "user", "content": [{"type": "image", "image": "p0.png"}, {"type": "text", "text": "What?"}]},
           {"role": "assistant", "content": "Waves."}]
    two = [{"role": "user", "content": [{"type": "image", "image": "p1.png"}, {"type": "image", "image": "p0.png"}]},
           {"role": "assistant", "content": "Two pictures."}]
    samples = [build_conversation_sample(c, processor, video_root=tmp_path) for c in (one, two)]
    pack = pack_samples(samples)
    assert pack.image_grid_thw.shape == (3, 3) and pack.n_vision_patches == pack.pixel_values_images.shape[0]
    ours = tiny_qwen_vl(seed=0)
    use_livecc_attention(ours)
    ref = tiny_qwen_vl(seed=0, attn_implementation="sdpa")
    with torch.no_grad():
        packed = text_only_causal_lm_loss(ours, labels=pack.labels, reduction="sum", **pack.model_inputs())
        separate = 0.0
        for s in samples:
            n = int((s.labels[1:] != -100).sum())
            out = ref(input_ids=s.input_ids[None], position_ids=s.position_ids[:, None], labels=s.labels[None],
                      pixel_values=s.pixel_values_images, image_grid_thw=s.image_grid_thw)
            separate += out.loss * n
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-4)


def test_bad_images_are_errors_naming_the_file(processor, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    ask = lambda image: [{"role": "user", "content": [{"type": "image", "image": image}]},
                         {"role": "assistant", "content": "?"}]
    with pytest.raises(ImageError, match="missing.png: image file not found"):
        build_conversation_sample(ask("missing.png"), processor, video_root=tmp_path)
    with pytest.raises(ImageError, match="broken.png: cannot read image"):
        build_conversation_sample(ask("broken.png"), processor, video_root=tmp_path)
    with pytest.raises(ValueError, match="must be a non-empty string"):
        build_conversation_sample(ask(None), processor, video_root=tmp_path)
    with pytest.raises(RecordError, match="unsupported 'audio' element"):
        build_conversation_sample([{"role": "user", "content": [{"type": "audio"}]},
                                   {"role": "assistant", "content": "?"}], processor)
