"""Triton varlen flash attention (forward and backward) for packed frame-word sequences.

One program per (document, block of queries | keys) pair and head; documents come from
``cu_seqlens`` so a pack never attends across a boundary and no padding is computed. The pairs are
read from a table built on the device by one small kernel (``_block_table_kernel``, no host sync),
so a pack of one long and many short documents launches programs for the blocks it has (plus at
most one idle program per document, the slack of a size known without reading the offsets), rather
than the longest document's block count for every document. Causal masks are aligned bottom-right,
so a new streaming window attends to its KV cache. Every key loop runs in two parts: the tiles
every query of the block fully sees, with no mask at all, and the few on the diagonal or a
document's edge, masked. The backward has its own ``delta = rowsum(dO * O)`` kernel, then one pass:
a program per key block and KV head walks every query head of its GQA group (key-major products,
dK/dV in registers) and adds dQ into an fp32 buffer by atomic adds; the deterministic mode adds no
dQ there and runs one dQ program per query block after. Scores are in log2 units so each
probability is one ``exp2``. A head dim that is not a power of two runs as two power-of-two parts
(the ViT's 80 as 64 + 16: two dot products per product, no idle lanes) where that is narrower than
padding it to the next power of two. In the interpreter fp32 inputs take IEEE fp32 dot products; a
GPU serves fp32 with PyTorch's SDPA (``backends.kernel_serves``).

Tiles: on GPU ``triton.autotune`` picks among ``CONFIGS``, keyed by head dim, causality, GQA group
and paging (a new pack length neither re-tunes nor recompiles: the lengths and table sizes are
not specialised on), after dropping any whose compiled kernel asks for more shared memory than
the device has (the compiler's own count, not an estimate) and, where another does not, any that
spills registers. On a GPU with TMA a forward whose Q, K and V (a backward: and dO) are 16-byte
aligned and not paged has a tuner of its own that also tries each tiling with the tiles loaded
through tensor descriptors; every other call (a paged prefill, say) is tuned among pointer tilings
only, so a TMA tiling is never reused where it would read the wrong rows.
The interpreter runs small fixed tiles; ``FORCED`` (tests) pins them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import triton
import triton.language as tl

from .. import tilings
from ..cubin import spills
from ..dispatch import interpreting
from ..triton_utils import LOG2E, dot, softmax_result, softmax_weights

__all__ = ["BLOCK_SIZES", "CONFIGS", "SMEM_LIMIT", "TileConfig", "block_table", "head_split", "programs", "tma_fits",
           "shipped_tiling", "tuning_key", "tuning_space", "varlen_attention_bwd", "varlen_attention_fwd"]

log = logging.getLogger(__name__)

SMEM_LIMIT = 232448  # bytes of shared memory a block may have on Hopper (227 KB), where no device is asked


@dataclass(frozen=True)
class TileConfig:
    """One tiling of one kernel: ``fwd``, ``bwd_kv`` (a program per key block of ``BN`` keys,
    walking query blocks of ``BM``) or ``bwd_q`` (a program per query block of ``BM``)."""

    kernel: str
    BM: int
    BN: int
    num_warps: int
    num_stages: int
    tma: bool = False  # fwd, bwd_kv: Q, K, V (dO) tiles through tensor descriptors (TMA on Hopper)
    head_dims: tuple[int, ...] = ()  # the head dims it is tried at (it spills at others); (): every one

    @property
    def tiles(self) -> dict:
        """The kernel's tile arguments."""
        return {"BM": self.BM, "BN": self.BN, **({"TMA": self.tma} if self.kernel in ("fwd", "bwd_kv") else {})}


# Hopper tilings that compile for sm_90 within shared memory at head dims 64, 80 (64 + 16) and
# 128, GQA groups 1-7, in bf16 and fp16, with Triton 3.6 and 3.9 (``python -m livecc.kernels.aot``
# reads the compiled cubins; the test suite runs it). The backward's key-block program holds dK
# and dV of BN keys in registers beside its score tiles, next to the 255 registers a thread may
# have, where a few registers decide whether ptxas spills and move between Triton releases: its
# tuners try these and drop the tilings whose compiled kernel spills (``_prune``); a backward
# tiling names the head dims it is tried at where it spills at others in every release.
_BWD_KV = [(16, 64, 2, ()), (16, 64, 3, ()), (32, 64, 2, ()), (32, 64, 3, ()), (64, 64, 2, ()), (64, 64, 3, (64, 80)),
           (16, 128, 2, (64, 128)), (16, 128, 3, (64, 128)), (32, 128, 2, (64, 128)), (32, 128, 3, (64, 128)),
           (64, 128, 2, (64, 80)), (64, 128, 3, (64, 80))]
CONFIGS = [
    TileConfig("fwd", 128, 64, 8, 3), TileConfig("fwd", 128, 128, 8, 2),
    TileConfig("fwd", 64, 64, 4, 4), TileConfig("fwd", 128, 32, 8, 4),
    *(TileConfig("bwd_kv", bm, bn, 8, stages, head_dims=dims) for bm, bn, stages, dims in _BWD_KV),
    TileConfig("bwd_q", 128, 64, 8, 3), TileConfig("bwd_q", 64, 64, 4, 3),
    TileConfig("bwd_q", 128, 32, 8, 4),
]
FORCED: dict[str, TileConfig] = {}  # kernel -> the tiling to use instead of tuning (tests)
_INTERPRETER_TILES = {"BM": 16, "BN": 16}  # the interpreter's tiles (pointer loads; tests force TMA)


def tma_supported() -> bool:
    """Tensor descriptors in this Triton and a GPU with TMA (Hopper or newer)."""
    return (hasattr(tl, "make_tensor_descriptor") and torch.cuda.is_available()
            and torch.cuda.get_device_capability()[0] >= 9)


def tma_fits(*tensors: torch.Tensor, page: int = 0) -> bool:
    """Whether a kernel may load its tiles of ``tensors`` through tensor descriptors: contiguous
    rows (not pages) and 16-byte aligned tile bases, every start row and head offset."""
    if page:
        return False
    for t in tensors:
        size = t.element_size()
        if t.data_ptr() % 16 or (t.stride(0) * size) % 16 or (t.stride(1) * size) % 16:
            return False
    return True


@lru_cache(maxsize=8)
def _smem_limit(device: torch.device) -> int:
    if device.type == "cuda":
        return triton.runtime.driver.active.utils.get_device_properties(device.index or 0)["max_shared_mem"]
    return SMEM_LIMIT  # compiling for a Hopper GPU from a machine without one (livecc.kernels.aot)


