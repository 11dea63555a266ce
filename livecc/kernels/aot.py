"""Every Triton kernel compiled ahead of its first launch, through its real launcher, without
running it: for a Hopper GPU that is not here (a driver that reports sm_90 to Triton), or for the
GPU that is (to fill Triton's cache in parallel processes before anything is timed).

A *launch* is one launcher call with one tiling forced (``FORCED``) on small tensors of the real
dtype, head counts and strides: the same constexprs, options and argument specialisations as the
launches of training and streaming (lengths and table sizes are not specialised on), so the
compiled kernels land under the cache keys a GPU run looks up. ``resources`` reads a compiled
kernel's shared memory, registers and spills from its cubin with the ``cuobjdump`` that Triton's
wheel carries.

The same run is the Hopper gate the test suite runs on every machine: it fails when a launch
does not compile, when a kernel needs more shared memory than an H100/H200 block has, or when a
bf16/fp16 kernel spills registers.

    python -m livecc.kernels.aot --scope all --jobs 2 [--target sm90|device] [--out bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from ..cache import file_label
from .cubin import resources

__all__ = ["Launch", "compile_ahead", "compile_only", "launches", "problems", "pruned", "stream_launches"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel family, one shape, one tiling (``config``: a ``TileConfig`` or a label)."""

    kernel: str  # fwd, fwd_paged, bwd (one pass), bwd_det (dQ apart), decode, ce, rotary, rerotate, preprocess
    shape: str
    dtype: str
    config: tuple = ()
    heads: tuple = ()  # a model's (q heads, kv heads, head dim, causal), where ``shape`` is not in ATTENTION
    page: int = 64  # fwd_paged: the KV pool's page size

    @property
    def attention(self) -> tuple:
        return tuple(self.heads) or ATTENTION[self.shape]

    @property
    def name(self) -> str:
        return f"{self.kernel} {self.shape} {self.dtype} {self.config}"


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# label -> (q heads, kv heads, head dim, causal): the decoder of the 7B and 2B, the ViT, and others
ATTENTION = {"llm7b": (28, 4, 128, True), "llm2b": (12, 2, 128, True), "vit": (16, 16, 80, False),
             "d64": (8, 2, 64, True)}
TRAINED = ("llm7b", "llm2b", "vit")  # where the backward runs: the decoders and a ViT trained with them


def launches(scope: str = "all") -> list[Launch]:
    """``quick``: the bf16 launches of the 7B/2B decoder, the ViT and the streaming engine;
    ``all``: every dtype and head dim the package supports, every tiling of every tuner. The
    backward is compiled at the shapes models train (``TRAINED``) in bf16 only (its fp16 kernels
    compiled to the same registers and spills in all 228 of its tilings compared), the
    deterministic mode's key-block kernel with pointer tilings only (its descriptor tilings are the
    one-pass kernel's without the dQ product)."""
    from .varlen_attention.triton import tuning_space

    dtypes = ("bf16",) if scope == "quick" else ("bf16", "fp16", "fp32")
    shapes = ("llm7b", "llm2b", "vit") if scope == "quick" else tuple(ATTENTION)
    out = []
    for dt in dtypes:
        if dt != "fp32":  # fp32 attention on a GPU is PyTorch's SDPA: the kernel has no fp32 tilings
            for shape in shapes:
                d = ATTENTION[shape][2]
                out += [Launch("fwd", shape, dt, _cfg(cfg)) for cfg in tuning_space("fwd", tma=True, head_dim=d)]
                if dt != "bf16" or shape not in TRAINED:
                    continue
                kv, dq = tuning_space("bwd_kv", head_dim=d), tuning_space("bwd_q", head_dim=d)
                out += [Launch("bwd", shape, dt, (_cfg(cfg),))  # one pass, dQ by atomic adds
                        for cfg in tuning_space("bwd_kv", tma=True, head_dim=d)]
                out += [Launch("bwd_det", shape, dt, (_cfg(kv[i % len(kv)]), _cfg(dq[i % len(dq)])))
                        for i in range(max(len(kv), len(dq)))]
            out += [Launch("fwd_paged", "llm7b", dt, _cfg(cfg)) for cfg in tuning_space("fwd")]
        for page in (16, 64):
            out.append(Launch("decode", "llm7b", dt, (page, 5)))
        out += [Launch("ce", "7b", dt, (grad,)) for grad in (False, True)]
        out += [Launch("rotary", shape, dt, (inverse,)) for shape in ("llm7b", "vit") for inverse in (False, True)]
        out.append(Launch("rerotate", "llm7b", dt, ()))
    out += [Launch("preprocess", f"{h}x{w}", "bf16", ()) for h, w in ((360, 640), (1080, 1920))]
    return out


