"""The training step's FLOP accounting against torch's own count of what the step runs."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from livecc.data.packing import pack_samples
from livecc.data.sequence import StreamingSample
from livecc.models import patch, text_only_causal_lm_loss, tiny_qwen_vl
from livecc.qwen_vl import mrope_position_ids
from livecc.train.flops import FlopAccount
from livecc.train.parallelize import apply_activation_checkpointing

VIDEO_PAD = 151656
ARCHS = {"qwen2_vl": ({}, 1176), "qwen3_vl_moe": (dict(vision_dim=144, vision_heads=2, num_layers=3), 1536)}


def sample(g, seconds, grid, patch_values):
    """A clip of ``seconds`` one-frame-pair windows of ``grid`` patches, words between them."""
    t, h, w = grid
    ids = []
    for _ in range(seconds):
        ids += torch.randint(0, 1000, (5,), generator=g).tolist() + [VIDEO_PAD] * (t * h * w // 4)
        ids += torch.randint(0, 1000, (7,), generator=g).tolist()
    ids, grids = torch.tensor(ids), torch.tensor([grid] * seconds)
    labels = torch.where(ids == VIDEO_PAD, -100, ids)
    labels[torch.rand(ids.numel(), generator=g) < 0.3] = -100
    pos, _ = mrope_position_ids(ids, {VIDEO_PAD: grids})
    pixels = torch.randn(int(grids.prod(-1).sum()), patch_values, generator=g)
    return StreamingSample(ids, labels, pos, pixels, grids, [], "")


@pytest.mark.parametrize("checkpointing", [None, "selective", "full"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_accounting_is_what_the_step_computes(arch, checkpointing):
    """Every matrix product of a packed forward + backward (a frozen ViT, livecc's attention on
    torch's math SDPA, which computes the causal square whole) counted by ``FlopCounterMode`` equals
    the accounting: the LLM, the head on the labelled rows, the ViT's forward only (never
    back-propagated, never run again under checkpointing), experts at their routed share and what
    checkpointing recomputes."""
    kwargs, patch_values = ARCHS[arch]
    g = torch.Generator().manual_seed(torch.seed())
    model = tiny_qwen_vl(seed=0, arch=arch, **kwargs).train()
    model.model.visual.requires_grad_(False)
    if checkpointing:
        apply_activation_checkpointing(model, checkpointing)
    patch(model, loss=False, fused_ops=False)
    samples = [sample(g, 3, (1, 4, 8), patch_values), sample(g, 2, (1, 4, 4), patch_values)]
    pack = pack_samples(samples)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        text_only_causal_lm_loss(model, labels=pack.labels, **pack.model_inputs()).backward()
    counted = sum(counter.get_flop_counts()["Global"].values())
    flops = FlopAccount(model, checkpointing, flash_backward=False)(
        [s.input_ids.numel() for s in samples], int((pack.labels != -100).sum()), pack.video_grid_thw.tolist())
    assert flops.vision > 0 and flops.head > 0
    # the math backend computes the causal square whole: once more the attention's forward and backward,
    # and under full checkpointing once more its forward again
    whole_square = flops.attention * (4 / 3 if checkpointing == "full" else 1)
    assert counted == flops.hardware + whole_square
    assert (flops.recomputed > 0) == (checkpointing == "full")


def test_the_7b_shapes_weights_are_counted_from_its_config():
    """At the 7B shape (built on the meta device) the LLM's matrix weights are its layers' projections
    as the config gives them (no embedding, no head, no norms or biases); the head is H x V."""
    from livecc.bench.measure import random_qwen2vl

    model = random_qwen2vl("qwen2vl-7b", "sdpa", device="meta")
    t = model.config.text_config
    h, d = t.hidden_size, t.hidden_size // t.num_attention_heads
    per_layer = 2 * h * h + 2 * h * t.num_key_value_heads * d + 3 * h * t.intermediate_size  # q, o; k, v; MLP
    account = FlopAccount(model, "full")
    assert account.llm_weights == t.num_hidden_layers * per_layer
    assert account.unneeded == t.num_hidden_layers * t.hidden_size * t.intermediate_size
    assert account.head_weights == t.hidden_size * t.vocab_size
    flops = account([1000, 3000], 200)
    causal_forward = 2 * (1000**2 + 3000**2) * t.num_attention_heads * d  # 4 s^2 heads d, half the square
    assert flops.vision == 0 and flops.attention == 3 * t.num_hidden_layers * causal_forward