def _prune(fn, tilings: dict):
    """Keep the tilings kept for the call's head dim (``tilings``: each tuner config's
    ``TileConfig`` by id) whose kernel, compiled for these arguments (the compile the tuner makes
    next anyway), fits the device's shared memory and, where any does not, keeps every register in
    the register file: next to 255 registers a thread, whether ptxas spills moves with a few
    registers between Triton releases."""

    def prune(configs, named_args, **kwargs):
        if named_args["Q"].dtype == torch.float32:
            raise ValueError("the attention kernel has no fp32 tilings for a GPU (varlen_attention serves fp32 "
                             "with PyTorch's SDPA there)")
        limit = _smem_limit(named_args["Q"].device)
        kept = kept_for([tilings[id(c)] for c in configs], kwargs["D"])
        # the tuner passes its launch's own grid and warmup flag along with the kernel's arguments
        meta = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
        compiled = {id(c): fn.warmup(grid=(1,), **named_args, **meta, **c.all_kwargs())
                    for c in configs if tilings[id(c)] in kept}
        fit = [c for c in configs if id(c) in compiled and compiled[id(c)].metadata.shared <= limit]
        if not fit:
            raise ValueError(f"{fn.__name__}: no tiling fits {limit} bytes of shared memory at head dim {kwargs['D']}")
        return [c for c in fit if not spills(compiled[id(c)])] or fit

    return prune


def kept_for(configs: list[TileConfig], head_dim: int) -> list[TileConfig]:
    """The tilings of ``configs`` tried at ``head_dim``: those that name it and those that name none."""
    return [c for c in configs if not c.head_dims or head_dim in c.head_dims]


def tuning_space(kernel: str, tma: bool = False, head_dim: int | None = None) -> list[TileConfig]:
    """The tilings one tuner of ``kernel`` tries (at ``head_dim``: those kept for it): each of
    ``CONFIGS``, and with ``tma`` (the tuner of aligned, unpaged calls) each through descriptors
    as well."""
    ours = [c for c in CONFIGS if c.kernel == kernel]
    if head_dim is not None:
        ours = kept_for(ours, head_dim)
    return [TileConfig(c.kernel, c.BM, c.BN, c.num_warps, c.num_stages, t, c.head_dims)
            for c in ours for t in ((False, True) if tma else (False,))]


_TUNING_KEYS = {"fwd": ["D", "CAUSAL", "GROUP", "PAGE"], "bwd_kv": ["D", "CAUSAL", "GROUP", "ATOMIC_DQ"],
                "bwd_q": ["D", "CAUSAL", "GROUP"]}


def tuning_key(kernel: str, meta: dict, dtype: torch.dtype) -> tuple:
    """The key under which the tuner of ``kernel`` keeps its choice for a launch of ``meta``
    (its key constexprs, head dim first, then ``dtype``): what the shipped tables are indexed by."""
    return (*(meta[k] for k in _TUNING_KEYS[kernel]), str(dtype).removeprefix("torch."))


def _tuned(kernel: str, fn, tma: bool = False):
    """``fn`` autotuned over ``tuning_space(kernel, tma)``; dQ, which the one-pass backward adds
    into, is zeroed before each timed run."""
    space = tuning_space(kernel, tma)
    configs = [triton.Config(c.tiles, num_warps=c.num_warps, num_stages=c.num_stages) for c in space]
    prune = _prune(fn, {id(config): tile for config, tile in zip(configs, space)})
    return triton.autotune(configs, key=_TUNING_KEYS[kernel], prune_configs_by={"early_config_prune": prune},
                           reset_to_zero=["DQ"] if kernel == "bwd_kv" else None)(fn)


def _launch(kernel: str, jitted, tuners: tuple, grid, args, meta: dict, tma: bool = False) -> None:
    """Run ``jitted`` with the forced tiling, the interpreter's, the one shipped for this GPU and
    key, or its tuner's on GPU (recording the choice): ``tuners`` is (pointer tilings, with
    descriptors too); the second only where ``tma`` (the call fits TMA)."""
    if interpreting() and kernel not in FORCED:
        jitted[grid(_INTERPRETER_TILES)](*args, **meta, **_INTERPRETER_TILES)
        return
    use_tma = tma and tma_supported()
    cfg = FORCED.get(kernel)
    if cfg is not None and cfg.tma and not tma:
        raise ValueError(f"forced tiling {cfg} loads through tensor descriptors, which this call cannot take "
                         "(paged or unaligned K/V)")
    if cfg is None:
        key = tuning_key(kernel, meta, args[0].dtype)
        cfg = shipped_tiling(_gpu_name(args[0].device), kernel, use_tma, key)
    if (cfg.tma if cfg is not None else use_tma):
        _ensure_descriptor_allocator()
    if cfg is not None:
        jitted[grid(cfg.tiles)](*args, **meta, **cfg.tiles, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return
    tuner = tuners[1] if use_tma else tuners[0]
    tuner[grid](*args, **meta)
    best = tuner.best_config
    tilings.note(kernel, use_tma, key, (kernel, best.kwargs["BM"], best.kwargs["BN"], best.num_warps,
                                        best.num_stages, bool(best.kwargs.get("TMA", False))))


@lru_cache(maxsize=8)
def _gpu_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


@lru_cache(maxsize=256)
def shipped_tiling(gpu: str | None, kernel: str, tma: bool, key: tuple) -> TileConfig | None:
    """The tiling shipped for this GPU and key (:mod:`livecc.kernels.tilings`), if it is one the
    tuner of ``kernel`` would try at the key's head dim (``key[0]``)."""
    found = tilings.shipped(gpu, kernel, tma, key) if gpu else None
    if found is None:
        return None
    cfg = TileConfig(*found)
    if cfg not in {replace(c, head_dims=()) for c in tuning_space(kernel, tma, head_dim=key[0])}:
        log.warning("the tiling %s shipped for %s is not one livecc tries at %s; tuning instead", found, gpu, key)
        return None
    return cfg


def _descriptor_scratch(size: int, alignment: int, stream) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_descriptor_allocator() -> None:
    """Tensor descriptors made on the device need scratch memory from an allocator. Triton keeps it
    in a context variable, so each thread that launches (a loader's, a server's engine thread)
    needs its own: set it wherever none is."""
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_descriptor_scratch)


# ---------------------------------------------------------------- (document, block) tables

BLOCK_SIZES = (16, 32, 64, 128)  # every BM / BN of CONFIGS and of the interpreter


