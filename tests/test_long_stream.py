"""Streams that run forever: bounded caches and positions by default, positions compacted after
evictions with the survivors' keys re-rotated, and one window plan for training and streaming."""

import time

import pytest
import torch

from livecc.data.windows import StreamFormat, WindowPlan
from livecc.infer import SessionConfig, StreamingSession
from livecc.models import tiny_qwen_vl
from livecc.qwen_vl import offline_processor

TOL = {torch.float32: dict(atol=2e-4, rtol=1e-4), torch.bfloat16: dict(atol=8e-2, rtol=5e-2)}


def replay(model, trace, pad: int) -> dict[int, torch.Tensor]:
    """An independent, dense float64 replay of what a stream fed: every block of tokens through the
    decoder over a plain cache of *unrotated* keys, each key rotated at attention time for the
    position it holds then, tokens evicted and positions moved exactly when the trace says. The
    logits of every fed token, by fed index. Qwen3-VL: each head's q and k RMS-normed before the
    rotation, and the DeepStack features added to the visual rows after the first layers."""
    model = model.double()
    lm = model.model.language_model
    ids_all = torch.cat(trace.ids)
    pads = (ids_all == pad).nonzero().flatten()
    with torch.no_grad():
        out = model.model.visual(torch.cat(trace.pixel_values).double(), grid_thw=torch.cat(trace.grids))
        visual = getattr(out, "pooler_output", out)
        embeds = lm.embed_tokens(ids_all).clone()
        embeds[pads] = visual
        deepstack = list(getattr(out, "deepstack_features", None) or [])
        deep = embeds.new_zeros((len(deepstack), *embeds.shape))
        if deepstack:
            deep[:, pads] = torch.stack(deepstack)
    cache = {"fed": torch.zeros(0, dtype=torch.long), "pos": torch.zeros(3, 0, dtype=torch.long),
             "k": [None] * len(lm.layers), "v": [None] * len(lm.layers)}
    evictions, moves, logits, fed = list(trace.evictions), list(trace.moves), {}, 0

    def rotate(t, cos, sin):
        half = t.shape[-1] // 2
        return t * cos[:, None] + torch.cat((-t[..., half:], t[..., :half]), -1) * sin[:, None]

    for block, positions in zip(trace.ids, trace.positions):
        while evictions and evictions[0][0] <= fed:
            keep = ~torch.isin(cache["fed"], evictions.pop(0)[1])
            cache["fed"], cache["pos"] = cache["fed"][keep], cache["pos"][:, keep]
            cache["k"], cache["v"] = [k[keep] for k in cache["k"]], [v[keep] for v in cache["v"]]
        while moves and moves[0][0] <= fed:
            _, origins, by = moves.pop(0)
            shift = dict(zip(origins.tolist(), by.tolist()))
            cache["pos"] = cache["pos"] - torch.tensor([shift[f] for f in cache["fed"].tolist()])
        n, past = block.numel(), cache["fed"].numel()
        h = embeds[fed : fed + n]
        every = torch.cat([cache["pos"], positions], dim=1)
        with torch.no_grad():
            cos, sin = (t[0] for t in lm.rotary_emb(h[None], every[:, None]))
            for i, layer in enumerate(lm.layers):
                attn = layer.self_attn
                x = layer.input_layernorm(h)
                q, k, v = (proj(x).view(n, -1, attn.head_dim) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
                if hasattr(attn, "q_norm"):
                    q, k = attn.q_norm(q), attn.k_norm(k)
                cache["k"][i] = k if cache["k"][i] is None else torch.cat([cache["k"][i], k])
                cache["v"][i] = v if cache["v"][i] is None else torch.cat([cache["v"][i], v])
                group = q.shape[1] // k.shape[1]
                keys = rotate(cache["k"][i], cos, sin).repeat_interleave(group, 1)
                scores = torch.einsum("qhd,khd->hqk", rotate(q, cos[past:], sin[past:]), keys) * attn.scaling
                scores[:, :, past:] += torch.full((n, n), float("-inf"), dtype=scores.dtype).triu(1)
                out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), cache["v"][i].repeat_interleave(group, 1))
                h = h + attn.o_proj(out.reshape(n, -1))
                h = h + layer.mlp(layer.post_attention_layernorm(h))
                if i < len(deep):
                    h = h + deep[i, fed : fed + n]
            for j, row in enumerate(model.lm_head(lm.norm(h))):
                logits[fed + j] = row
        cache["fed"], cache["pos"] = torch.cat([cache["fed"], torch.arange(fed, fed + n)]), every
        fed += n
    return logits


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen3_vl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_after_evictions_and_compaction_the_logits_equal_a_dense_replay(gen, dtype, arch):
    """Evicting at every window and compacting at once (``compact_after=0``): every logit equals a
    float64 replay over a dense cache of unrotated keys where each query sees the tokens the
    stream kept at the positions they held then (so the paged moves, the re-rotated keys and the
    positions new tokens continue from are checked together), within the dtype's tolerance."""
    model = tiny_qwen_vl(seed=0, attn_implementation="eager", arch=arch).to(dtype)
    session = StreamingSession(model, offline_processor(arch), query="Go.", trace=True, max_new_tokens=4,
                               horizon=2.0, text_sink=6, max_text_tokens=24, compact_after=0, page_size=16,
                               min_pixels=56 * 56, max_pixels=84 * 84)
    for w in range(9):
        frames = torch.randint(0, 256, (session.frames_needed, 70, 84, 3), dtype=torch.uint8, generator=gen)
        session.step(frames, force_text="a b c" if w % 2 else None)
    trace = session.trace
    assert trace.moves and session.cache.evicted > 0
    assert session.state.next_pos < 80  # kept near the cache's size, not the stream's length
    expected = replay(tiny_qwen_vl(seed=0, arch=arch), trace, session.engine.policy.ids.video_pad)
    for index, logits in trace.logits:
        torch.testing.assert_close(logits.double(), expected[index], **TOL[dtype])


