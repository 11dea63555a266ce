import functools
import importlib
import types

import pytest
import torch
from kernel_checks import TOL, rel_err
from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

from livecc.kernels import cu_seqlens as cu
from livecc.kernels import varlen_attention, varlen_attention_reference
from livecc.kernels.varlen_attention import varlen_attention_sdpa


def compare(gen, q_lens, k_lens, hq, hkv, d, causal, dtype):
    q = torch.randn(sum(q_lens), hq, d, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(sum(k_lens), hkv, d, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(sum(k_lens), hkv, d, generator=gen).to(dtype).requires_grad_()
    cu_q, cu_k = cu(q_lens), cu(k_lens)
    out, lse = varlen_attention(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), causal=causal, return_lse=True)
    grad_out = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = varlen_attention_reference(*ref_in, cu_q, cu_k, causal=causal)
    ref_grads = torch.autograd.grad(ref_out, ref_in, grad_out.double())
    tol = TOL[dtype]
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref_out) < tol
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)  # -inf exactly where a query sees no key
    assert (lse[finite].double() - ref_lse[finite]).abs().max() < 1e-4
    for name, g, r in zip("qkv", grads, ref_grads):
        assert torch.isfinite(g).all(), name
        assert rel_err(g, r) < tol, (name, rel_err(g, r))
    return (q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), causal), grad_out, grads


def launches(monkeypatch) -> list:
    """The kernels the attention launchers run from now on, as (tiling kind, ATOMIC_DQ)."""
    from livecc.kernels.varlen_attention import triton as kernels

    seen, launch = [], kernels._launch

    def record(kernel, jitted, tuners, grid, args, meta, tma=False):
        seen.append((kernel, meta.get("ATOMIC_DQ")))
        return launch(kernel, jitted, tuners, grid, args, meta, tma)

    monkeypatch.setattr(kernels, "_launch", record)
    return seen


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("d, hq, hkv", [(128, 4, 2), (80, 3, 3), (64, 7, 1)])
def test_packs_with_odd_lengths(nan_empty, gen, dtype, causal, d, hq, hkv):
    lengths = [1, 17, 40, 3]  # a length-1 document and lengths that are not a multiple of the block
    compare(gen, lengths, lengths, hq, hkv, d, causal, dtype)


def test_the_backward_is_one_pass_with_dq_added_atomically(nan_empty, gen, monkeypatch):
    """By default one kernel computes dK, dV and dQ (after the delta kernel): no dQ pass; asked
    for a deterministic backward, the call takes the separate dQ pass."""
    seen = launches(monkeypatch)
    args, grad_out, grads = compare(gen, [1, 17, 40, 3], [1, 17, 40, 3], 7, 1, 64, True, torch.bfloat16)
    assert seen == [("fwd", None), ("bwd_kv", True)]
    seen.clear()
    out = varlen_attention(*args[:7], causal=True, deterministic=True)
    again = torch.autograd.grad(out, args[:3], grad_out)
    assert seen == [("fwd", None), ("bwd_kv", False), ("bwd_q", None)]
    assert all(rel_err(a, b) < TOL[torch.bfloat16] for a, b in zip(grads, again))


@pytest.mark.parametrize("d, hq, hkv, causal, dtype", [
    (128, 4, 2, True, torch.bfloat16), (80, 3, 3, False, torch.float32), (64, 7, 1, True, torch.float32),
    (64, 7, 1, False, torch.bfloat16)])
def test_deterministic_backward_has_no_atomics_and_repeats_bit_for_bit(nan_empty, gen, monkeypatch, deterministic,
                                                                       d, hq, hkv, causal, dtype):
    """Under ``torch.use_deterministic_algorithms(True)`` dQ comes from its own kernel, one program
    per query block (no atomic adds): the reference's gradients, and the same bits run to run."""
    seen = launches(monkeypatch)
    args, grad_out, grads = compare(gen, [1, 17, 40, 3], [1, 17, 40, 3], hq, hkv, d, causal, dtype)
    assert seen == [("fwd", None), ("bwd_kv", False), ("bwd_q", None)]
    out = varlen_attention(*args[:7], causal=causal)
    again = torch.autograd.grad(out, args[:3], grad_out)
    assert all(torch.equal(a, b) for a, b in zip(grads, again))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_queries_after_a_kv_cache_are_bottom_right_causal(nan_empty, gen, dtype):
    compare(gen, [5, 1, 20], [37, 9, 20], 4, 2, 64, True, dtype)


