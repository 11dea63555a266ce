import pytest
import torch

from livecc.infer.vision import VisionGraphs
from livecc.models import tiny_qwen_vl
from livecc.models.vision import run_vision, vision_geometry


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"])
def test_the_static_vit_encodes_what_hugging_faces_forward_does(arch):
    """Windows of two frame sizes, interleaved ([a, b, a]) and then alone: each group of equal grids
    runs from its own static buffers with the grids' geometry precomputed on the host, and every
    window's embeddings and DeepStack features equal Hugging Face's own ViT forward over them all."""
    model = tiny_qwen_vl(arch=arch, vision_depth=3)
    visual = model.model.visual
    patch = visual.patch_embed.patch_size
    row = 3 * 2 * patch * patch
    graphs = VisionGraphs(model)
    for grids in ([(1, 4, 6), (2, 6, 4), (1, 4, 6)], [(2, 6, 4)], [(1, 4, 6), (1, 4, 6), (2, 6, 4)]):
        pixels = torch.randn(sum(t * h * w for t, h, w in grids), row)
        got = graphs.run(pixels, grids)
        out = visual(pixels, grid_thw=torch.tensor(grids))
        want, deep = (out if isinstance(out, tuple) else
                      (getattr(out, "pooler_output", out), getattr(out, "deepstack_features", None) or []))
        sizes = [t * h * w // 4 for t, h, w in grids]
        assert len(got[0][1]) == len(deep) == (2 if arch.startswith("qwen3") else 0)
        for (embeds, features), w, *d in zip(got, want.split(sizes), *(f.split(sizes) for f in deep)):
            torch.testing.assert_close(embeds, w, rtol=1e-5, atol=1e-5)
            for a, b in zip(features, d):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert set(graphs.groups) == {((1, 4, 6), 2), ((2, 6, 4), 1)} and graphs.builds == 2  # built once each


def test_the_geometry_is_hugging_faces_and_on_the_device_once():
    """The precomputed geometry gives the forward exactly what it computes itself, and the longest
    lengths as plain ints (no read of the device in any block)."""
    model = tiny_qwen_vl(arch="qwen2_5_vl", vision_depth=2)
    visual = model.model.visual
    geometry = vision_geometry(visual, [(2, 8, 12)], torch.device("cpu"))
    assert isinstance(geometry["max_seqlen"], int) and isinstance(geometry["max_window_seqlen"], int)
    assert geometry["max_seqlen"] == 96 and geometry["max_window_seqlen"] == 16  # a frame; a 2x2-token window
    pixels = torch.randn(2 * 8 * 12, 3 * 2 * 14 * 14)
    embeds, _ = run_vision(visual, pixels, geometry)
    torch.testing.assert_close(embeds, visual(pixels, grid_thw=torch.tensor([(2, 8, 12)])).pooler_output)
    assert "cu_seqlens" in geometry  # the forward pops what it takes from a copy, never the cached geometry
