import pytest
import torch

from livecc.models import tiny_qwen_vl, use_livecc_attention
from livecc.qwen_vl import mrope_position_ids

pytestmark = pytest.mark.usefixtures("triton_interpreter")  # the kernels inside the model

VIDEO_PAD, VISION_START, VISION_END = 151656, 151652, 151653


def models(arch="qwen2_vl"):
    ref = tiny_qwen_vl(seed=0, attn_implementation="sdpa", arch=arch)
    ours = tiny_qwen_vl(seed=0, arch=arch)
    use_livecc_attention(ours)
    return ref, ours


def video_doc(gen, n_text=5, groups=2):
    """A document: text, `groups` one-group videos of 4x6 patches (6 LLM tokens each), text."""
    pieces = [torch.randint(0, 5000, (n_text,), generator=gen)]
    for _ in range(groups):
        pieces.append(torch.tensor([VISION_START] + [VIDEO_PAD] * 6 + [VISION_END]))
    pieces.append(torch.randint(0, 5000, (n_text,), generator=gen))
    ids = torch.cat(pieces)
    grid = torch.tensor([[1, 4, 6]] * groups)
    pixels = torch.randn(groups * 24, 1176, generator=gen)
    pos, _ = mrope_position_ids(ids, {VIDEO_PAD: grid})
    return ids, grid, pixels, pos


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])  # 2.5: windowed and global ViT attention
def test_logits_and_gradients_match_sdpa(gen, arch):
    ref, ours = models(arch)
    ids, grid, pixels, pos = video_doc(gen)
    weights = torch.randn(1, ids.numel(), ref.config.text_config.vocab_size, generator=gen)
    grads = []
    for model in (ref, ours):
        logits = model(input_ids=ids[None], position_ids=pos[:, None], pixel_values_videos=pixels,
                       video_grid_thw=grid).logits
        (logits * weights).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad()
    torch.testing.assert_close(*[m(input_ids=ids[None], position_ids=pos[:, None], pixel_values_videos=pixels,
                                   video_grid_thw=grid).logits for m in (ref, ours)], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and any("visual" in n for n in grads[0])
    for name in grads[0]:  # fp32 sums in another order: compare norms (gradients reach ~1e3 here)
        a, b = grads[1][name], grads[0][name]
        assert ((a - b).norm() / b.norm()).item() < 1e-5, name


def test_packed_documents_match_separate_sdpa_runs(gen):
    ref, ours = models()
    docs = [video_doc(gen, n_text=4), video_doc(gen, n_text=9, groups=1)]
    ids = torch.cat([d[0] for d in docs])[None]
    pos = torch.cat([d[3] for d in docs], dim=1)[:, None]
    grid = torch.cat([d[1] for d in docs])
    pixels = torch.cat([d[2] for d in docs])
    lengths = [d[0].numel() for d in docs]
    cu = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32)
    with torch.no_grad():
        packed = ours(input_ids=ids, position_ids=pos, pixel_values_videos=pixels, video_grid_thw=grid,
                      cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths)).logits
        # Packing detected from text positions restarting at 0 (4-row position ids), without cu_seqlens.
        text_pos = torch.cat([torch.arange(n) for n in lengths])[None, None]
        detected = ours(input_ids=ids, position_ids=torch.cat([text_pos, pos]), pixel_values_videos=pixels,
                        video_grid_thw=grid).logits
        separate = [ref(input_ids=d[0][None], position_ids=d[3][:, None], pixel_values_videos=d[2],
                        video_grid_thw=d[1]).logits for d in docs]
    torch.testing.assert_close(packed, torch.cat(separate, dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(detected, packed, atol=1e-6, rtol=1e-6)


def test_cached_decoding_matches_a_full_forward(gen):
    """Queries after a KV cache (bottom-right causal) give the logits of one full pass."""
    _, ours = models()
    ids = torch.randint(0, 5000, (1, 23), generator=gen)
    with torch.no_grad():
        full = ours(input_ids=ids).logits
        out = ours(input_ids=ids[:, :15], use_cache=True)
        step = ours(input_ids=ids[:, 15:], past_key_values=out.past_key_values, use_cache=True).logits
    torch.testing.assert_close(step, full[:, 15:], atol=1e-5, rtol=1e-5)


def test_a_vit_forward_reads_its_longest_frame_group_once(monkeypatch):
    """Every ViT block gets the same offsets: one host read of the longest document per forward."""
    from livecc.models import attention, tiny_qwen_vl, use_livecc_attention

    model = tiny_qwen_vl(seed=0, vision_depth=3)
    use_livecc_attention(model)
    reads, read = [], attention._lengths_max
    monkeypatch.setattr(attention, "_lengths_max", lambda cu: reads.append(1) or read(cu))
    grid = torch.tensor([[1, 4, 8], [1, 6, 6]])
    with torch.no_grad():
        model.model.visual(torch.randn(int(grid.prod(-1).sum()), 1176), grid_thw=grid)
    assert len(reads) == 1