def test_empty_documents_and_queries_that_see_no_key(nan_empty, gen):
    # A document with no queries, one with no keys (its queries see nothing), one ordinary.
    compare(gen, [0, 6, 9], [5, 0, 9], 2, 1, 64, False, torch.float32)
    compare(gen, [0, 6, 9], [5, 2, 9], 2, 1, 64, True, torch.float32)  # causal: 4 queries see nothing


@pytest.mark.parametrize("d", [48, 72, 96])  # split into two parts, the second masked (72) or not (48, 96)
def test_head_dims_split_in_two_parts(nan_empty, gen, d):
    from livecc.kernels.varlen_attention.triton import head_split

    assert head_split(d)[2]
    compare(gen, [9, 23], [9, 23], 2, 1, d, True, torch.float32)


def test_long_document_spans_many_blocks(nan_empty, gen):
    compare(gen, [70, 33], [70, 33], 2, 1, 80, True, torch.float32)


def test_output_is_fully_written_over_nan_memory(nan_empty, gen):
    q = torch.randn(23, 2, 64, generator=gen)
    out, lse = varlen_attention(q, q[:, :1], q[:, :1], cu([11, 12]), cu([11, 12]), 12, 12, return_lse=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


def test_custom_op_passes_opcheck(gen):
    q = torch.randn(19, 4, 64, generator=gen, requires_grad=True)
    k = torch.randn(19, 2, 64, generator=gen, requires_grad=True)
    v = torch.randn(19, 2, 64, generator=gen, requires_grad=True)
    args = (q, k, v, cu([7, 12]), cu([7, 12]), 12, 12, True, 0.125, False)
    torch.library.opcheck(torch.ops.livecc.varlen_attention_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_compiles_without_graph_breaks(gen):
    q = torch.randn(19, 4, 64, generator=gen, requires_grad=True)
    k = torch.randn(19, 2, 64, generator=gen, requires_grad=True)
    fn = torch.compile(lambda q, k: varlen_attention(q, k, k, cu([7, 12]), cu([7, 12]), 12, 12).sum(),
                       backend="eager", fullgraph=True)
    loss = fn(q, k)
    loss.backward()
    expected = varlen_attention_reference(q.detach(), k.detach(), k.detach(), cu([7, 12]), cu([7, 12]))[0].sum()
    assert torch.allclose(loss, expected, atol=1e-4) and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q_lens, k_lens, causal", [
    ([5, 1, 20, 0, 6], [37, 9, 20, 4, 3], True),  # a window after a cache, queries before every key, empty
    ([12, 12, 12], [12, 12, 12], True),  # one batched call (a uniform pack)
    ([9, 9, 9, 9], [9, 9, 9, 9], False),  # one batched call (a ViT's frame groups)
])
def test_the_cpu_path_matches_the_reference(gen, dtype, q_lens, k_lens, causal):
    """SDPA (what runs on CPU outside the tests; one call per document, or one batched call for
    documents of one length): the same outputs and gradients as the reference, queries after a
    cache, queries before every key (0, finite gradients), empty documents."""
    q = torch.randn(sum(q_lens), 4, 64, generator=gen).to(dtype).requires_grad_()
    k, v = (torch.randn(sum(k_lens), 2, 64, generator=gen).to(dtype).requires_grad_() for _ in range(2))
    out = varlen_attention_sdpa(q, k, v, cu(q_lens), cu(k_lens), causal=causal, scale=0.125)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref, _ = varlen_attention_reference(*ref_in, cu(q_lens), cu(k_lens), causal=causal, softmax_scale=0.125)
    ref_grads = torch.autograd.grad(ref, ref_in, torch.ones_like(ref))
    assert rel_err(out, ref) < TOL[dtype]
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all() and rel_err(g, r) < TOL[dtype]


