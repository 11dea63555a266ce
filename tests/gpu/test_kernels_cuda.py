"""Every kernel compiled on CUDA against its float64 reference, on fresh random edge shapes, with
outputs over NaN-filled memory, in bf16, fp16 and fp32, gradients included."""

import pytest
import torch

from livecc.kernels import (
    cu_seqlens,
    paged_decode_attention,
    paged_decode_attention_reference,
    preprocess_frames,
    preprocess_frames_reference,
    rotary_qk,
    rotary_qk_reference,
    text_only_linear_cross_entropy,
    text_only_linear_cross_entropy_reference,
    varlen_attention,
    varlen_attention_reference,
)
from livecc.kernels.varlen_attention.triton import CONFIGS

TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


@pytest.fixture
def cuda_gen():
    seed = int(torch.randint(0, 2**31, ()).item())
    print(f"seed={seed}")
    return torch.Generator(device="cuda").manual_seed(seed)


def attention_case(gen, q_lens, k_lens, hq, hkv, d, dtype):
    q = torch.randn(sum(q_lens), hq, d, device="cuda", generator=gen).to(dtype).requires_grad_()
    k = torch.randn(sum(k_lens), hkv, d, device="cuda", generator=gen).to(dtype).requires_grad_()
    v = torch.randn(sum(k_lens), hkv, d, device="cuda", generator=gen).to(dtype).requires_grad_()
    return q, k, v, cu_seqlens(q_lens, "cuda"), cu_seqlens(k_lens, "cuda")


def check_attention(gen, q_lens, k_lens, hq, hkv, d, causal, dtype, deterministic=None):
    q, k, v, cu_q, cu_k = attention_case(gen, q_lens, k_lens, hq, hkv, d, dtype)
    out, lse = varlen_attention(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), causal=causal, return_lse=True,
                                deterministic=deterministic)
    do = torch.randn(out.shape, device="cuda", generator=gen).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = varlen_attention_reference(*ref_in, cu_q, cu_k, causal=causal)
    ref_grads = torch.autograd.grad(ref, ref_in, do.double())
    assert torch.isfinite(out).all() and rel_err(out, ref) < TOL[dtype]
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert torch.isfinite(g).all() and rel_err(g, r) < TOL[dtype], (name, rel_err(g, r))


