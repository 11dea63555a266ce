"""Running the model over the streams' paged caches: the ViT, a packed prefill, a batched decode
step (each replayed as CUDA graphs on GPU; there the ViT's attention runs on livecc's varlen
kernel, which a graph can hold) and the re-rotation of keys whose positions moved.

No policy here: what to feed, what to keep and what to say is the engine's and its policy's; this
runs what it is given, on the device, without reading the host back.
"""

from __future__ import annotations

import torch

from ..kernels import aot, rerotate_keys, shift_angles
from ..models import use_livecc_vision_attention
from ..models.vision import Grid, run_vision, vision_geometry
from .cache import KVPool, StreamKVCache
from .decoder import forward_tokens
from .graphs import DecodeGraphs, PrefillGraphs
from .vision import VisionGraphs

__all__ = ["ModelRunner", "upload", "window_launches"]


def upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: from the host to a GPU through pinned memory, without the host
    waiting for the copy (the caching host allocator keeps the pinned block until it is done)."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def window_launches(config, dtype: torch.dtype, page_size: int, device) -> list[aot.Launch]:
    """The kernel launches of the windows of a model of ``config`` in ``dtype`` on ``device``
    (:func:`livecc.kernels.aot.stream_launches` for that GPU; none elsewhere)."""
    device = torch.device(device)
    if device.type != "cuda":
        return []
    from ..kernels.varlen_attention.triton import tma_supported  # the kernels' module: only where they compile

    props = torch.cuda.get_device_properties(device)
    return aot.stream_launches(config, dtype, page_size, gpu=props.name, tma=tma_supported(),
                               sms=props.multi_processor_count)


