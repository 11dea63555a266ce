import pytest
import torch
from kernel_checks import TOL, rel_err

from livecc.kernels import paged_decode_attention, paged_decode_attention_reference


def paged(gen, lengths, hq, hkv, d, page, dtype, spare=3):
    """Random pools with each stream's pages scattered in shuffled order among unused ones."""
    need = [-(-n // page) for n in lengths]
    n_pages = sum(need) + spare
    order = torch.randperm(n_pages, generator=gen)
    table = torch.full((len(lengths), max(need + [1])), -1, dtype=torch.int32)
    used = 0
    for b, m in enumerate(need):
        table[b, :m] = order[used : used + m]
        used += m
    k = torch.randn(n_pages, page, hkv, d, generator=gen).to(dtype)
    v = torch.randn(n_pages, page, hkv, d, generator=gen).to(dtype)
    q = torch.randn(len(lengths), hq, d, generator=gen).to(dtype)
    return q, k, v, table, torch.tensor(lengths, dtype=torch.int32)


def compare(gen, lengths, hq, hkv, d, page, dtype, num_splits=None):
    q, k, v, table, lens = paged(gen, lengths, hq, hkv, d, page, dtype)
    out, lse = paged_decode_attention(q, k, v, table, lens, max(lengths), num_splits=num_splits, return_lse=True)
    ref, ref_lse = paged_decode_attention_reference(q.double(), k.double(), v.double(), table, lens)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL[dtype]
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (lse[finite].double() - ref_lse[finite]).abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d, hq, hkv", [(128, 4, 2), (80, 3, 3), (64, 7, 1)])
def test_streams_of_odd_lengths_over_scattered_pages(nan_empty, gen, dtype, d, hq, hkv):
    # A 1-token cache, lengths off the page size, one exactly on it, one spanning many split ranges.
    compare(gen, [1, 17, 32, 101], hq, hkv, d, 16, dtype)


@pytest.mark.parametrize("num_splits", [1, 2, 7])
def test_any_split_count_gives_the_same_answer(nan_empty, gen, num_splits):
    compare(gen, [70, 5, 33], 4, 2, 64, 16, torch.float32, num_splits=num_splits)


def test_a_stream_with_an_empty_cache_gets_zeros(nan_empty, gen):
    q, k, v, table, lens = paged(gen, [0, 20], 2, 1, 64, 16, torch.float32)
    out, lse = paged_decode_attention(q, k, v, table, lens, 20, return_lse=True)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.isinf(lse[0]).all()
    ref, _ = paged_decode_attention_reference(q, k, v, table, lens)
    assert rel_err(out[1], ref[1]) < 1e-5


def test_bad_layouts_are_rejected(gen):
    q, k, v, table, lens = paged(gen, [20], 2, 1, 64, 16, torch.float32)
    with pytest.raises(ValueError, match="multiple of key heads"):
        paged_decode_attention(q[:, :1].expand(1, 3, 64), k.expand(-1, -1, 2, -1), v.expand(-1, -1, 2, -1),
                               table, lens, 20)
    with pytest.raises(ValueError, match="power of two"):
        paged_decode_attention(q, k[:, :12], v[:, :12], table, lens, 20)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d, hq, hkv", [(128, 4, 2), (80, 3, 3), (64, 7, 1)])
def test_paged_prefill_reads_the_pages_in_place(nan_empty, gen, dtype, d, hq, hkv):
    from livecc.kernels import cu_seqlens, varlen_attention_paged, varlen_attention_reference
    from livecc.kernels.varlen_attention.paged import gather_pages

    # New tokens per stream after caches of odd lengths: one token, a whole first window, a page edge
    new, cached = [1, 23, 16, 5], [0, 40, 16, 101]
    lengths = [n + c for n, c in zip(new, cached)]
    q = torch.randn(sum(new), hq, d, generator=gen).to(dtype)
    _, k, v, table, lens = paged(gen, lengths, hq, hkv, d, 16, dtype)
    out = varlen_attention_paged(q, k, v, table, cu_seqlens(new), lens, max(new))
    keys, values, cu_k = gather_pages(k.double(), v.double(), table, lens)
    ref, _ = varlen_attention_reference(q.double(), keys, values, cu_seqlens(new), cu_k, causal=True)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL[dtype]


def test_a_paged_prefill_never_takes_a_tensor_descriptor_tiling(gen, monkeypatch):
    """A paged call's keys are rows of pages: a TMA tiling (which loads contiguous rows) would read
    the wrong keys. Such calls tune among pointer tilings only, tuned apart from unpaged calls
    (paging is in the key), and a TMA tiling forced on one is refused, not run."""
    from livecc.kernels import cu_seqlens, varlen_attention_paged
    from livecc.kernels.varlen_attention import triton as kernels

    q = torch.randn(5, 4, 64, generator=gen)
    _, k, v, table, lens = paged(gen, [9], 4, 2, 64, 16, torch.float32)
    assert not kernels.tma_fits(q, k.flatten(0, 1), v.flatten(0, 1), page=16)
    plain, with_tma = kernels._FWD
    assert not any(c.kwargs.get("TMA") for c in plain.configs) and any(c.kwargs.get("TMA") for c in with_tma.configs)
    assert "PAGE" in plain.keys and "PAGE" in with_tma.keys
    monkeypatch.setitem(kernels.FORCED, "fwd", kernels.TileConfig("fwd", 16, 16, 4, 1, tma=True))
    with pytest.raises(ValueError, match="tensor descriptors"):
        varlen_attention_paged(q, k, v, table, cu_seqlens([5]), lens, 5)


def test_the_descriptor_allocator_is_set_in_every_thread_that_launches():
    """Triton keeps its scratch allocator per thread (a context variable): a TMA launch from the
    serve engine's or a loader's thread must find one there too."""
    import threading

    from triton.runtime import _allocation

    from livecc.kernels.varlen_attention import triton as kernels

    found = []

    def launcher():
        kernels._ensure_descriptor_allocator()
        found.append(_allocation._allocator.get())

    for _ in range(2):
        t = threading.Thread(target=launcher)
        t.start()
        t.join()
    assert found == [kernels._descriptor_scratch] * 2