@triton.jit(do_not_specialize=["n_seq", "size"])
def _block_table_kernel(CU, TAB, n_seq, size, CHUNK: tl.constexpr):
    """Row ``r`` (block size ``16 << r``) of ``TAB [4, 2, size]``: the document and the block in it
    of program ``p`` at ``[r, 0, p]`` and ``[r, 1, p]``, documents in order; -1 past the last."""
    r = tl.program_id(0)
    block = 16 << r
    docs, blocks = TAB + r * 2 * size, TAB + r * 2 * size + size
    o = tl.arange(0, CHUNK)
    p = 0
    for i in range(n_seq):
        n = tl.cdiv(tl.load(CU + i + 1) - tl.load(CU + i), block)
        for j0 in range(0, n, CHUNK):
            m = j0 + o < n
            tl.store(docs + p + j0 + o, tl.full([CHUNK], 0, tl.int32) + i, mask=m)
            tl.store(blocks + p + j0 + o, j0 + o, mask=m)
        p += n
    for q0 in range(p, size, CHUNK):
        m = q0 + o < size
        tl.store(docs + q0 + o, tl.full([CHUNK], -1, tl.int32), mask=m)
        tl.store(blocks + q0 + o, tl.full([CHUNK], -1, tl.int32), mask=m)


def block_table(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, int]:
    """``(table [4, 2, size] int32, size)`` of the documents of ``cu_seqlens`` (``total`` tokens)
    for each block size of ``BLOCK_SIZES``; program ``p`` of a grid of ``programs(total, n, B)``
    reads its (document, block) from row ``BLOCK_SIZES.index(B)``."""
    n_seq = cu_seqlens.numel() - 1
    size = programs(total, n_seq, BLOCK_SIZES[0])
    table = torch.empty((len(BLOCK_SIZES), 2, size), dtype=torch.int32, device=cu_seqlens.device)
    _block_table_kernel[(len(BLOCK_SIZES),)](cu_seqlens, table, n_seq, size, CHUNK=64)
    return table, size


def programs(total: int, n_seq: int, block: int) -> int:
    """Programs enough for every (document, block) pair whatever the lengths: sum(ceil(l / B))
    <= ceil(total / B) + n_seq."""
    return triton.cdiv(total, block) + n_seq


@triton.jit
def _pair(TAB, size, B: tl.constexpr):
    """This program's (document, block) for block size ``B`` (document -1: an idle program)."""
    row = TAB + ((B >= 32) + (B >= 64) + (B >= 128)) * 2 * size + tl.program_id(0)
    return tl.load(row), tl.load(row + size)


# ---------------------------------------------------------------- tile helpers


@triton.jit
def _span(CU, i_b):
    """Start (int64) and length (int32) of sequence ``i_b`` from cumulative offsets."""
    start = tl.load(CU + i_b).to(tl.int64)
    return start, (tl.load(CU + i_b + 1) - start).to(tl.int32)


@triton.jit
def _rows(P, start, o_t, stride_t, i_h, stride_h, o_d, m_t, m_d):
    """Block ``[len(o_t), BD]`` of head ``i_h`` at rows ``start + o_t``, zero outside the masks."""
    return tl.load(P + (start + o_t)[:, None] * stride_t + i_h * stride_h + o_d[None, :],
                   mask=m_t[:, None] & m_d[None, :], other=0.0)


@triton.jit
def _block_ptrs(P, row0, stride_t, i_h, stride_h, o_d, BT: tl.constexpr):
    """Pointers ``[BT, len(o_d)]`` to rows ``row0 + i`` of head ``i_h``: the block's base a scalar,
    its offsets 32-bit (a tensor of 64-bit offsets would hold two registers per element)."""
    base = P + row0 * stride_t + i_h * stride_h
    return base + (tl.arange(0, BT)[:, None] * stride_t + o_d[None, :])


@triton.jit
def _cols(P, start, o_t, stride_t, i_h, stride_h, o_d, m_t, m_d):
    """The transposed block ``[BD, len(o_t)]``."""
    return tl.load(P + (start + o_t)[None, :] * stride_t + i_h * stride_h + o_d[:, None],
                   mask=m_t[None, :] & m_d[:, None], other=0.0)