@pytest.mark.parametrize("bm, bn", [(16, 32), (32, 16), (16, 64), (64, 16)])
def test_tiles_of_unequal_sides_split_the_diagonal_right(nan_empty, gen, monkeypatch, bm, bn):
    """Query and key blocks of different sizes (as the GPU tilings use): the unmasked and masked
    tiles of every loop still cover each visible pair once."""
    from livecc.kernels.varlen_attention import triton as kernels

    forced = {k: kernels.TileConfig(k, bm, bn, 4, 1) for k in ("fwd", "bwd_kv", "bwd_q")}
    monkeypatch.setattr(kernels, "FORCED", forced)
    compare(gen, [37, 5, 65], [37, 20, 65], 4, 2, 64, True, torch.float32)  # none a multiple of a block
    compare(gen, [37, 33], [37, 33], 3, 3, 80, False, torch.bfloat16)


def test_rejects_bad_head_counts():
    q = torch.randn(4, 3, 64)
    k = torch.randn(4, 2, 64)
    with pytest.raises(ValueError, match="multiple"):
        varlen_attention(q, k, k, cu([4]), cu([4]), 4, 4)


def test_the_dispatcher_keeps_the_fastest_correct_backend_and_remembers_it(tmp_path, gen):
    """Probed once per shape class: the fastest candidate whose output agrees with the reference is
    chosen (a fast wrong one never is), written to disk per device, and read back without probing."""
    import time

    from livecc.kernels.varlen_attention.backends import Dispatcher, shape_class

    q, k = torch.randn(300, 8, 64, generator=gen), torch.randn(300, 2, 64, generator=gen)
    right = q.clone()
    calls = []

    def backend(name, seconds, out):
        def run():
            calls.append(name)
            time.sleep(seconds)
            return out
        return run

    candidates = {"triton": backend("triton", 0.02, right), "slow": backend("slow", 0.05, right),
                  "fast": backend("fast", 0.0, right), "wrong": backend("wrong", 0.0, right + 1)}
    key = shape_class(q, k, 300, True)
    assert key == "causal-d64-float32-h8x2-pack512-doc512"
    def wall_ms(fn):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    first = Dispatcher("Some GPU", tmp_path)
    assert first.choose(key, candidates, timer=wall_ms) == "fast"
    saved = first.choices[key]
    assert "wrong" in saved["errors"] and set(saved["ms"]) == {"triton", "slow", "fast"}
    calls.clear()
    again = Dispatcher("Some GPU", tmp_path)
    assert again.choose(key, candidates) == "fast" and not calls  # read from disk, nothing probed
    assert Dispatcher("Other GPU", tmp_path).choices == {}  # per device


def test_a_forward_alone_takes_the_kernel_without_probing(monkeypatch, gen):
    """``backend="auto"`` probes (forward and backward) only where a backward follows: without
    grad (streaming, a ViT graph's warm-up before its capture) or on inputs that need none (a
    frozen ViT in training) the call takes livecc's kernel, which reads nothing back; a CUDA call
    is stood in for by tensors that say they are on CUDA."""
    attention = importlib.import_module("livecc.kernels.varlen_attention")  # the module, not its function
    probed = []
    monkeypatch.setattr(attention, "available_backends", lambda aligned: ("triton", "sdpa_cudnn"))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(attention, "_dispatcher", lambda index: types.SimpleNamespace(
        choose=lambda key, candidates: probed.append(key) or "sdpa_cudnn"))

    class OnCuda(torch.Tensor):
        is_cuda = property(lambda self: True)

    def args(requires_grad):
        q, k = (torch.randn(40, h, 16, generator=gen).as_subclass(OnCuda).requires_grad_(requires_grad)
                for h in (4, 2))
        cu = torch.tensor([0, 15, 40], dtype=torch.int32)
        return (q, k, k, cu, cu, 25, 25, True, 0.25)

    with torch.no_grad():
        assert attention._auto(args(True), aligned=True) == "triton"
    assert attention._auto(args(False), aligned=True) == "triton" and not probed
    assert attention._auto(args(True), aligned=True) == "sdpa_cudnn" and len(probed) == 1  # a backward follows


