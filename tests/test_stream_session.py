import pytest
import torch

from livecc.infer import StreamingSession
from livecc.testing import tiny_qwen2vl

pytestmark = pytest.mark.usefixtures("torch_attention")


def full_forward_logits(model, trace):
    """One forward pass over everything the session fed; evicted tokens hidden from later queries."""
    ids = torch.cat(trace.ids)
    positions = torch.cat(trace.positions, dim=1)
    n = ids.numel()
    visible = torch.ones(n, n, dtype=torch.bool).tril()
    for fed_by_then, origins in trace.evictions:
        visible[fed_by_then:, origins] = False
    mask = torch.zeros(1, 1, n, n).masked_fill(~visible, float("-inf"))
    with torch.no_grad():
        out = model(input_ids=ids[None], position_ids=positions[:, None], attention_mask=mask,
                    pixel_values_videos=torch.cat(trace.pixel_values), video_grid_thw=torch.cat(trace.grids))
    return out.logits[0]


def run_session(processor, gen, n_windows, arch="qwen2_vl", **kwargs):
    model = tiny_qwen2vl(seed=0, attn_implementation="eager", arch=arch)
    session = StreamingSession(model, processor, query="What happens?", trace=True, **kwargs)
    results = []
    for i in range(n_windows):
        frames = torch.randint(0, 256, (session.frames_needed, 90, 120, 3), dtype=torch.uint8, generator=gen)
        results.append(session.step(frames, force_text="the ball" if i % 3 == 1 else None))
    return model, session, results


def check_logits(model, session):
    full = full_forward_logits(model, session.trace)
    assert len(session.trace.logits) > 10
    for index, logits in session.trace.logits:
        torch.testing.assert_close(logits, full[index].float(), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_window_logits_equal_one_full_forward(processor, gen, arch):
    """The session's 3D positions continue the cache exactly: same logits as one pass."""
    model, session, results = run_session(processor, gen, 5, arch=arch, max_new_tokens=4)
    assert [r.start for r in results] == [0.0, 3.0, 4.0, 5.0, 6.0] and results[1].text == "the ball"
    check_logits(model, session)
    text = processor.tokenizer.decode(torch.cat(session.trace.ids))
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert text.startswith(system + "<|im_start|>user\nTime=0.0-3.0s")
    assert "What happens?<|im_end|>\n<|im_start|>assistant\n" in text
    assert "<|im_start|>assistant\nthe ball ...<|im_end|>\n<|im_start|>user\nTime=4.0-5.0s" in text


def test_after_eviction_logits_equal_a_masked_full_forward(processor, gen):
    model, session, results = run_session(processor, gen, 7, max_new_tokens=3, horizon=2.0,
                                          max_text_tokens=40, text_sink=10)
    assert sum(r.evicted_tokens for r in results) > 0 and session.trace.evictions
    check_logits(model, session)


def test_memory_is_flat_over_a_long_stream(processor, gen):
    model = tiny_qwen2vl(seed=0)
    session = StreamingSession(model, processor, horizon=3.0, max_new_tokens=2, max_text_tokens=64,
                               min_pixels=56 * 56, max_pixels=56 * 56)
    frames = torch.randint(0, 256, (6, 56, 56, 3), dtype=torch.uint8, generator=gen)
    sizes = []
    for _ in range(150):  # 150 s of stream, 50x the horizon
        session.step(frames[: session.frames_needed])
        sizes.append((session.cache.length, session.cache.nbytes()))
    assert max(s[0] for s in sizes[20:]) == max(s[0] for s in sizes[20:40])  # live tokens bounded early
    assert sizes[-1][1] == sizes[30][1]  # the buffers stopped growing
    assert session.cache.evicted > 0


def test_bad_frames_are_rejected(processor):
    session = StreamingSession(tiny_qwen2vl(seed=0), processor)
    with pytest.raises(ValueError, match="expected uint8 frames"):
        session.step(torch.zeros(0, 56, 56, 3, dtype=torch.uint8))