@triton.jit
def _key_rows(TABLE, i_b, stride_tab, k_start, o_n, m_n, PAGE: tl.constexpr):
    """Rows of keys ``o_n`` of sequence ``i_b``: contiguous from ``k_start``, or (``PAGE > 0``)
    through the sequence's page table into a pool of ``PAGE``-row pages."""
    if PAGE == 0:
        return k_start + o_n
    page = tl.load(TABLE + i_b * stride_tab + o_n // PAGE, mask=m_n, other=0).to(tl.int64)
    return page * PAGE + o_n % PAGE


@triton.jit
def _visible(o_m, o_n, m_m, m_n, diag, CAUSAL: tl.constexpr):
    """``[BM, BN]``: query ``i`` sees key ``j`` (both in range; causal: ``j <= i + diag``)."""
    visible = m_m[:, None] & m_n[None, :]
    if CAUSAL:
        visible = visible & (o_n[None, :] <= o_m[:, None] + diag)
    return visible


@triton.jit
def _store_rows(P, x, start, o_t, stride_t, i_h, stride_h, o_d, m_t, m_d):
    tl.store(P + (start + o_t)[:, None] * stride_t + i_h * stride_h + o_d[None, :], x.to(P.dtype.element_ty),
             mask=m_t[:, None] & m_d[None, :])


@triton.jit
def _key_ranges(i_m, q_len, k_len, BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr):
    """For query block ``i_m``: the keys ``[0, full)`` every query of the block sees (whole tiles,
    no mask needed) and the end ``hi`` of the keys any of them sees (bottom-right causal)."""
    diag = k_len - q_len
    full = k_len // BN * BN
    hi = k_len
    if CAUSAL:
        hi = tl.minimum(k_len, (i_m + 1) * BM + diag)
        full = tl.minimum(full, tl.maximum(0, i_m * BM + diag + 1) // BN * BN)
    return full, tl.maximum(hi, 0)


# ---------------------------------------------------------------- forward


@triton.jit
def _fwd_tile(b_q, b_qe, K, V, KE, VE, TABLE, i_b, stride_tab, k_start, start_n, o_m, o_d, m_d, o_e, m_e, m_m, k_len,
              diag, scale_log2, stride_kt, stride_vt, i_kh, stride_kh, stride_vh, b_m, b_l, b_acc, b_acce,
              MASK: tl.constexpr, CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
              PAGE: tl.constexpr, SPLIT: tl.constexpr, TMA: tl.constexpr):
    """One key block. With ``TMA``, ``K``/``V`` (and ``KE``/``VE``, the second head-dim part) are
    tensor descriptors of the document's rows, which zero-fill rows past its end."""
    o_n = start_n + tl.arange(0, BN)
    m_n = o_n < k_len
    if not MASK:
        m_n = tl.full([BN], True, tl.int1)
    if TMA:
        b_kt, b_v = tl.trans(K.load([start_n, 0])), V.load([start_n, 0])
    else:
        rows = _key_rows(TABLE, i_b, stride_tab, k_start, o_n, m_n, PAGE)
        b_kt = _cols(K, 0, rows, stride_kt, i_kh, stride_kh, o_d, m_n, m_d)
        b_v = _rows(V, 0, rows, stride_vt, i_kh, stride_vh, o_d, m_n, m_d)
    b_s = dot(b_q, b_kt, tl.zeros([b_q.shape[0], BN], dtype=tl.float32), DOT_FP32)
    if SPLIT:
        if TMA:
            b_kte, b_ve = tl.trans(KE.load([start_n, BD])), VE.load([start_n, BD])
        else:
            b_kte = _cols(K, 0, rows, stride_kt, i_kh, stride_kh, o_e, m_n, m_e)
            b_ve = _rows(V, 0, rows, stride_vt, i_kh, stride_vh, o_e, m_n, m_e)
        b_s = dot(b_qe, b_kte, b_s, DOT_FP32)
    b_s = b_s * scale_log2
    if MASK:
        b_s = tl.where(_visible(o_m, o_n, m_m, m_n, diag, CAUSAL), b_s, float("-inf"))
    b_m, b_l, b_p, alpha = softmax_weights(b_s, b_m, b_l)
    b_acc = dot(b_p.to(b_v.dtype), b_v, b_acc * alpha[:, None], DOT_FP32)
    if SPLIT:
        b_acce = dot(b_p.to(b_ve.dtype), b_ve, b_acce * alpha[:, None], DOT_FP32)
    return b_m, b_l, b_acc, b_acce


@triton.jit
def _descriptor(P, start, stride_t, i_h, stride_h, rows, D: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """A tensor descriptor of ``rows`` rows of head ``i_h`` from row ``start``, tiles ``[BR, BC]``."""
    return tl.make_tensor_descriptor(P + start * stride_t + i_h * stride_h, shape=[tl.maximum(rows, 1), D],
                                     strides=[stride_t, 1], block_shape=[BR, BC])  # a keyless document: no load


@triton.jit
def _doc_descriptor(P, start, rows, stride_t, BR: tl.constexpr, BC: tl.constexpr):
    """A tensor descriptor of ``rows`` rows from row ``start``, every head's columns (a tile's
    column is its head's offset), tiles ``[BR, BC]``; rows past ``rows`` read as zeros."""
    return tl.make_tensor_descriptor(P + start * stride_t, shape=[tl.maximum(rows, 1), stride_t],
                                     strides=[stride_t, 1], block_shape=[BR, BC])


@triton.jit(do_not_specialize=["size_q", "stride_tab", "total_q"])
def _fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K, TAB_Q, size_q, TABLE, stride_tab, scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, total_q,
    GROUP: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr, SPLIT: tl.constexpr,
    PAGE: tl.constexpr = 0, TMA: tl.constexpr = False,
):
    tl.static_assert(not (TMA and PAGE > 0), "tensor descriptors cannot read K/V through a page table")
    i_b, i_m = _pair(TAB_Q, size_q, BM)
    i_h = tl.program_id(1)
    if i_b < 0:
        return
    q_start, q_len = _span(CU_Q, i_b)
    k_start, k_len = _span(CU_K, i_b)
    i_kh = i_h // GROUP
    o_m = i_m * BM + tl.arange(0, BM)
    o_d, o_e = tl.arange(0, BD), BD + tl.arange(0, BE)
    m_m, m_d, m_e = o_m < q_len, o_d < D, o_e < D
    kd, ke, vd, ve = K, K, V, V
    if TMA:
        b_q = _descriptor(Q, q_start, stride_qt, i_h, stride_qh, q_len, D, BM, BD).load([i_m * BM, 0])
        kd = _descriptor(K, k_start, stride_kt, i_kh, stride_kh, k_len, D, BN, BD)
        vd = _descriptor(V, k_start, stride_vt, i_kh, stride_vh, k_len, D, BN, BD)
    else:
        b_q = _rows(Q, q_start, o_m, stride_qt, i_h, stride_qh, o_d, m_m, m_d)
    b_qe = tl.zeros([BM, BE], dtype=b_q.dtype)
    if SPLIT:
        if TMA:
            b_qe = _descriptor(Q, q_start, stride_qt, i_h, stride_qh, q_len, D, BM, BE).load([i_m * BM, BD])
            ke = _descriptor(K, k_start, stride_kt, i_kh, stride_kh, k_len, D, BN, BE)
            ve = _descriptor(V, k_start, stride_vt, i_kh, stride_vh, k_len, D, BN, BE)
        else:
            b_qe = _rows(Q, q_start, o_m, stride_qt, i_h, stride_qh, o_e, m_m, m_e)
    diag = k_len - q_len  # key j is visible to query i iff j <= i + diag (causal)
    full, hi = _key_ranges(i_m, q_len, k_len, BM, BN, CAUSAL)
    b_m = tl.full([BM], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BD], dtype=tl.float32)
    b_acce = tl.zeros([BM, BE], dtype=tl.float32)
    for start_n in range(0, full, BN):
        b_m, b_l, b_acc, b_acce = _fwd_tile(
            b_q, b_qe, kd, vd, ke, ve, TABLE, i_b, stride_tab, k_start, start_n, o_m, o_d, m_d, o_e, m_e, m_m, k_len,
            diag, scale_log2, stride_kt, stride_vt, i_kh, stride_kh, stride_vh, b_m, b_l, b_acc, b_acce,
            False, CAUSAL, DOT_FP32, BD, BN, PAGE, SPLIT, TMA)
    for start_n in range(full, hi, BN):
        b_m, b_l, b_acc, b_acce = _fwd_tile(
            b_q, b_qe, kd, vd, ke, ve, TABLE, i_b, stride_tab, k_start, start_n, o_m, o_d, m_d, o_e, m_e, m_m, k_len,
            diag, scale_log2, stride_kt, stride_vt, i_kh, stride_kh, stride_vh, b_m, b_l, b_acc, b_acce,
            True, CAUSAL, DOT_FP32, BD, BN, PAGE, SPLIT, TMA)
    b_o, b_lse2 = softmax_result(b_m, b_l, b_acc)
    _store_rows(O, b_o, q_start, o_m, stride_ot, i_h, stride_oh, o_d, m_m, m_d)
    if SPLIT:
        b_oe, _ = softmax_result(b_m, b_l, b_acce)
        _store_rows(O, b_oe, q_start, o_m, stride_ot, i_h, stride_oh, o_e, m_m, m_e)
    tl.store(LSE + i_h * total_q + q_start + o_m, b_lse2 * 0.6931471805599453, mask=m_m)


# ---------------------------------------------------------------- backward


@triton.jit(do_not_specialize=["total_q"])
def _delta_kernel(O, DO, DELTA, stride_ot, stride_oh, stride_dot, stride_doh, total_q,
                  D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """``delta[h, t] = sum_d O[t, h, d] * dO[t, h, d]`` in fp32."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = tl.arange(0, BD)
    m_t, m_d = o_t < total_q, o_d < D
    b_o = _rows(O, 0, o_t, stride_ot, i_h, stride_oh, o_d, m_t, m_d).to(tl.float32)
    b_do = _rows(DO, 0, o_t, stride_dot, i_h, stride_doh, o_d, m_t, m_d).to(tl.float32)
    tl.store(DELTA + i_h * total_q + o_t, tl.sum(b_o * b_do, axis=1), mask=m_t)


@triton.jit
def _row_stats(LSE, DELTA, i_h, total_q, q_start, o_m, m_m):
    """A query block's log-sum-exp (in log2 units, for exp2) and ``delta``."""
    b_lse = tl.load(LSE + i_h * total_q + q_start + o_m, mask=m_m, other=0.0) * 1.4426950408889634
    b_delta = tl.load(DELTA + i_h * total_q + q_start + o_m, mask=m_m, other=0.0)
    return b_lse, b_delta


@triton.jit
def _dkdv_tile(Q, DO, QE, DOE, LSE, DELTA, DQ, b_k, b_v, b_ke, b_ve, b_dk, b_dv, b_dke, b_dve, start_m, q_start,
               q_len, o_n, m_n, o_d, m_d, o_e, m_e, diag, i_h, total_q, scale, scale_log2, stride_qt, stride_qh,
               stride_dot, stride_doh, stride_dqt, stride_dqh, MASK: tl.constexpr, CAUSAL: tl.constexpr,
               DOT_FP32: tl.constexpr, BM: tl.constexpr, SPLIT: tl.constexpr, ATOMIC_DQ: tl.constexpr,
               TMA: tl.constexpr):
    """One query block of query head ``i_h`` into a key block's dK/dV, key-major: the score
    products have the keys as rows (``S^T = K Q^T``, ``dV += P^T dO``, ``dP^T = V dO^T``,
    ``dK += dS^T Q``), so the scores never change layout between them. With ``ATOMIC_DQ`` the
    block's share of dQ (``dS K``, scaled) is added to ``DQ`` (fp32) in place. With ``TMA``,
    ``Q``/``DO`` (``QE``/``DOE``: the second head-dim part) are descriptors of the document."""
    o_m = start_m + tl.arange(0, BM)
    m_m = o_m < q_len
    if not MASK:
        m_m = tl.full([BM], True, tl.int1)
    row0 = q_start + start_m
    if TMA:
        b_q, b_do = Q.load([start_m, i_h * stride_qh]), DO.load([start_m, i_h * stride_doh])
    else:
        b_q = tl.load(_block_ptrs(Q, row0, stride_qt, i_h, stride_qh, o_d, BM), mask=m_m[:, None] & m_d[None, :],
                      other=0.0)
        b_do = tl.load(_block_ptrs(DO, row0, stride_dot, i_h, stride_doh, o_d, BM), mask=m_m[:, None] & m_d[None, :],
                       other=0.0)
    b_lse, b_delta = _row_stats(LSE, DELTA, i_h, total_q, q_start, o_m, m_m)
    b_st = dot(b_k, tl.trans(b_q), tl.zeros([b_k.shape[0], BM], dtype=tl.float32), DOT_FP32)
    b_dpt = dot(b_v, tl.trans(b_do), tl.zeros([b_k.shape[0], BM], dtype=tl.float32), DOT_FP32)
    b_qe = tl.zeros([BM, b_ke.shape[1]], dtype=b_q.dtype)
    b_doe = tl.zeros([BM, b_ke.shape[1]], dtype=b_do.dtype)
    if SPLIT:
        if TMA:
            b_qe = QE.load([start_m, i_h * stride_qh + b_k.shape[1]])
            b_doe = DOE.load([start_m, i_h * stride_doh + b_k.shape[1]])
        else:
            b_qe = _rows(Q, q_start, o_m, stride_qt, i_h, stride_qh, o_e, m_m, m_e)
            b_doe = _rows(DO, q_start, o_m, stride_dot, i_h, stride_doh, o_e, m_m, m_e)
        b_st = dot(b_ke, tl.trans(b_qe), b_st, DOT_FP32)
        b_dpt = dot(b_ve, tl.trans(b_doe), b_dpt, DOT_FP32)
    b_pt = tl.exp2(b_st * scale_log2 - b_lse[None, :])
    if MASK:
        visible = m_n[:, None] & m_m[None, :]
        if CAUSAL:
            visible = visible & (o_n[:, None] <= o_m[None, :] + diag)
        b_pt = tl.where(visible, b_pt, 0.0)
    b_dst = (b_pt * (b_dpt - b_delta[None, :])).to(b_q.dtype)
    b_pt = b_pt.to(b_do.dtype)
    b_dv = dot(b_pt, b_do, b_dv, DOT_FP32)
    b_dk = dot(b_dst, b_q, b_dk, DOT_FP32)
    if SPLIT:
        b_dve = dot(b_pt, b_doe, b_dve, DOT_FP32)
        b_dke = dot(b_dst, b_qe, b_dke, DOT_FP32)
    if ATOMIC_DQ:
        b_ds = tl.trans(b_dst)
        b_dq = dot(b_ds, b_k, tl.zeros([BM, b_k.shape[1]], dtype=tl.float32), DOT_FP32) * scale
        tl.atomic_add(_block_ptrs(DQ, row0, stride_dqt, i_h, stride_dqh, o_d, BM), b_dq,
                      mask=m_m[:, None] & m_d[None, :], sem="relaxed")
        if SPLIT:
            b_dqe = dot(b_ds, b_ke, tl.zeros([BM, b_ke.shape[1]], dtype=tl.float32), DOT_FP32) * scale
            tl.atomic_add(_block_ptrs(DQ, row0, stride_dqt, i_h, stride_dqh, o_e, BM), b_dqe,
                          mask=m_m[:, None] & m_e[None, :], sem="relaxed")
    return b_dk, b_dv, b_dke, b_dve


@triton.jit
def _dkdv_blocks(Q, DO, QE, DOE, LSE, DELTA, DQ, b_k, b_v, b_ke, b_ve, b_dk, b_dv, b_dke, b_dve, start, end, q_start,
                 q_len, o_n, m_n, o_d, m_d, o_e, m_e, diag, i_kh, total_q, scale, scale_log2, stride_qt, stride_qh,
                 stride_dot, stride_doh, stride_dqt, stride_dqh, MASK: tl.constexpr, CAUSAL: tl.constexpr,
                 DOT_FP32: tl.constexpr, BM: tl.constexpr, SPLIT: tl.constexpr, ATOMIC_DQ: tl.constexpr,
                 GROUP: tl.constexpr, TMA: tl.constexpr):
    """The query blocks ``[start, end)`` of every query head of KV head ``i_kh``'s group, in one
    flat loop over (head, block): a loop nested in a run-time loop over the heads would carry
    dK/dV across two loop levels, which spills registers on Hopper."""
    n = tl.cdiv(end - start, BM)
    for it in range(0, GROUP * n):
        i_h = i_kh * GROUP
        start_m = start + it * BM
        if GROUP > 1:
            i_h += it // n
            start_m = start + it % n * BM
        b_dk, b_dv, b_dke, b_dve = _dkdv_tile(
            Q, DO, QE, DOE, LSE, DELTA, DQ, b_k, b_v, b_ke, b_ve, b_dk, b_dv, b_dke, b_dve, start_m, q_start, q_len,
            o_n, m_n, o_d, m_d, o_e, m_e, diag, i_h, total_q, scale, scale_log2, stride_qt, stride_qh, stride_dot,
            stride_doh, stride_dqt, stride_dqh, MASK, CAUSAL, DOT_FP32, BM, SPLIT, ATOMIC_DQ, TMA)
    return b_dk, b_dv, b_dke, b_dve


@triton.jit(do_not_specialize=["size_k", "total_q"])
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DQ, CU_Q, CU_K, TAB_K, size_k, scale, scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_dqt, stride_dqh, total_q,
    GROUP: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr, SPLIT: tl.constexpr,
    ATOMIC_DQ: tl.constexpr, TMA: tl.constexpr = False,
):
    """A key block of one KV head: its dK/dV over every query head of the group (with
    ``ATOMIC_DQ``, dQ added on the way). With ``TMA`` the Q, dO, K and V tiles come through
    tensor descriptors of the document's rows (zeros past its end), which leave the loop no
    tensors of addresses to hold."""
    i_b, i_n = _pair(TAB_K, size_k, BN)
    i_kh = tl.program_id(1)
    if i_b < 0:
        return
    k_start, k_len = _span(CU_K, i_b)
    q_start, q_len = _span(CU_Q, i_b)
    o_n = i_n * BN + tl.arange(0, BN)
    o_d, o_e = tl.arange(0, BD), BD + tl.arange(0, BE)
    m_n, m_d, m_e = o_n < k_len, o_d < D, o_e < D
    qd, dod, qde, dode = Q, DO, Q, DO
    if TMA:
        tl.static_assert(BD + SPLIT * BE == D, "tensor descriptors read whole heads (no masked lanes)")
        qd = _doc_descriptor(Q, q_start, q_len, stride_qt, BM, BD)
        dod = _doc_descriptor(DO, q_start, q_len, stride_dot, BM, BD)
        b_k = _doc_descriptor(K, k_start, k_len, stride_kt, BN, BD).load([i_n * BN, i_kh * stride_kh])
        b_v = _doc_descriptor(V, k_start, k_len, stride_vt, BN, BD).load([i_n * BN, i_kh * stride_vh])
    else:
        b_k = _rows(K, k_start, o_n, stride_kt, i_kh, stride_kh, o_d, m_n, m_d)
        b_v = _rows(V, k_start, o_n, stride_vt, i_kh, stride_vh, o_d, m_n, m_d)
    b_ke = tl.zeros([BN, BE], dtype=b_k.dtype)
    b_ve = tl.zeros([BN, BE], dtype=b_v.dtype)
    if SPLIT:
        if TMA:
            qde = _doc_descriptor(Q, q_start, q_len, stride_qt, BM, BE)
            dode = _doc_descriptor(DO, q_start, q_len, stride_dot, BM, BE)
            b_ke = _doc_descriptor(K, k_start, k_len, stride_kt, BN, BE).load([i_n * BN, i_kh * stride_kh + BD])
            b_ve = _doc_descriptor(V, k_start, k_len, stride_vt, BN, BE).load([i_n * BN, i_kh * stride_vh + BD])
        else:
            b_ke = _rows(K, k_start, o_n, stride_kt, i_kh, stride_kh, o_e, m_n, m_e)
            b_ve = _rows(V, k_start, o_n, stride_vt, i_kh, stride_vh, o_e, m_n, m_e)
    b_dk = tl.zeros([BN, BD], dtype=tl.float32)
    b_dv = tl.zeros([BN, BD], dtype=tl.float32)
    b_dke = tl.zeros([BN, BE], dtype=tl.float32)
    b_dve = tl.zeros([BN, BE], dtype=tl.float32)
    diag = k_len - q_len
    # Query blocks: [lo, mid_lo) straddle the diagonal (masked), [mid_lo, mid_hi) see every key of
    # this block (unmasked), [mid_hi, q_len) hold the document's last, partial rows (masked).
    lo = 0
    mid_lo = 0
    if CAUSAL:
        lo = tl.maximum(0, i_n * BN - diag) // BM * BM  # the first query block that sees a key here
        mid_lo = tl.minimum(tl.cdiv(tl.maximum(0, i_n * BN + BN - 1 - diag), BM) * BM, q_len)
        mid_lo = tl.maximum(mid_lo, lo)
    mid_hi = tl.maximum(q_len // BM * BM, mid_lo)
    if i_n * BN + BN > k_len:  # a partial key block: every tile needs the key mask
        mid_hi = mid_lo
    b_dk, b_dv, b_dke, b_dve = _dkdv_blocks(
        qd, dod, qde, dode, LSE, DELTA, DQ, b_k, b_v, b_ke, b_ve, b_dk, b_dv, b_dke, b_dve, lo, mid_lo, q_start,
        q_len, o_n, m_n, o_d, m_d, o_e, m_e, diag, i_kh, total_q, scale, scale_log2, stride_qt, stride_qh, stride_dot,
        stride_doh, stride_dqt, stride_dqh, True, CAUSAL, DOT_FP32, BM, SPLIT, ATOMIC_DQ, GROUP, TMA)
    b_dk, b_dv, b_dke, b_dve = _dkdv_blocks(
        qd, dod, qde, dode, LSE, DELTA, DQ, b_k, b_v, b_ke, b_ve, b_dk, b_dv, b_dke, b_dve, mid_lo, mid_hi, q_start,
        q_len, o_n, m_n, o_d, m_d, o_e, m_e, diag, i_kh, total_q, scale, scale_log2, stride_qt, stride_qh, stride_dot,
        stride_doh, stride_dqt, stride_dqh, False, CAUSAL, DOT_FP32, BM, SPLIT, ATOMIC_DQ, GROUP, TMA)
    b_dk, b_dv, b_dke, b_dve = _dkdv_blocks(
        qd, dod, qde, dode, LSE, DELTA, DQ, b_k, b_v, b_ke, b_ve, b_dk, b_dv, b_dke, b_dve, mid_hi, q_len, q_start,
        q_len, o_n, m_n, o_d, m_d, o_e, m_e, diag, i_kh, total_q, scale, scale_log2, stride_qt, stride_qh, stride_dot,
        stride_doh, stride_dqt, stride_dqh, True, CAUSAL, DOT_FP32, BM, SPLIT, ATOMIC_DQ, GROUP, TMA)
    _store_rows(DK, b_dk * scale, k_start, o_n, stride_dkt, i_kh, stride_dkh, o_d, m_n, m_d)
    _store_rows(DV, b_dv, k_start, o_n, stride_dvt, i_kh, stride_dvh, o_d, m_n, m_d)
    if SPLIT:
        _store_rows(DK, b_dke * scale, k_start, o_n, stride_dkt, i_kh, stride_dkh, o_e, m_n, m_e)
        _store_rows(DV, b_dve, k_start, o_n, stride_dvt, i_kh, stride_dvh, o_e, m_n, m_e)


@triton.jit
def _dq_tile(K, V, b_q, b_do, b_qe, b_doe, b_lse, b_delta, b_dq, b_dqe, start_n, k_start, k_len, o_m, m_m, o_d, m_d,
             o_e, m_e, diag, i_kh, scale_log2, stride_kt, stride_kh, stride_vt, stride_vh,
             MASK: tl.constexpr, CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr, BN: tl.constexpr,
             SPLIT: tl.constexpr):
    o_n = start_n + tl.arange(0, BN)
    m_n = o_n < k_len
    if not MASK:
        m_n = tl.full([BN], True, tl.int1)
    b_kt = _cols(K, k_start, o_n, stride_kt, i_kh, stride_kh, o_d, m_n, m_d)
    b_vt = _cols(V, k_start, o_n, stride_vt, i_kh, stride_vh, o_d, m_n, m_d)
    b_s = dot(b_q, b_kt, tl.zeros([b_q.shape[0], BN], dtype=tl.float32), DOT_FP32)
    b_dp = dot(b_do, b_vt, tl.zeros([b_q.shape[0], BN], dtype=tl.float32), DOT_FP32)
    b_kte = tl.zeros([b_qe.shape[1], BN], dtype=b_kt.dtype)
    if SPLIT:
        b_kte = _cols(K, k_start, o_n, stride_kt, i_kh, stride_kh, o_e, m_n, m_e)
        b_s = dot(b_qe, b_kte, b_s, DOT_FP32)
        b_dp = dot(b_doe, _cols(V, k_start, o_n, stride_vt, i_kh, stride_vh, o_e, m_n, m_e), b_dp, DOT_FP32)
    b_p = tl.exp2(b_s * scale_log2 - b_lse[:, None])
    if MASK:
        b_p = tl.where(_visible(o_m, o_n, m_m, m_n, diag, CAUSAL), b_p, 0.0)
    b_ds = (b_p * (b_dp - b_delta[:, None])).to(b_kt.dtype)
    b_dq = dot(b_ds, tl.trans(b_kt), b_dq, DOT_FP32)
    if SPLIT:
        b_dqe = dot(b_ds, tl.trans(b_kte), b_dqe, DOT_FP32)
    return b_dq, b_dqe


@triton.jit(do_not_specialize=["size_q", "total_q"])
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K, TAB_Q, size_q, scale, scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, total_q,
    GROUP: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr, SPLIT: tl.constexpr,
):
    i_b, i_m = _pair(TAB_Q, size_q, BM)
    i_h = tl.program_id(1)
    if i_b < 0:
        return
    q_start, q_len = _span(CU_Q, i_b)
    k_start, k_len = _span(CU_K, i_b)
    i_kh = i_h // GROUP
    o_m = i_m * BM + tl.arange(0, BM)
    o_d, o_e = tl.arange(0, BD), BD + tl.arange(0, BE)
    m_m, m_d, m_e = o_m < q_len, o_d < D, o_e < D
    b_q = _rows(Q, q_start, o_m, stride_qt, i_h, stride_qh, o_d, m_m, m_d)
    b_do = _rows(DO, q_start, o_m, stride_dot, i_h, stride_doh, o_d, m_m, m_d)
    b_qe = tl.zeros([BM, BE], dtype=b_q.dtype)
    b_doe = tl.zeros([BM, BE], dtype=b_do.dtype)
    if SPLIT:
        b_qe = _rows(Q, q_start, o_m, stride_qt, i_h, stride_qh, o_e, m_m, m_e)
        b_doe = _rows(DO, q_start, o_m, stride_dot, i_h, stride_doh, o_e, m_m, m_e)
    b_lse, b_delta = _row_stats(LSE, DELTA, i_h, total_q, q_start, o_m, m_m)
    b_dq = tl.zeros([BM, BD], dtype=tl.float32)
    b_dqe = tl.zeros([BM, BE], dtype=tl.float32)
    diag = k_len - q_len
    full, hi = _key_ranges(i_m, q_len, k_len, BM, BN, CAUSAL)
    for start_n in range(0, full, BN):
        b_dq, b_dqe = _dq_tile(K, V, b_q, b_do, b_qe, b_doe, b_lse, b_delta, b_dq, b_dqe, start_n, k_start, k_len,
                               o_m, m_m, o_d, m_d, o_e, m_e, diag, i_kh, scale_log2, stride_kt, stride_kh, stride_vt,
                               stride_vh, False, CAUSAL, DOT_FP32, BN, SPLIT)
    for start_n in range(full, hi, BN):
        b_dq, b_dqe = _dq_tile(K, V, b_q, b_do, b_qe, b_doe, b_lse, b_delta, b_dq, b_dqe, start_n, k_start, k_len,
                               o_m, m_m, o_d, m_d, o_e, m_e, diag, i_kh, scale_log2, stride_kt, stride_kh, stride_vt,
                               stride_vh, True, CAUSAL, DOT_FP32, BN, SPLIT)
    _store_rows(DQ, b_dq * scale, q_start, o_m, stride_dqt, i_h, stride_dqh, o_d, m_m, m_d)
    if SPLIT:
        _store_rows(DQ, b_dqe * scale, q_start, o_m, stride_dqt, i_h, stride_dqh, o_e, m_m, m_e)


_FWD = (_tuned("fwd", _fwd_kernel), _tuned("fwd", _fwd_kernel, tma=True))
_DKDV = (_tuned("bwd_kv", _bwd_dkdv_kernel), _tuned("bwd_kv", _bwd_dkdv_kernel, tma=True))
_DQ = (_tuned("bwd_q", _bwd_dq_kernel),)


# ---------------------------------------------------------------- launchers


def head_split(d: int) -> tuple[int, int, bool]:
    """``(BD, BE, SPLIT)``: a head dim that is not a power of two runs as two power-of-two parts
    (d80: 64 + 16) when that is narrower than padding it (d80 padded: 128 lanes, 48 of them idle);
    otherwise one part of ``next_power_of_2(d)`` lanes."""
    whole = max(16, triton.next_power_of_2(d))
    first = max(16, whole // 2)
    rest = max(16, triton.next_power_of_2(d - first)) if d > first else 0
    if d > first and first + rest < whole:
        return first, rest, True
    return whole, 16, False


def _meta(q, k, causal: bool) -> dict:
    # fp32 inputs: IEEE fp32 dots (the interpreter needs fp32 operands for every dtype)
    bd, be, split = head_split(q.shape[2])
    return dict(GROUP=q.shape[1] // k.shape[-2], D=q.shape[2], CAUSAL=causal,
                DOT_FP32=interpreting() or q.dtype == torch.float32, BD=bd, BE=be, SPLIT=split)


def varlen_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, causal: bool, scale: float,
                         page_table: torch.Tensor | None = None):
    """``(out [Tq, Hq, D], lse [Hq, Tq] fp32, natural log)``. With ``page_table [B, pages]``,
    ``k``/``v`` are pools of pages ``[P, S, Hkv, D]`` and sequence ``b``'s keys are its
    ``cu_seqlens_k`` length read through row ``b`` of the table (no gather)."""
    total_q, hq, d = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((hq, total_q), device=q.device, dtype=torch.float32)
    n_seq = cu_seqlens_q.numel() - 1
    if total_q == 0 or n_seq == 0 or max_seqlen_q == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    meta = _meta(q, k, causal)
    if page_table is None:
        page_table, page = cu_seqlens_q, 0  # unused
    else:
        page = k.shape[1]
        k, v = k.flatten(0, 1), v.flatten(0, 1)  # pages of rows -> rows
    table, size = block_table(cu_seqlens_q, total_q)
    grid = lambda meta: (programs(total_q, n_seq, meta["BM"]), hq)
    args = (q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, table, size, page_table,
            page_table.stride(0) if page else 0, scale * LOG2E, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            v.stride(0), v.stride(1), out.stride(0), out.stride(1), total_q)
    _launch("fwd", _fwd_kernel, _FWD, grid, args, {**meta, "PAGE": page}, tma=tma_fits(q, k, v, page=page))
    return out, lse


def varlen_attention_bwd(do, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                         causal: bool, scale: float, deterministic: bool = False):
    """``(dq, dk, dv)``: one program per key block and KV head walks the query blocks of every
    query head of its group, dK/dV in registers, and adds its share of dQ into an fp32 buffer with
    atomic adds (converted to the inputs' dtype after). Atomic adds land in no fixed order, so
    ``deterministic`` computes dQ in a second kernel instead, one program per query block,
    bit-identical run to run."""
    total_q, hq, d = q.shape
    total_k, hkv = k.shape[:2]
    do = do.contiguous() if do.stride(-1) != 1 else do
    n_seq = cu_seqlens_q.numel() - 1
    if n_seq == 0 or total_q == 0 or max_seqlen_k == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    atomic = not deterministic and max_seqlen_q > 0
    dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32) if atomic else torch.empty_like(q)
    meta = _meta(q, k, causal)
    delta = torch.empty((hq, total_q), device=q.device, dtype=torch.float32)
    rows = 16 if interpreting() else 64
    _delta_kernel[(triton.cdiv(total_q, rows), hq)](out, do, delta, out.stride(0), out.stride(1), do.stride(0),
                                                     do.stride(1), total_q, D=d, BT=rows,
                                                     BD=triton.next_power_of_2(d))
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1))
    table_k, size_k = block_table(cu_seqlens_k, total_k)
    kv_args = (q, k, v, do, lse, delta, dk, dv, dq, cu_seqlens_q, cu_seqlens_k, table_k, size_k, scale,
               scale * LOG2E, *strides, dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), dq.stride(0),
               dq.stride(1), total_q)
    whole_heads = meta["BD"] + meta["SPLIT"] * meta["BE"] == d  # no masked lanes for descriptors to read
    _launch("bwd_kv", _bwd_dkdv_kernel, _DKDV, lambda m: (programs(total_k, n_seq, m["BN"]), hkv), kv_args,
            {**meta, "ATOMIC_DQ": atomic}, tma=whole_heads and tma_fits(q, k, v, do))
    if atomic:
        return dq.to(q.dtype), dk, dv
    if max_seqlen_q == 0:
        return dq.zero_(), dk, dv
    table_q, size_q = block_table(cu_seqlens_q, total_q)
    q_args = (q, k, v, do, lse, delta, dq, cu_seqlens_q, cu_seqlens_k, table_q, size_q, scale, scale * LOG2E,
              *strides, dq.stride(0), dq.stride(1), total_q)
    _launch("bwd_q", _bwd_dq_kernel, _DQ, lambda m: (programs(total_q, n_seq, m["BM"]), hq), q_args, meta)
    return dq, dk, dv
