import pytest
import torch
from oracles import check_stream_logits

from livecc.infer import KVPool, StreamingSession, step_streams
from livecc.infer.graphs import BUCKETS, DecodeGraphs, PrefillGraphs
from livecc.infer.vision import VisionGraphs
from livecc.models import tiny_qwen_vl


def run_session(processor, gen, n_windows, arch="qwen2_vl", **kwargs):
    model = tiny_qwen_vl(seed=0, attn_implementation="eager", arch=arch)
    session = StreamingSession(model, processor, query="What happens?", trace=True, **kwargs)
    results = []
    for i in range(n_windows):
        frames = torch.randint(0, 256, (session.frames_needed, 90, 120, 3), dtype=torch.uint8, generator=gen)
        results.append(session.step(frames, force_text="the ball" if i % 3 == 1 else None))
    return model, session, results


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_window_logits_equal_one_full_forward(processor, gen, arch):
    """The session's 3D positions continue the cache exactly: same logits as one pass."""
    model, session, results = run_session(processor, gen, 5, arch=arch, max_new_tokens=4)
    assert [r.start for r in results] == [0.0, 3.0, 4.0, 5.0, 6.0] and results[1].text == "the ball"
    check_stream_logits(model, session.trace, at_least=11)
    text = processor.tokenizer.decode(torch.cat(session.trace.ids))
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert text.startswith(system + "<|im_start|>user\nTime=0.0-3.0s")
    assert "What happens?<|im_end|>\n<|im_start|>assistant\n" in text
    assert "<|im_start|>assistant\nthe ball ...<|im_end|>\n<|im_start|>user\nTime=4.0-5.0s" in text


def test_a_window_reports_the_time_of_each_phase(processor, gen):
    _, _, results = run_session(processor, gen, 2, max_new_tokens=2)
    for r in results:
        phases = ("preprocess", "vision", "prefill", "decode", "evict")
        assert set(r.timings) == {*phases, "total"} and all(r.timings[p] >= 0 for p in phases)
        assert r.timings["total"] == pytest.approx(sum(r.timings[p] for p in phases))


def test_after_eviction_logits_equal_a_masked_full_forward(processor, gen):
    model, session, results = run_session(processor, gen, 7, max_new_tokens=3, horizon=2.0,
                                          max_text_tokens=40, text_sink=10, page_size=16)
    assert sum(r.evicted_tokens for r in results) > 0 and session.trace.evictions
    check_stream_logits(model, session.trace, at_least=11)
    # Text kept: the 10 sink tokens and the 40 most recent, in the order they were fed.
    fed_text = (torch.cat(session.trace.ids) != session.engine.policy.ids.video_pad).nonzero().flatten()
    cache = session.cache
    kept = cache.origin[: cache.length][cache.kind[: cache.length] == 0]
    assert sorted(kept.tolist()) == fed_text[:10].tolist() + fed_text[-40:].tolist()


@pytest.mark.parametrize("static", [False, True], ids=["plain", "static"])
def test_the_kernel_path_equals_one_full_forward(processor, gen, triton_interpreter, static):
    """Prefill on the paged varlen kernel and decode on the paged decode kernel (interpreted), inside
    the model; also with the static decode step and the static prefill, whose kernels read padded
    page-table widths, empty documents and the padding's document."""
    model = tiny_qwen_vl(seed=0, attn_implementation="eager")
    session = StreamingSession(model, processor, max_new_tokens=3, trace=True, page_size=16,
                               min_pixels=56 * 56, max_pixels=56 * 56)
    if static:
        session.engine.runner.decode_graphs = DecodeGraphs(model, session.cache.pool)
        session.engine.runner.prefill_graphs = PrefillGraphs(model, session.cache.pool)
        session.engine.runner.vision_graphs = VisionGraphs(model)
    for _ in range(2):
        session.step(torch.randint(0, 256, (session.frames_needed, 56, 56, 3), dtype=torch.uint8, generator=gen))
    check_stream_logits(model, session.trace, at_least=4)  # two prefills and decode steps


def test_memory_is_flat_over_a_long_stream(processor, gen):
    model = tiny_qwen_vl(seed=0)
    session = StreamingSession(model, processor, horizon=3.0, max_new_tokens=2, max_text_tokens=64,
                               min_pixels=56 * 56, max_pixels=56 * 56)
    frames = torch.randint(0, 256, (6, 56, 56, 3), dtype=torch.uint8, generator=gen)
    sizes = []
    for _ in range(150):  # 150 s of stream, 50x the horizon
        session.step(frames[: session.frames_needed])
        sizes.append((session.cache.length, len(session.cache.page_table), session.cache.pool.nbytes()))
    assert max(s[0] for s in sizes[20:]) == max(s[0] for s in sizes[20:40])  # live tokens bounded early
    assert max(s[1] for s in sizes[20:]) == max(s[1] for s in sizes[20:40])  # so are the pages held
    assert sizes[-1][2] == sizes[30][2]  # the pool stopped growing
    assert session.cache.evicted > 0


