"""The host's share of a streaming window, counted through the GPU code path: the static ViT,
prefill and decode steps that CUDA graphs capture (run eagerly here, counted as captured), and
what the engine launches and reads around them."""

import pytest
import torch

from livecc.bench.stream import census
from livecc.infer import vision as vision_module
from livecc.models import tiny_qwen_vl, use_livecc_attention
from livecc.qwen_vl import offline_processor


def census_of(gen, arch="qwen2_vl", depth=(2, 2), windows=4):
    """``bench stream``'s census (2 streams, the static steps) of a bf16 model on livecc's attention."""
    model = tiny_qwen_vl(seed=0, arch=arch, num_layers=depth[0], vision_depth=depth[1]).to(torch.bfloat16)
    use_livecc_attention(model)
    return census(model, offline_processor(arch), windows=windows, seed=int(torch.randint(1 << 30, (1,),
                                                                                          generator=gen)))


@pytest.mark.parametrize("arch,depth", [("qwen2_vl", (2, 2)), ("qwen3_vl", (2, 3)), ("qwen2_vl", (28, 32))],
                         ids=["qwen2_vl", "qwen3_vl", "7b-depth"])
def test_a_steady_window_launches_little_and_reads_the_device_once_per_decode_step(gen, arch, depth):
    """Steady-state windows (the first two build the graphs of the first window's frame count and
    the next's): no read of the device in the ViT or the prefill, the ViT at <= 10 launches outside
    its graph (however deep: the 7B's 28 decoder layers and 32 ViT blocks at small widths), one
    read per decode step for all streams and one at the window's end."""
    census, results = census_of(gen, arch, depth)
    steps = max(len(r.token_ids) for r in results)  # the first token's choice, then one per decode step
    for window in census.windows[2:]:
        vision, prefill, decode, end = (window[p] for p in ("vision", "prefill", "decode", "end"))
        assert vision["reads"] == 0 and vision["launches"] <= 10, dict(vision)
        assert vision["captured"] >= 20 * depth[1] // 2  # the ViT ran, from its graph's buffers
        assert prefill["reads"] == 0 and prefill["launches"] <= 25, dict(prefill)
        assert decode["reads"] <= steps, (dict(decode), steps)
        assert end["reads"] == 1
        assert window["preprocess"]["reads"] == 0 and window["evict"]["reads"] == 0


def test_the_census_counts_a_read_of_the_device_and_not_one_of_the_host(gen, monkeypatch):
    """Without the longest frame length given, the ViT's attention reads it from the device
    offsets (once per offsets tensor: in the windows that build a frame size's graph): the census
    sees it, at its line; host tensors read by the engine's bookkeeping are not device reads."""
    geometry = vision_module.vision_geometry
    monkeypatch.setattr(vision_module, "vision_geometry",
                        lambda *a: {k: v for k, v in geometry(*a).items() if k != "max_seqlen"})
    census, _ = census_of(gen, windows=3)
    assert [w["vision"]["reads"] for w in census.windows] == [1, 1, 0]  # two frame counts, two graphs
    assert any(phase == "vision" and what == "reads" and "attention.py" in where
               for phase, what, where in census.sites)
    assert all(w["prefill"]["reads"] == 0 for w in census.windows)  # its ids and rows are found on the host