@DTYPES
@pytest.mark.parametrize("d, hq, hkv", [(128, 28, 4), (128, 7, 1), (80, 16, 16), (64, 12, 2)],
                         ids=["d128-28x4", "d128-7x1", "d80-16x16", "d64-12x2"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_varlen_attention_on_edge_shapes(nan_empty, cuda_gen, dtype, d, hq, hkv, causal):
    lengths = [1, 0, 17, 129, 300, 1000, 63]  # length 1, an empty document, off every tile size
    check_attention(cuda_gen, lengths, lengths, hq, hkv, d, causal, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_varlen_attention_queries_after_a_cache(nan_empty, cuda_gen, dtype):
    check_attention(cuda_gen, [5, 1, 200, 0], [370, 9, 200, 40], 28, 4, 128, True, dtype)


def test_paged_prefill_after_an_unpaged_call_of_the_same_shape(cuda_gen):
    """An unpaged forward of the 7B's heads tunes first (where TMA may win); the paged prefill of
    the same head dim, causality and group then reads keys through its page table, autotuned,
    and must not inherit a tiling that loads contiguous rows."""
    from livecc.kernels import varlen_attention_paged
    from livecc.kernels.varlen_attention.paged import gather_pages

    check_attention(cuda_gen, [300, 77, 1], [300, 77, 1], 28, 4, 128, True, torch.bfloat16)
    new, cached, page = [1, 23, 160, 5], [0, 40, 1000, 101], 64
    lengths = [n + c for n, c in zip(new, cached)]
    need = [-(-n // page) for n in lengths]
    order = torch.randperm(sum(need) + 3, device="cuda", generator=cuda_gen).to(torch.int32)
    table = torch.zeros((len(lengths), max(need)), dtype=torch.int32, device="cuda")
    used = 0
    for b, m in enumerate(need):
        table[b, :m] = order[used : used + m]
        used += m
    k = torch.randn(sum(need) + 3, page, 4, 128, device="cuda", generator=cuda_gen).to(torch.bfloat16)
    v = torch.randn(sum(need) + 3, page, 4, 128, device="cuda", generator=cuda_gen).to(torch.bfloat16)
    q = torch.randn(sum(new), 28, 128, device="cuda", generator=cuda_gen).to(torch.bfloat16)
    lens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    out = varlen_attention_paged(q, k, v, table, cu_seqlens(new, "cuda"), lens, max(new))
    keys, values, cu_k = gather_pages(k.double(), v.double(), table, lens)
    ref, _ = varlen_attention_reference(q.double(), keys, values, cu_seqlens(new, "cuda"), cu_k.cuda(), causal=True)
    assert torch.isfinite(out).all() and rel_err(out, ref) < TOL[torch.bfloat16]


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_every_attention_tile_configuration(cuda_gen, config, tma, monkeypatch):
    """Each configuration of the tuning space, forced (spilling or not), at d128 with GQA and at the
    ViT's d80 where it is tried at them, also through tensor descriptors where the GPU has TMA; the
    key-block backward in one pass and beside the dQ pass, which only the deterministic mode runs."""
    from dataclasses import replace

    from livecc.kernels.varlen_attention import triton as kernels

    cfg = CONFIGS[config]
    if tma and (cfg.kernel == "bwd_q" or not kernels.tma_supported()):
        pytest.skip("tensor descriptors: the forward and the key-block backward, on a GPU with TMA")
    monkeypatch.setattr(kernels, "FORCED", {cfg.kernel: replace(cfg, tma=tma)})
    modes = {"fwd": (None,), "bwd_kv": (False, True), "bwd_q": (True,)}[cfg.kernel]
    cases = [([300, 77, 1], 8, 2, 128, True), ([300, 77], 4, 4, 80, False)]
    for lengths, hq, hkv, d, causal in cases:
        if cfg in kernels.kept_for([c for c in CONFIGS if c.kernel == cfg.kernel], d):
            for deterministic in modes:
                check_attention(cuda_gen, lengths, lengths, hq, hkv, d, causal, torch.bfloat16, deterministic)


@pytest.mark.parametrize("d, hq, hkv, causal", [(128, 28, 4, True), (80, 16, 16, False)], ids=["d128", "d80"])
def test_the_deterministic_backward_repeats_bit_for_bit(cuda_gen, d, hq, hkv, causal):
    """The deterministic mode gives the same bits on every run; the one-pass backward (dQ by
    atomic adds, in no fixed order) agrees with it to bf16 rounding."""
    lengths = [1, 17, 129, 300, 1000, 63]
    q, k, v, cu_q, cu_k = attention_case(cuda_gen, lengths, lengths, hq, hkv, d, torch.bfloat16)
    do = torch.randn(q.shape, device="cuda", generator=cuda_gen).to(torch.bfloat16)

    def grads(deterministic):
        out = varlen_attention(q, k, v, cu_q, cu_k, 1000, 1000, causal=causal, backend="triton",
                               deterministic=deterministic)
        return torch.autograd.grad(out, (q, k, v), do)

    first = grads(True)
    assert all(torch.equal(a, b) for _ in range(3) for a, b in zip(first, grads(True)))
    for a, b in zip(first, grads(False)):
        assert rel_err(b, a) < TOL[torch.bfloat16]


@pytest.mark.parametrize("backend", ["triton", "sdpa_cudnn", "sdpa_flash", "torch_varlen", "flash_attn", "auto"])
@pytest.mark.parametrize("lengths", [[1536] * 6, [300, 1000, 17]], ids=["equal", "mixed"])
def test_every_attention_backend_against_the_reference(cuda_gen, backend, lengths):
    from livecc.kernels.varlen_attention import available_backends

    if backend not in (*available_backends(aligned=True), "auto"):
        pytest.skip(f"{backend} does not import here")
    q, k, v, cu, _ = attention_case(cuda_gen, lengths, lengths, 16, 16, 80, torch.bfloat16)
    try:
        out = varlen_attention(q, k, v, cu, cu, max(lengths), max(lengths), causal=True, backend=backend)
    except RuntimeError as e:  # a forced SDPA backend refusing a shape says so; auto never picks it
        pytest.skip(f"{backend} refuses this shape: {str(e)[:120]}")
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref, _ = varlen_attention_reference(*ref_in, cu, cu, causal=True)
    ref_grads = torch.autograd.grad(ref, ref_in, torch.ones_like(ref))
    assert rel_err(out, ref) < TOL[torch.bfloat16]
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_text_only_linear_cross_entropy(nan_empty, cuda_gen, dtype, reduction):
    n, h, v = 777, 256, 50001  # V off every block size
    hidden = torch.randn(n, h, device="cuda", generator=cuda_gen).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, device="cuda", generator=cuda_gen) / h**0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), device="cuda", generator=cuda_gen)
    labels[torch.rand(n, device="cuda", generator=cuda_gen) < 0.9] = -100
    for cap in (2**30, 37 * v * hidden.element_size()):  # one chunk; chunks of 37 rows
        out = text_only_linear_cross_entropy(hidden, weight, labels, reduction=reduction, label_smoothing=0.1,
                                             max_logit_bytes=cap)
        g_out = torch.randn_like(out) if reduction == "none" else torch.tensor(1.3, device="cuda")
        grads = torch.autograd.grad(out, (hidden, weight), g_out)
        ref_in = [t.detach().double().requires_grad_() for t in (hidden, weight)]
        ref = text_only_linear_cross_entropy_reference(*ref_in, labels, reduction=reduction, label_smoothing=0.1)
        ref_grads = torch.autograd.grad(ref, ref_in, g_out.double())
        assert rel_err(out, ref) < TOL[dtype]
        for g, r in zip(grads, ref_grads):
            assert torch.isfinite(g).all() and rel_err(g, r) < TOL[dtype]
    ignored = torch.full_like(labels, -100)
    assert text_only_linear_cross_entropy(hidden, weight, ignored).item() == 0.0


@DTYPES
@pytest.mark.parametrize("d, hq, hkv", [(128, 28, 4), (80, 16, 16), (64, 7, 1)],
                         ids=["d128-28x4", "d80-16x16", "d64-7x1"])
def test_paged_decode_attention(cuda_gen, dtype, d, hq, hkv):
    lengths, page = [1, 17, 64, 1001, 0], 64
    need = [-(-n // page) for n in lengths]
    n_pages = sum(need) + 5
    order = torch.randperm(n_pages, device="cuda", generator=cuda_gen)
    table = torch.zeros((len(lengths), max(need)), dtype=torch.int32, device="cuda")
    used = 0
    for b, m in enumerate(need):
        table[b, :m] = order[used : used + m]
        used += m
    k = torch.randn(n_pages, page, hkv, d, device="cuda", generator=cuda_gen).to(dtype)
    v = torch.randn(n_pages, page, hkv, d, device="cuda", generator=cuda_gen).to(dtype)
    q = torch.randn(len(lengths), hq, d, device="cuda", generator=cuda_gen).to(dtype)
    lens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    out = paged_decode_attention(q, k, v, table, lens, max(lengths))
    ref, _ = paged_decode_attention_reference(q.double(), k.double(), v.double(), table, lens)
    assert torch.isfinite(out).all() and rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("t, h, w, size", [(2, 1080, 1920, (420, 756)), (3, 90, 50, (112, 56)), (1, 41, 67, (56, 84)),
                                           (5, 13, 9, (84, 56)), (2, 2160, 3840, (448, 784))],
                         ids=["1080p", "90x50", "41x67", "13x9", "4k"])
def test_preprocess_frames(cuda_gen, t, h, w, size):
    frames = torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, device="cuda", generator=cuda_gen)
    rows, grid = preprocess_frames(frames, size, dtype=torch.bfloat16)
    ref, ref_grid = preprocess_frames_reference(frames.cpu(), size)
    level = 1 / 255 / 0.2613
    assert torch.equal(grid, ref_grid)
    diff = (rows.float().cpu() - ref).abs()
    assert diff.max() <= level * 1.001 + 0.02 * ref.abs().max() and (diff > 0.02).float().mean() < 1e-3


@DTYPES
@pytest.mark.parametrize("b, length, hq, hk, d", [(1, 4097, 28, 4, 128), (2, 37, 12, 2, 128), (1, 5, 7, 1, 80)],
                         ids=["4097-28x4-d128", "2x37-12x2-d128", "5-7x1-d80"])
def test_rotary_qk(nan_empty, cuda_gen, dtype, b, length, hq, hk, d):
    q = torch.randn(b, length, hq, d, device="cuda", generator=cuda_gen).to(dtype).transpose(1, 2).requires_grad_()
    k = torch.randn(b, length, hk, d, device="cuda", generator=cuda_gen).to(dtype).transpose(1, 2).requires_grad_()
    angles = torch.rand(b, length, d, device="cuda", generator=cuda_gen, dtype=torch.float64) * 100
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    qo, ko = rotary_qk(q, k, cos, sin)
    q64, k64 = (x.detach().double().requires_grad_() for x in (q, k))
    rq, rk = rotary_qk_reference(q64, k64, cos.double(), sin.double())
    assert rel_err(qo, rq) < TOL[dtype] and rel_err(ko, rk) < TOL[dtype]
    (qo.double().sum() + 2 * ko.double().sum()).backward()
    (rq.sum() + 2 * rk.sum()).backward()
    assert rel_err(q.grad, q64.grad) < TOL[dtype] and rel_err(k.grad, k64.grad) < TOL[dtype]


@DTYPES
def test_rerotate_keys(cuda_gen, dtype):
    """Keys of a pool re-rotated in place by their position shifts on CUDA equal the reference's;
    other slots are untouched."""
    from livecc.kernels import rerotate_keys, rerotate_keys_reference, shift_angles

    keys = torch.randn(4096, 4, 128, device="cuda", generator=cuda_gen).to(dtype)
    slots = torch.randperm(4096, device="cuda", generator=cuda_gen)[:1500]
    shifts = torch.randint(0, 50_000, (1500,), device="cuda", generator=cuda_gen)
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128))
    rows, cos, sin = shift_angles(shifts, inv_freq)
    ours, ref = keys.clone(), keys.clone()
    rerotate_keys(ours, slots, rows.cuda(), cos.cuda(), sin.cuda())
    rerotate_keys_reference(ref, slots, rows.cuda(), cos.cuda(), sin.cuda())
    assert rel_err(ours, ref) < TOL[dtype]
    untouched = torch.ones(4096, dtype=torch.bool, device="cuda")
    untouched[slots] = False
    assert torch.equal(ours[untouched], keys[untouched])


def test_inputs_on_two_devices_are_a_clear_error(cuda_gen):
    q, k, v, cu_q, cu_k = attention_case(cuda_gen, [9], [9], 2, 1, 64, torch.bfloat16)
    with pytest.raises(ValueError, match="cu_seqlens_q is on cpu"):
        varlen_attention(q, k, v, cu_q.cpu(), cu_k, 9, 9)
    with pytest.raises(ValueError, match="labels is on cpu"):
        text_only_linear_cross_entropy(q[:, 0], k[:, 0], torch.zeros(9, dtype=torch.long))