def _cfg(c) -> tuple:
    return (c.kernel, c.BM, c.BN, c.num_warps, c.num_stages, c.tma)


def stream_launches(config, dtype: torch.dtype, page_size: int, gpu: str | None = None, tma: bool = False,
                    sms: int = 132) -> list[Launch]:
    """The launches of the streaming windows of a model of ``config`` (a Hugging Face Qwen-VL
    config: known before the weights are read) in ``dtype``: frames to patch rows, the ViT's
    attention, the decoder's paged prefill (pages of ``page_size``) and decode, rotary and key
    re-rotation. An attention key that the shipped table of ``gpu`` holds
    (:mod:`livecc.kernels.tilings`) compiles its one tiling; any other, every tiling its tuner
    tries (descriptor ones too with ``tma``: the ViT's tuner on a GPU with TMA). Decode's
    combining kernel is compiled for every power of two of page ranges a GPU of ``sms``
    multiprocessors splits one stream's cache into."""
    from .varlen_attention.triton import shipped_tiling, tuning_key, tuning_space

    label = next((k for k, v in DTYPES.items() if v == dtype), None)
    if label is None:
        raise ValueError(f"no kernels for a model in {dtype}")
    text, vision = config.get_text_config(), config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    decoder = (text.num_attention_heads, text.num_key_value_heads, head_dim, True)
    vit_width = getattr(vision, "embed_dim", None) or vision.hidden_size  # Qwen2-VL's ViT width is its embed_dim
    vit = (vision.num_heads, vision.num_heads, vit_width // vision.num_heads, False)

    def attention(heads: tuple, page: int, tma: bool) -> list[tuple]:
        if label == "fp32":  # fp32 attention on a GPU is PyTorch's SDPA
            return []
        hq, hkv, d, causal = heads
        key = tuning_key("fwd", {"D": d, "CAUSAL": causal, "GROUP": hq // hkv, "PAGE": page}, dtype)
        found = shipped_tiling(gpu, "fwd", tma, key)
        return [_cfg(found)] if found else [_cfg(c) for c in tuning_space("fwd", tma=tma, head_dim=d)]

    most_splits = -(-2 * sms // decoder[1])  # one stream: paged_decode_attention's _splits
    patches = (vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size)
    return [Launch("preprocess", "360x640", label, patches),  # one kernel for every frame size
            *(Launch("fwd", "vit", label, c, vit) for c in attention(vit, 0, tma)),
            *(Launch("fwd_paged", "decoder", label, c, decoder, page_size)
              for c in attention(decoder, page_size, False)),
            *(Launch("decode", "decoder", label, (page_size, 1 << i), decoder)
              for i in range((most_splits - 1).bit_length() + 1)),
            Launch("rotary", "decoder", label, (False,), decoder),
            Launch("rerotate", "decoder", label, (), decoder)]


def compile_ahead(launches: list[Launch], jobs: int | None = None, background: bool = False) -> dict | None:
    """Compile ``launches`` for this machine's GPU in ``jobs`` processes (Triton's cache then
    serves the process's own launches); nothing without a GPU, which compiles nothing. With
    ``background`` it returns at once (a process loads its model meanwhile) and the next call for
    the same launches waits for that compile instead of starting another. Returns ``{"launches",
    "failed", "seconds" (compiling), "cached"}``; a launch that does not compile is logged (it
    then compiles, and fails, where it is launched). A set of launches compiled whole leaves a mark
    in Triton's cache (:func:`_compiled_mark`), so a restart starts no process."""
    if not launches or not torch.cuda.is_available():
        return None if background else {"launches": 0, "failed": 0, "seconds": 0.0, "cached": False}
    mark = _compiled_mark(launches, torch.cuda.get_device_name())
    with _in_flight_lock:
        running = _in_flight.get(mark)
        if running is None:
            running = _in_flight[mark] = _compiler().submit(_compile_ahead, launches, jobs, mark)
    if background:
        return None
    try:
        return running.result()
    finally:
        with _in_flight_lock:
            _in_flight.pop(mark, None)


_in_flight: dict[Path, Future] = {}  # compiles started and not yet waited for, by their mark
_in_flight_lock = threading.Lock()


@functools.cache
def _compiler() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="livecc-compile-ahead")


def _compile_ahead(launches: list[Launch], jobs: int | None, mark: Path) -> dict:
    t0 = time.perf_counter()
    if mark.exists():
        return {"launches": len(launches), "failed": 0, "seconds": time.perf_counter() - t0, "cached": True}
    rows = compile_all(launches, None, max(1, min(jobs or os.cpu_count() or 1, len(launches))))
    failed = [row for row in rows if not row["ok"]]
    for row in failed:
        log.warning("compiling %s ahead failed: %s", Launch(**row["launch"]).name, row["error"].splitlines()[0])
    if not failed:
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text(json.dumps([dataclasses.asdict(x) for x in launches]) + "\n")
    return {"launches": len(rows), "failed": len(failed), "seconds": time.perf_counter() - t0, "cached": False}


def _compiled_mark(launches: list[Launch], device: str) -> Path:
    """Where Triton's cache notes that ``launches`` were compiled for ``device`` by this Triton from
    these kernel sources: inside the cache, so that emptying it empties the marks too."""
    import hashlib

    import triton

    digest = hashlib.sha256(json.dumps([device, triton.__version__, [dataclasses.asdict(x) for x in launches]],
                                       default=str).encode())
    for source in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(source.read_bytes())
    return Path(triton.knobs.cache.dir) / "livecc-compiled-ahead" / f"{digest.hexdigest()}.json"


def run_launch(launch: Launch, device: str) -> None:
    """Drive the launcher of ``launch`` once (inside :func:`compile_only` it compiles, no more)."""
    from . import cu_seqlens
    from .varlen_attention import triton as attention

    dt = DTYPES[launch.dtype]
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape, dtype=dt: torch.randn(*shape, generator=g).to(dtype).to(device)
    if launch.kernel in ("fwd", "fwd_paged", "bwd", "bwd_det"):
        hq, hkv, d, causal = launch.attention
        lengths = [300, 1000, 77]
        cu = cu_seqlens(lengths, device)
        q, k, v = rand(sum(lengths), hq, d), rand(sum(lengths), hkv, d), rand(sum(lengths), hkv, d)
        scale = d**-0.5
        with _forced(attention, launch):
            if launch.kernel == "fwd":
                attention.varlen_attention_fwd(q, k, v, cu, cu, max(lengths), causal, scale)
            elif launch.kernel == "fwd_paged":
                page = launch.page
                pool = rand(-(-1300 // page) * 3, page, hkv, d)
                table = torch.arange(pool.shape[0], dtype=torch.int32, device=device).view(3, -1)
                cu_k = cu_seqlens([m + 200 for m in lengths], device)
                attention.varlen_attention_fwd(q, pool, pool, cu, cu_k, max(lengths), True, scale, table)
            else:
                out, lse = torch.empty_like(q), torch.zeros(hq, q.shape[0], device=device)
                attention.varlen_attention_bwd(rand(*q.shape), q, k, v, out, lse, cu, cu, max(lengths),
                                               max(lengths), causal, scale, deterministic=launch.kernel == "bwd_det")
    elif launch.kernel == "decode":
        from .paged_decode_attention.triton import paged_decode_attention_fwd

        hq, hkv, d, _ = launch.attention
        page, splits = launch.config  # the combining kernel is compiled per power of two of splits
        pool = rand(8, page, hkv, d)
        table = torch.zeros(2, splits, dtype=torch.int32, device=device)
        lengths = torch.full((2,), splits * page, dtype=torch.int32, device=device)
        paged_decode_attention_fwd(rand(2, hq, d), pool, pool, table, lengths, splits * page, d**-0.5,
                                   num_splits=splits)
    elif launch.kernel == "ce":
        from .text_only_linear_cross_entropy.triton import text_only_linear_cross_entropy_fwd

        (grad,) = launch.config
        logits, labels = rand(4, 152064), torch.zeros(4, dtype=torch.int64, device=device)
        text_only_linear_cross_entropy_fwd(logits, labels, 0.0, torch.ones(4, device=device) if grad else None)
    elif launch.kernel == "rotary":
        from .rotary.triton import rotary_qk_fwd

        hq, hkv, d, _ = launch.attention
        q, k = rand(1, 37, hq, d).transpose(1, 2), rand(1, 37, hkv, d).transpose(1, 2)
        cos = rand(1, 37, d)
        rotary_qk_fwd(q, k, cos, cos, launch.config[0])
    elif launch.kernel == "rerotate":
        from .rerotate.triton import rerotate_keys_fwd

        _, hkv, d, _ = launch.attention
        slots = torch.arange(5, device=device)
        table = torch.zeros(2, d // 2, device=device)
        rerotate_keys_fwd(rand(64, hkv, d), slots, torch.zeros(5, dtype=torch.int64, device=device), table, table)
    elif launch.kernel == "preprocess":
        from .preprocess_frames.reference import PatchGeometry
        from .preprocess_frames.triton import preprocess_frames_fwd

        h, w = (int(x) for x in launch.shape.split("x"))
        geometry = PatchGeometry(*launch.config)  # config: (patch size, temporal patch size, merge size)
        frames = torch.randint(0, 256, (geometry.temporal_patch_size, h, w, 3), dtype=torch.uint8).to(device)
        size = (h // geometry.factor * geometry.factor, w // geometry.factor * geometry.factor)
        preprocess_frames_fwd(frames, size, geometry, DTYPES[launch.dtype])
    else:
        raise ValueError(f"unknown kernel family {launch.kernel!r}")


@contextlib.contextmanager
def _forced(attention, launch: Launch) -> Iterator[None]:
    saved = dict(attention.FORCED)
    configs = launch.config if launch.kernel in ("bwd", "bwd_det") else (launch.config,)
    for c in configs:
        cfg = attention.TileConfig(*c)
        attention.FORCED[cfg.kernel] = cfg
    try:
        yield
    finally:
        attention.FORCED.clear()
        attention.FORCED.update(saved)


class _Sm90Driver:
    """Just enough of a Triton driver to compile for a Hopper GPU on a machine without one."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def is_active(self):
        return True

    def get_active_torch_device(self):
        return torch.device("cpu")


@contextlib.contextmanager
def compile_only(arch: int | None = None) -> Iterator[list]:
    """Within: every Triton launch compiles (into Triton's cache) and returns without running; the
    compiled kernels are appended to the yielded list as ``(name, kernel, ptxas log)``. With ``arch``
    (90: Hopper) Triton compiles for that GPU whatever this machine has."""
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    compiled: list = []
    run = JITFunction.run
    previous = driver._active  # None until first used; there is no default to return to without a GPU

    def compile_instead(self, *args, grid, warmup, **kwargs):
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kernel, log.getvalue()))
        return kernel

    if arch is not None:
        driver.set_active(_Sm90Driver(arch))
    JITFunction.run = compile_instead
    try:
        yield compiled
    finally:
        JITFunction.run = run
        driver._active = previous


def _compile_one(launch: Launch, arch: int | None, device: str) -> dict:
    t0 = time.perf_counter()
    try:
        with compile_only(arch) as compiled:
            run_launch(launch, device)
        rows = [{"kernel": name, **resources(k, log)} for name, k, log in compiled]
        return {"launch": dataclasses.asdict(launch), "ok": True, "kernels": rows,
                "seconds": time.perf_counter() - t0}
    except Exception as e:  # one launch that does not compile is a row saying why, not the end of the run
        return {"launch": dataclasses.asdict(launch), "ok": False, "error": f"{type(e).__name__}: {e}"[:2000],
                "seconds": time.perf_counter() - t0}


def _worker_init(arch: int | None) -> None:
    if arch is not None:
        try:  # ptxas -v's report (spill bytes) on stdout, which compile_only captures
            import triton

            triton.knobs.nvidia.dump_ptxas_log = True
        except AttributeError:
            pass


def compile_all(selected: list[Launch], arch: int | None, jobs: int,
                progress: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """Compile ``selected`` in ``jobs`` processes (each its own launches); one row per launch."""
    device = "cpu" if arch is not None else "cuda"
    ctx = get_context("spawn" if device == "cuda" else "fork")
    rows = []
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(arch,)) as pool:
        for row in pool.map(_compile_one, selected, [arch] * len(selected), [device] * len(selected)):
            rows.append(row)
            progress(row)
    return rows


_TUNED = {"_fwd_kernel": "fwd", "_bwd_dkdv_kernel": "bwd_kv", "_bwd_dq_kernel": "bwd_q"}  # kernel -> its tiling


def _tuner_group(launch: dict, kernel: str) -> tuple | None:
    """The tuner that would choose among the launches of ``kernel`` like this one (same launch
    kind, shape, dtype and kernel, pointer or TMA tilings), or None for a kernel no tuner chooses."""
    if kernel not in _TUNED:
        return None
    config = launch["config"]
    tilings = config if config and isinstance(config[0], (list, tuple)) else (config,)
    tiling = next(t for t in tilings if t[0] == _TUNED[kernel])
    return launch["kernel"], launch["shape"], launch["dtype"], kernel, tiling[5]


def pruned(rows: list[dict]) -> set[tuple[int, int]]:
    """``(row, kernel)`` of every compiled kernel the attention tuners drop: one that spills where
    another tiling of its tuner does not (``varlen_attention.triton._prune``)."""
    clean = {_tuner_group(row["launch"], k["kernel"]) for row in rows if row["ok"] for k in row["kernels"]
             if not k.get("spills")}
    return {(i, j) for i, row in enumerate(rows) if row["ok"] for j, k in enumerate(row["kernels"])
            if k.get("spills") and _tuner_group(row["launch"], k["kernel"]) in clean - {None}}


def problems(rows: list[dict], limit: int, dropped: set[tuple[int, int]] | None = None) -> list[str]:
    """What fails the gate: a launch that does not compile, a kernel over ``limit`` bytes of shared
    memory, and a spill in a 16-bit (bf16/fp16) launch, every one a training or streaming hot path,
    unless a tuner drops that tiling for one that does not spill (``dropped``: :func:`pruned`)."""
    found, dropped = [], pruned(rows) if dropped is None else dropped
    for i, row in enumerate(rows):
        name = Launch(**row["launch"]).name
        if not row["ok"]:
            found.append(f"{name}: does not compile ({row['error'].splitlines()[0][:200]})")
            continue
        for j, k in enumerate(row["kernels"]):
            if k.get("shared", 0) > limit:
                found.append(f"{name}: {k['kernel']} needs {k['shared']} bytes of shared memory (limit {limit})")
            if k.get("spills") and row["launch"]["dtype"] != "fp32" and (i, j) not in dropped:
                found.append(f"{name}: {k['kernel']} spills registers ({k.get('spill_bytes')} bytes, "
                             f"{k['spill_instructions']} local loads/stores)")
    return found


def write_table(rows: list[dict], stem: Path, header: str, found: list[str], dropped: set[tuple[int, int]]) -> None:
    """``stem.json`` (every row) and ``stem.md`` (one line per compiled kernel, then the problems)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps({"header": header, "problems": found, "rows": rows}, indent=1)
                                         + "\n")
    lines = [f"# {header}", "", f"{len(rows)} launches; {len(found)} problems.", "",
             "| launch | shape | dtype | tiling | kernel | shared B | registers | spill B / local ld+st | wgmma | TMA "
             "|",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, row in enumerate(rows):
        launch = row["launch"]
        tiling = " ".join(str(c) for c in launch["config"]) if launch["config"] else "-"
        if not row["ok"]:
            lines.append(f"| {launch['kernel']} | {launch['shape']} | {launch['dtype']} | {tiling} | "
                         f"does not compile | | | | | |")
            continue
        for j, k in enumerate(row["kernels"]):
            spill = f"{k.get('spill_bytes') if k.get('spill_bytes') is not None else '?'} / {k['spill_instructions']}"
            spill += " (tuner drops it)" if (i, j) in dropped else ""
            lines.append(f"| {launch['kernel']} | {launch['shape']} | {launch['dtype']} | {tiling} | {k['kernel']} | "
                         f"{k['shared']} | {k.get('registers', '?')} | {spill} | "
                         f"{'yes ' + ' '.join(k.get('wgmma_shapes', [])) if k['wgmma'] else '-'} | "
                         f"{'yes' if k['tma'] else '-'} |")
    lines += ["", "Problems:" if found else "No problems.", *[f"- {p}" for p in found]]
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m livecc.kernels.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--scope", choices=("quick", "all"), default="quick")
    parser.add_argument("--target", choices=("sm90", "device"), default="sm90",
                        help="sm90: a Hopper GPU, from any machine; device: this machine's GPU")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", default=None, help="a regular expression over the launches' names")
    parser.add_argument("--out", default=None, help="write the resources table (.md, .json) into this folder")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    arch = 90 if args.target == "sm90" else None
    selected = [x for x in launches(args.scope) if args.only is None or re.search(args.only, x.name)]
    t0 = time.perf_counter()

    def progress(row):
        state = "ok" if row["ok"] else "FAILED " + row["error"].splitlines()[0][:160]
        print(f"{row['seconds']:6.1f} s  {Launch(**row['launch']).name}: {state}", flush=True)

    rows = compile_all(selected, arch, max(1, args.jobs), progress)
    elapsed = time.perf_counter() - t0
    from .varlen_attention.triton import SMEM_LIMIT, _smem_limit

    dropped = pruned(rows)
    found = problems(rows, SMEM_LIMIT if arch else _smem_limit(torch.device("cuda")), dropped)
    target = "sm_90" if arch else torch.cuda.get_device_name()
    print(f"{len(rows)} launches compiled for {target} with Triton {triton.__version__} in {elapsed:.0f} s "
          f"({args.jobs} processes); {len(found)} problems")
    for problem in found:
        print(f"  {problem}")
    if args.out:
        date = time.strftime("%Y-%m-%d", time.gmtime())
        label = "sm90" if arch else file_label(target)
        stem = Path(args.out) / f"{date}-{label}-triton-{triton.__version__}-kernels"
        write_table(rows, stem, f"Kernels compiled for {target} with Triton {triton.__version__} ({args.scope} scope)",
                    found, dropped)
        print(f"wrote {stem}.md")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