class ModelRunner:
    """The model and its KV pool, and the graphs that replay its steps over the pool."""

    def __init__(self, model, pool: KVPool, *, cuda_graphs: bool = True):
        self.model, self.pool = model.eval(), pool
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        # An fp32 prefill attends through SDPA per stream (host reads of the lengths): not capturable;
        # nor is a mixture of experts' routing as Hugging Face runs it (it reads the chosen experts back).
        experts = getattr(model.config.get_text_config(), "num_experts", None)
        graphs = cuda_graphs and self.device.type == "cuda" and not experts
        self.decode_graphs = DecodeGraphs(model, pool) if graphs else None
        self.prefill_graphs = PrefillGraphs(model, pool) if graphs and self.dtype != torch.float32 else None
        self.vision_graphs = None
        if graphs and self.dtype != torch.float32:  # fp32 attends through SDPA, which reads lengths back
            use_livecc_vision_attention(model)  # one varlen call per block, capturable
            self.vision_graphs = VisionGraphs(model)
        self.geometry: dict[tuple[Grid, ...], dict] = {}  # the eager ViT's, per round's grids
        rotary = model.model.language_model.rotary_emb
        if getattr(rotary, "attention_scaling", 1.0) != 1.0:  # moving keys rotates them; it must not rescale them
            raise ValueError("streaming needs a rotary embedding without attention scaling")
        self.inv_freq = rotary.inv_freq.detach().cpu()  # on the host: moving keys never reads the device

    def use_static_steps(self) -> None:
        """Run the ViT, prefills and decode steps from static buffers whatever the device: what CUDA
        captures and replays, eager elsewhere (so a CPU runs the GPU's code path)."""
        self.decode_graphs = DecodeGraphs(self.model, self.pool)
        self.prefill_graphs = PrefillGraphs(self.model, self.pool)
        self.vision_graphs = VisionGraphs(self.model)

    def compile_vision(self) -> None:
        """Compile each ViT block (regional ``torch.compile``, shapes dynamic: one graph serves every
        frame size and every block), fusing its norms, rotary embedding and MLP around livecc's
        attention op, instead of replaying the ViT as CUDA graphs. The first windows pay the compile
        time; ``warm_up`` can take it instead."""
        self.vision_graphs = None
        for block in self.model.model.visual.blocks:
            block.compile(dynamic=True)

    def compile_ahead(self) -> dict:
        """On a GPU, the kernels of this model's windows compiled in parallel processes into
        Triton's cache (:func:`livecc.kernels.aot.compile_ahead`; a compile started while the model
        loaded is waited for); a tiling shipped for this GPU is compiled alone. Nothing elsewhere."""
        return aot.compile_ahead(window_launches(self.model.config, self.dtype, self.pool.page_size, self.device))

    def warm_up(self, max_streams: int, max_tokens: int) -> None:
        """Allocate the pool for ``max_streams`` streams of up to ``max_tokens`` cached tokens each and
        build the decode steps of every batch size up to ``max_streams`` and the prefill of every
        bucket now, so that neither a pool reallocation nor a graph capture lands inside a window."""
        pages = -(-max_tokens // self.pool.page_size)
        self.pool.ensure(max_streams * pages + 1)  # + the prefill's scratch page
        if self.prefill_graphs is not None:
            self.prefill_graphs.prepare(max_streams, pages)
        if self.decode_graphs is not None:
            self.decode_graphs.prepare(max_streams, pages)

    def encode(self, pixel_values: torch.Tensor, grids: list[Grid]) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """The ViT over every window's patch rows (concatenated in the order of ``grids``) -> each
        window's visual embeddings and its DeepStack features (Qwen3-VL: one per LLM layer they are
        added after; else none). Nothing is read back from the device."""
        if self.vision_graphs is not None:
            return self.vision_graphs.run(pixel_values, grids)
        visual = self.model.model.visual
        key = tuple(grids)
        if key not in self.geometry:
            if len(self.geometry) >= 64:  # rounds of ever new mixes of frame sizes: keep the memory bounded
                self.geometry.clear()
            self.geometry[key] = vision_geometry(visual, list(grids), self.device)
        embeds, deep = run_vision(visual, pixel_values, self.geometry[key])
        sizes = [t * h * w // visual.spatial_merge_size**2 for t, h, w in grids]
        per_layer = [d.split(sizes) for d in deep]
        return [(e, [layer[i] for layer in per_layer]) for i, e in enumerate(embeds.split(sizes))]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids.to(self.device))

    def prefill(self, caches: list[StreamKVCache], embeds: torch.Tensor, positions: torch.Tensor,
                counts: list[int], last: torch.Tensor, deep: torch.Tensor | None = None) -> torch.Tensor:
        """``embeds [n, H]`` at ``positions [3, n]``, the first ``counts[0]`` for ``caches[0]`` and so
        on, into the caches (``deep [k, n, H]``: DeepStack features after the first ``k`` layers)
        -> the logits at rows ``last`` (on the device: each stream's last token) ``[B, V]`` (fp32)."""
        if self.prefill_graphs is not None and self.prefill_graphs.fits(counts):
            hidden = self.prefill_graphs.run(caches, embeds, positions, counts, deep)
        else:
            hidden = forward_tokens(self.model, embeds, positions, caches, counts, deep)
        return self.model.lm_head(hidden[last]).float()

    def decode(self, caches: list[StreamKVCache], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One token per stream at its position -> each stream's next-token logits ``[B, V]``."""
        if self.decode_graphs is not None:
            return self.decode_graphs.step(caches, tokens, positions)
        embeds = self.embed(torch.tensor(tokens))
        pos = torch.tensor(positions, dtype=torch.long).expand(3, -1)
        hidden = forward_tokens(self.model, embeds, pos, caches, [1] * len(caches))
        return self.model.lm_head(hidden).float()

    def move_keys(self, cache: StreamKVCache, moved: torch.Tensor) -> None:
        """Re-rotate, in every layer, the keys of the cache's live tokens that move down by
        ``moved [length]`` positions (all three M-RoPE sections alike: one RoPE rotation)."""
        which = moved.nonzero().flatten()
        if which.numel() == 0:
            return
        rows, cos, sin = shift_angles(moved[which], self.inv_freq)
        slots, rows, cos, sin = (upload(t, self.device) for t in (cache.slots(which), rows, cos, sin))
        for layer in range(len(self.pool.keys)):
            rerotate_keys(self.pool.slot_view(layer)[0], slots, rows, cos, sin)