def test_with_nothing_evicted_compaction_changes_nothing(processor, gen):
    model = tiny_qwen_vl(seed=0)
    runs = []
    for compact_after in (0, None):
        session = StreamingSession(model, processor, trace=True, max_new_tokens=5, compact_after=compact_after,
                                   min_pixels=56 * 56, max_pixels=56 * 56)
        g = torch.Generator().manual_seed(1)
        runs.append([session.step(torch.randint(0, 256, (session.frames_needed, 56, 56, 3), dtype=torch.uint8,
                                                generator=g)) for _ in range(4)])
        assert session.cache.evicted == 0
        runs[-1] = (runs[-1], [x for _, x in session.trace.logits])
    (a, la), (b, lb) = runs
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert all(torch.equal(x, y) for x, y in zip(la, lb))  # bit for bit


@pytest.mark.slow
def test_a_stream_with_the_defaults_plateaus(processor, gen):
    """Three hundred one-second windows with the default bounds and the tiny model talking in every
    one (the worst case for text): the cache and the largest position stop growing (from window
    150 on, six compactions of the positions later, neither grows past what it was before)."""
    session = StreamingSession(tiny_qwen_vl(seed=0), processor, min_pixels=56 * 56, max_pixels=56 * 56)
    frames = torch.randint(0, 256, (6, 56, 56, 3), dtype=torch.uint8, generator=gen)
    sizes, positions = [], []
    for _ in range(300):
        result = session.step(frames[: session.frames_needed])
        sizes.append(result.cache_tokens)
        positions.append(result.next_position)
    config = session.config
    assert max(sizes[150:]) == max(sizes[100:150]) <= config.text_sink + config.max_text_tokens + 16 * 20
    assert max(positions[150:]) <= max(positions[:150]) <= max(sizes) + config.compact_after + 64
    assert sum(b < a for a, b in zip(positions[150:], positions[151:])) >= 6  # compactions after window 150
    assert positions[-1] < 3000 and session.cache.evicted > 10_000


def test_one_window_plan_for_training_streaming_and_serving(processor, tmp_path, gen):
    """A plan of 4 then 3 frames recorded in the model (as training records it) is what its samples,
    a streaming session, ``livecc stream`` on the checkpoint and a served stream cut windows by."""
    import dataclasses
    import json

    from livecc.cli import main
    from livecc.data.sequence import build_streaming_sample
    from livecc.data.synth import synthesize_clip
    from livecc.data.words import Word
    from livecc.serve import Hub

    plan = WindowPlan(initial_frames=4, frames_per_window=3)
    model = tiny_qwen_vl(seed=0)
    StreamFormat(plan, 56 * 56, 56 * 56).record_in(model)
    record = synthesize_clip(tmp_path, "clip", seed=1, duration=6.0, size=(56, 56))
    record = dataclasses.replace(record, words=[Word(0.2, 0.6, "one"), Word(4.5, 4.9, "two")])
    sample = build_streaming_sample(record, processor, video_root=tmp_path, plan=SessionConfig.for_model(model).plan)
    assert [(w.start, w.end) for w in sample.windows][:3] == [(0.0, 2.0), (2.0, 3.5), (3.5, 5.0)]
    session = StreamingSession(model, processor)
    assert session.plan == plan and session.config.max_pixels == 56 * 56
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "said.jsonl"
    assert main(["stream", str(tmp_path / "clip.mp4"), "--model", str(tmp_path / "ckpt"), "--fast",
                 "--max-new-tokens", "1", "--jsonl", str(out)]) == 0
    said = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["start"], r["end"]) for r in said] == [(0.0, 2.0), (2.0, 3.5), (3.5, 5.0), (5.0, 6.0)][:len(said)]
    hub = Hub(model, processor, max_streams=1, upload_dir=tmp_path / "u")
    try:
        stream = hub.open(hub.reserve(), "frames")
        for _ in range(7):
            hub.add_frame(stream, torch.zeros(56, 56, 3, dtype=torch.uint8))
        deadline = time.monotonic() + 60
        while len(stream.viewers.said) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert [(e["start"], e["end"]) for e in stream.viewers.said] == [(0.0, 2.0), (2.0, 3.5)]
    finally:
        hub.shutdown()
