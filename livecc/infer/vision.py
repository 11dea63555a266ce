"""The ViT over a round's windows without reading the device, replayed as CUDA graphs.

Everything a Qwen-VL ViT derives from the frames' grids is computed on the host once per frame
size (:func:`livecc.models.vision.vision_geometry`) and handed to the ViT's forward, which takes
them precomputed; so the forward launches kernels only, with nothing read back.

A live stream keeps one frame size, so the windows of a round fall into a few groups of equal
grids. ``VisionGraphs`` runs each group (``k`` windows of one grid) from static buffers: the
patch rows are copied into its input buffer and the ViT replays as one CUDA graph per (grid,
``k``), captured the first time that group occurs. Without CUDA (``capture=False``) the same
static forward runs eagerly.
"""

from __future__ import annotations

import torch

from ..models.vision import Grid, run_vision, vision_geometry
from . import census

__all__ = ["VisionGraphs"]


class _Group:
    """Static buffers of the ViT over ``k`` windows of one grid: the patch rows in, the embeddings
    and DeepStack features out."""

    def __init__(self, visual, grid: Grid, k: int, row_size: int, dtype, device):
        self.geometry = vision_geometry(visual, [grid] * k, device)
        self.pixels = torch.zeros((k * grid[0] * grid[1] * grid[2], row_size), dtype=dtype, device=device)
        self.graph = None
        self.out: tuple[torch.Tensor, list[torch.Tensor]] | None = None


class VisionGraphs:
    """``run(pixel_values, grids)``: the ViT over windows of ``grids`` (patch rows concatenated in
    that order) -> per window, its embeddings and DeepStack features."""

    def __init__(self, model, *, capture: bool | None = None):
        self.visual = model.model.visual
        param = next(self.visual.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.capture = self.device.type == "cuda" if capture is None else capture
        self.merge = self.visual.spatial_merge_size
        self.groups: dict[tuple[Grid, int], _Group] = {}
        self.builds = 0
        self.mempool = None

    @torch.no_grad()
    def run(self, pixel_values: torch.Tensor, grids: list[Grid]) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        rows = [t * h * w for t, h, w in grids]
        starts = [sum(rows[:i]) for i in range(len(rows))]
        order: dict[Grid, list[int]] = {}
        for i, grid in enumerate(grids):
            order.setdefault(grid, []).append(i)
        out: list = [None] * len(grids)
        for grid, members in order.items():
            group = self._group(grid, len(members), pixel_values.shape[1])
            n = rows[members[0]]
            if members == list(range(members[0], members[0] + len(members))):  # one run of rows: one copy
                group.pixels.copy_(pixel_values[starts[members[0]] : starts[members[0]] + n * len(members)])
            else:
                for j, i in enumerate(members):
                    group.pixels[j * n : (j + 1) * n].copy_(pixel_values[starts[i] : starts[i] + n])
            if group.graph is not None:
                group.graph.replay()
                census.replayed()
            else:
                with census.captured():
                    group.out = run_vision(self.visual, group.pixels, group.geometry)
            embeds, deep = group.out  # the next replay overwrites them: one copy each, split into windows
            embeds, deep = embeds.clone().chunk(len(members)), [d.clone().chunk(len(members)) for d in deep]
            for j, i in enumerate(members):
                out[i] = (embeds[j], [d[j] for d in deep])
        return out

    def _group(self, grid: Grid, k: int, row_size: int) -> _Group:
        group = self.groups.get((grid, k))
        if group is None:
            group = self.groups[grid, k] = _Group(self.visual, grid, k, row_size, self.dtype, self.device)
            self._build(group)
        return group

    def _build(self, group: _Group) -> None:
        self.builds += 1
        if not self.capture:
            return
        side = torch.cuda.Stream()  # warm up on a side stream (kernels compiled), then capture
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run_vision(self.visual, group.pixels, group.geometry)
        torch.cuda.current_stream().wait_stream(side)
        group.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(group.graph, pool=self.mempool):
            group.out = run_vision(self.visual, group.pixels, group.geometry)
        self.mempool = group.graph.pool()