def test_streams_stepped_together_say_what_they_say_alone(processor, gen):
    """Three streams (own queries, frame sizes, a forced answer, sampling) batched into shared
    ViT, prefill and decode steps give the tokens and logits each gives alone."""
    model = tiny_qwen_vl(seed=0, attn_implementation="eager")
    options = [dict(query="Who scores?"), dict(query="", temperature=0.8, seed=3), dict(query="Describe it.")]
    sizes = [(90, 120), (56, 56), (120, 90)]
    n_windows = 4
    frames = [[torch.randint(0, 256, (6 if w == 0 else 2, *size, 3), dtype=torch.uint8, generator=gen)
               for w in range(n_windows)] for size in sizes]
    forced = lambda i, w: "the ball" if (i, w) == (2, 1) else None

    def session(pool=None, **kw):
        return StreamingSession(model, processor, max_new_tokens=5, trace=True, pool=pool, page_size=16, **kw)

    alone = [session(**kw) for kw in options]
    alone_results = [[s.step(frames[i][w], forced(i, w)) for w in range(n_windows)] for i, s in enumerate(alone)]
    pool = KVPool.for_model(model, page_size=16, pages=4)
    together = [session(pool, **kw) for kw in options]
    together_results = [step_streams(together, [f[w] for f in frames], [forced(i, w) for i in range(3)])
                        for w in range(n_windows)]
    for i in range(3):
        got = [r[i] for r in together_results]
        assert [r.token_ids for r in got] == [r.token_ids for r in alone_results[i]]
        assert [(r.start, r.end, r.prefill_tokens) for r in got] == [(r.start, r.end, r.prefill_tokens)
                                                                     for r in alone_results[i]]
        for (idx_a, a), (idx_b, b) in zip(alone[i].trace.logits, together[i].trace.logits, strict=True):
            assert idx_a == idx_b
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert len({len(r.token_ids) for r in together_results[1]}) > 1  # streams left the decode batch early
    assert pool.pages > 4  # the shared pool grew to hold all three
    held = sum(len(s.cache.page_table) for s in together)
    assert pool.pages_in_use == held > 0
    for s in together:
        s.close()
    assert pool.pages_in_use == 0