@pytest.mark.parametrize("policy", ["full", "selective"])
def test_the_dispatcher_probes_inside_an_activation_checkpointed_forward(tmp_path, gen, policy):
    """The first call of a shape class probes with a forward and backward of its own; in training
    that call sits inside a checkpointed block (and again in its recomputation): the probe must
    neither disturb the checkpoint nor fail in it, under either policy the trainer offers."""
    from livecc.kernels.varlen_attention.backends import Dispatcher
    from livecc.train.parallelize import _saved_ops

    x = torch.randn(64, 4, 16, generator=gen, requires_grad=True)
    dispatcher = Dispatcher("Some GPU", tmp_path)

    def candidate():
        a = x.detach().requires_grad_()
        out = torch.mm(a.flatten(1), a.flatten(1).T).sin()
        out.backward(torch.ones_like(out))
        return out.detach()

    def block(x):
        dispatcher.choose("key", {"triton": candidate, "other": candidate}, timer=lambda fn: (fn(), 1.0)[1])
        return torch.mm(x.flatten(1), x.flatten(1).T).sin()

    options = {}
    if policy == "selective":
        options["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _saved_ops())
    checkpoint(block, x, use_reentrant=False, **options).sum().backward()
    plain = x.detach().requires_grad_()
    expected = torch.autograd.grad(block(plain).sum(), plain)[0]
    assert dispatcher.choices["key"]["backend"] in ("triton", "other") and not dispatcher.choices["key"]["errors"]
    torch.testing.assert_close(x.grad, expected)


def test_document_block_table(gen):
    from livecc.kernels import cu_seqlens
    from livecc.kernels.varlen_attention.triton import BLOCK_SIZES, block_table, programs

    # empty documents, one token, exactly a block, one past it, one long, many short
    lengths = [0, 1, 16, 17, 300, 0] + torch.randint(1, 40, (70,), generator=gen).tolist()
    total = sum(lengths)
    table, size = block_table(cu_seqlens(lengths), total)
    assert size == programs(total, len(lengths), 16)
    for row, block in enumerate(BLOCK_SIZES):
        pairs = [(i, j) for i, n in enumerate(lengths) for j in range(-(-n // block))]
        assert len(pairs) <= programs(total, len(lengths), block)
        docs, blocks = table[row].tolist()
        assert list(zip(docs, blocks))[: len(pairs)] == pairs
        assert set(docs[len(pairs):]) <= {-1} and set(blocks[len(pairs):]) <= {-1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 80])
def test_forward_and_backward_through_tensor_descriptors(nan_empty, gen, monkeypatch, dtype, d):
    """The forward and the one-pass backward with their Q, K, V (and dO) tiles loaded by tensor
    descriptors (TMA on Hopper), which zero-fill past a document's end: odd lengths, queries after
    a cache, a document without keys."""
    from livecc.kernels.varlen_attention import triton as kernels

    monkeypatch.setitem(kernels.FORCED, "fwd", kernels.TileConfig("fwd", 16, 16, 4, 1, tma=True))
    monkeypatch.setitem(kernels.FORCED, "bwd_kv", kernels.TileConfig("bwd_kv", 16, 16, 4, 1, tma=True))
    compare(gen, [1, 17, 40, 3], [1, 17, 40, 3], 3, 1, d, True, dtype)
    compare(gen, [5, 6, 20], [37, 0, 20], 2, 2, d, False, dtype)


def test_torch_varlen_is_called_as_each_release_spells_it(gen):
    """torch 2.10 takes ``is_causal``, later releases ``window_size``; ``enable_gqa`` exists only in
    some: without it the key heads are repeated, never passed a keyword it rejects."""
    from livecc.kernels.varlen_attention.backends import torch_varlen_call

    seen = {}

    def v210(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, return_aux=None, scale=None):
        seen.update(heads=key.shape[1], causal=is_causal, scale=scale)
        return query

    def v211(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
             window_size=(-1, -1)):
        seen.update(heads=key.shape[1], window=window_size, scale=scale)
        return query

    def v213(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
             window_size=(-1, -1), enable_gqa=False):
        seen.update(heads=key.shape[1], window=window_size, gqa=enable_gqa)
        return query

    q, k = torch.randn(5, 8, 16, generator=gen), torch.randn(5, 2, 16, generator=gen)
    c = cu([5])
    torch_varlen_call(v210)(q, k, k, c, c, 5, 5, True, 0.25)
    assert seen == {"heads": 8, "causal": True, "scale": 0.25}
    seen.clear()
    torch_varlen_call(v211)(q, k, k, c, c, 5, 5, False, 0.25)
    assert seen == {"heads": 8, "window": (-1, -1), "scale": 0.25}
    seen.clear()
    torch_varlen_call(v213)(q, k, k, c, c, 5, 5, True, 0.25)
    assert seen == {"heads": 2, "window": (-1, 0), "gqa": True}
