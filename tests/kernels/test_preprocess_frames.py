import pytest
import torch
from PIL import Image

from livecc.data.video import decode_clip
from livecc.kernels import preprocess_frames, preprocess_frames_reference
from livecc.qwen_vl import VisionSpec, smart_resize

LEVEL = 1 / 255 / min(VisionSpec().std)  # one uint8 step, in normalised units


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t, h, w, size", [
    (2, 40, 60, (56, 84)),  # upscale, landscape
    (3, 90, 50, (112, 56)),  # odd frame count, portrait, downscale one axis
    (2, 100, 130, (56, 84)),  # downscale: 4+ taps per axis
    (2, 56, 84, (56, 84)),  # no resize
    (1, 33, 47, (28, 56)),  # one frame (repeated into its temporal pair), odd sides
    (3, 61, 131, (84, 28)),  # T not a multiple of 2, odd width, upscale one axis, downscale the other
    (2, 13, 9, (84, 56)),  # upscale several times: windows narrower than a tile
])
def test_triton_kernel_matches_reference(nan_empty, gen, dtype, t, h, w, size):
    frames = torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=gen)
    rows, grid = preprocess_frames(frames, size, dtype=dtype)
    ref, ref_grid = preprocess_frames_reference(frames, size, dtype=torch.float32)
    assert torch.equal(grid, ref_grid) and rows.shape == ref.shape and rows.dtype == dtype
    assert torch.isfinite(rows).all()
    diff = (rows.float() - ref).abs()
    # The 2D sum and PyTorch's two 1D passes round differently in fp32: a value at x.5 may land on
    # the next uint8 level, so allow one level on a small fraction of values (plus bf16 rounding).
    bf16 = 0.0 if dtype == torch.float32 else 0.01 * ref.abs().max().item()
    assert diff.max() <= LEVEL * 1.001 + bf16
    assert (diff > 1e-4 + bf16).float().mean() < 1e-3


def hf_rows(processor, frames):
    """Hugging Face's image processor on each frame (an image is a frame pair of itself)."""
    out = processor.image_processor(images=[Image.fromarray(f.numpy()) for f in frames], return_tensors="pt")
    return out["pixel_values"].float(), out["image_grid_thw"]


def levels_apart(processor, frames):
    """Our rows minus Hugging Face's, in uint8 levels, at the size Hugging Face resizes to."""
    h, w = frames.shape[1:3]
    size = smart_resize(h, w, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)  # the image processor's bounds
    hf, hf_grid = hf_rows(processor, frames)
    ours, grid = preprocess_frames_reference(frames.repeat_interleave(2, dim=0), size)
    assert hf_grid.tolist() == [[1, *grid[0].tolist()[1:]]] * len(frames)
    return (ours - hf).abs() / LEVEL


# PIL's bicubic and PyTorch's antialiased bicubic share the filter, not the arithmetic: PIL rounds
# and clips to 8 bits between its two passes. On camera frames that leaves values within 3 levels;
# on white noise, bicubic overshoot clipped mid-way moves ~1% of values by up to ~22 levels.


@pytest.mark.parametrize("name, span", [("bikes.mp4", (1.0, 2.0)), ("bigbuckbunny.mp4", (1.0, 2.0))])
def test_matches_hugging_face_processor_on_real_frames(processor, real_clip, name, span):
    frames = decode_clip(real_clip(name), *span, resize=False).frames[::2]
    diff = levels_apart(processor, frames)
    assert diff.max() <= 3.001 and diff.mean() < 0.25


@pytest.mark.parametrize("h, w", [(200, 300), (300, 200), (57, 391), (500, 123)])
def test_matches_hugging_face_processor_on_random_frames(processor, gen, h, w):
    frames = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8, generator=gen)
    diff = levels_apart(processor, frames)
    assert diff.mean() < 0.35 and (diff > 1.001).float().mean() < 0.02 and diff.max() <= 32


def test_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(torch.zeros(2, 28, 28, 3))
    with pytest.raises(ValueError, match="multiple of 28"):
        preprocess_frames(torch.zeros(2, 30, 28, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="no frames"):
        preprocess_frames(torch.zeros(0, 28, 28, 3, dtype=torch.uint8))