def test_bad_frames_are_rejected(processor):
    session = StreamingSession(tiny_qwen_vl(seed=0), processor)
    with pytest.raises(ValueError, match="expected uint8 frames"):
        session.step(torch.zeros(0, 56, 56, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="stepped once per call"):
        step_streams([session, session], [torch.zeros(6, 56, 56, 3, dtype=torch.uint8)] * 2)


def test_static_decode_steps_and_prefills_say_what_the_plain_path_says(processor, gen):
    """The ViT, decode steps and prefills from static buffers (what CUDA graphs capture and replay;
    run eagerly here), across batch sizes, buckets, page-table growth and pool reallocation: same
    tokens, logits equal to one full forward."""
    model = tiny_qwen_vl(seed=0, attn_implementation="eager")
    options = [dict(query="Who scores?"), dict(query="", temperature=0.8, seed=3), dict(query="Describe it.")]
    frames = [[torch.randint(0, 256, (6 if w == 0 else 2, 56, 56, 3), dtype=torch.uint8, generator=gen)
               for w in range(4)] for _ in options]
    forced = lambda i, w: "the ball is in the net and the crowd" if (i, w) == (2, 1) else None

    def run(static: bool):
        pool = KVPool.for_model(model, page_size=16, pages=2)
        sessions = [StreamingSession(model, processor, max_new_tokens=12, trace=True, pool=pool, **kw)
                    for kw in options]
        if static:
            sessions[0].engine.runner.decode_graphs = DecodeGraphs(model, pool)
            sessions[0].engine.runner.prefill_graphs = PrefillGraphs(model, pool)
            sessions[0].engine.runner.vision_graphs = VisionGraphs(model)
        results = [step_streams(sessions, [f[w] for f in frames], [forced(i, w) for i in range(3)])
                   for w in range(4)]
        return sessions, results, pool

    plain, plain_results, _ = run(static=False)
    static, static_results, pool = run(static=True)
    assert [[r.token_ids for r in w] for w in static_results] == [[r.token_ids for r in w] for w in plain_results]
    runner = static[0].engine.runner
    graphs = runner.decode_graphs
    assert pool.growths > 0 and graphs.width > 4 and graphs.builds > 3
    assert runner.prefill_graphs.builds >= 2  # rebuilt after the pool grew
    assert len({len(r.token_ids) for r in static_results[1]}) > 1  # the decode batch shrank within a window
    for s in static:
        check_stream_logits(model, s.trace, at_least=11)


def test_a_question_asked_mid_stream_goes_into_the_next_window(processor, gen):
    """``ask`` puts the question into the next user turn; the positions continue the cache, so the
    logits still equal one full forward over everything fed."""
    model = tiny_qwen_vl(seed=0, attn_implementation="eager")
    session = StreamingSession(model, processor, query="Commentate.", max_new_tokens=3, trace=True)
    for w in range(4):
        if w == 2:
            session.ask("Who is winning?")
        session.step(torch.randint(0, 256, (session.frames_needed, 56, 56, 3), dtype=torch.uint8, generator=gen))
    text = processor.tokenizer.decode(torch.cat(session.trace.ids))
    assert "Time=4.0-5.0s<|vision_start|>" in text
    turn = text[text.index("Time=4.0-5.0s"):]
    assert turn.split("<|im_end|>")[0].endswith("<|vision_end|>Who is winning?")
    assert text.count("Who is winning?") == 1 and text.count("Commentate.") == 1
    check_stream_logits(model, session.trace, at_least=11)


def test_the_decode_loop_reads_the_host_once_per_step_for_all_streams(processor, gen, monkeypatch):
    """Token choice (penalty, argmax, sampling) stays on the device; the engine's decode reads the
    host once per step however many streams talk, never per stream, and the static step (what a
    GPU replays) copies its inputs to the device once per step, for all streams."""
    import inspect

    from livecc.infer import engine, graphs, policy, runner

    loop = {(engine.__file__, "_decode"), (engine.__file__, "_decode_step"), (policy.__file__, "choose"),
            (runner.__file__, "decode"), (graphs.__file__, "step")}
    in_loop = lambda frame: (frame.f_code.co_filename, frame.f_code.co_name) in loop
    reads, copies = [], []
    for name in ("tolist", "item", "cpu", "__int__", "__bool__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, __original=original, __name=name, **kwargs):
            if in_loop(inspect.currentframe().f_back):
                reads.append(__name)
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    copy, make = torch.Tensor.copy_, torch.tensor

    def counted_copy(self, src, non_blocking=False):
        if in_loop(inspect.currentframe().f_back) and non_blocking:
            copies.append("inputs")  # the staging buffer to the device
        return copy(self, src, non_blocking)

    def tensor(*args, **kwargs):
        if kwargs.get("device") is not None and in_loop(inspect.currentframe().f_back):
            copies.append("a tensor made on the device from host data")
        return make(*args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", counted_copy)
    monkeypatch.setattr(torch, "tensor", tensor)
    steps = []
    monkeypatch.setattr(engine.StreamEngine, "_decode_step",
                        lambda self, *a, __f=engine.StreamEngine._decode_step: steps.append(1) or __f(self, *a))
    model = tiny_qwen_vl(seed=0)
    for n in (1, 4):
        reads.clear(), steps.clear(), copies.clear()
        pool = KVPool.for_model(model, page_size=16)
        sessions = [StreamingSession(model, processor, pool=pool, max_new_tokens=6, temperature=0.7 * (i % 2),
                                     seed=i) for i in range(n)]
        sessions[0].engine.runner.decode_graphs = DecodeGraphs(model, pool)  # the static step, eager here
        frames = [torch.randint(0, 256, (6, 56, 56, 3), dtype=torch.uint8, generator=gen) for _ in range(n)]
        step_streams(sessions, frames)
        assert steps and reads == ["tolist"] * (len(steps) + 1), (n, reads)  # one per step: the chosen tokens
        assert copies == ["inputs"] * len(steps), (n, copies)  # and one back: the step's inputs


def test_warm_up_sizes_the_pool_and_builds_every_decode_step_before_the_first_window(processor, gen):
    model = tiny_qwen_vl(seed=0)
    pool = KVPool.for_model(model, page_size=16, pages=1)
    sessions = [StreamingSession(model, processor, pool=pool, max_new_tokens=4, min_pixels=56 * 56, max_pixels=56 * 56)
                for _ in range(3)]
    engine = sessions[0].engine
    engine.runner.decode_graphs = DecodeGraphs(model, pool)  # the static steps (captured on CUDA), eager here
    engine.runner.prefill_graphs = PrefillGraphs(model, pool)
    engine.warm_up(max_streams=3, max_tokens=400)
    graphs = engine.runner
    builds, growths = (graphs.decode_graphs.builds, graphs.prefill_graphs.builds), pool.growths
    assert pool.pages >= 3 * 25 and builds == (3, len(BUCKETS))
    for _ in range(3):
        step_streams(sessions, [torch.randint(0, 256, (s.frames_needed, 56, 56, 3), dtype=torch.uint8, generator=gen)
                                for s in sessions])
    # nothing built or grown mid-stream
    assert ((graphs.decode_graphs.builds, graphs.prefill_graphs.builds), pool.growths) == (builds, growths)


def test_compiled_vision_blocks_encode_what_the_plain_ones_do(processor, gen):
    model = tiny_qwen_vl(seed=0)
    plain = StreamingSession(model, processor, min_pixels=56 * 56, max_pixels=112 * 112)
    frames = [torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8, generator=gen) for h, w in ((56, 56), (84, 112))]
    engine = plain.engine
    want = [engine.encode([plain.state], [f])[0][0] for f in frames]
    engine.compile_vision()
    got = [engine.encode([plain.state], [f])[0][0] for f in frames]  # two frame sizes: one dynamic graph
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
