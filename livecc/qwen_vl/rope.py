"""3D M-RoPE position ids of a Qwen2-VL sequence (``get_rope_index`` without a model).

Text tokens count up on all three axes; a vision block of LLM grid ``(t, h, w)`` gets
``(start + t_i, start + h_i, start + w_i)`` and the next token starts at the block's largest
position + 1. That is Qwen2-VL's original rule, which its checkpoints and LiveCC were trained with
(transformers 5 advances by ``max(h, w)`` only, which differs when ``t`` exceeds both).

Qwen2.5-VL spaces the temporal positions by ``time_interval = tokens_per_second * temporal_patch / fps``
(2 at LiveCC's 2 FPS) so that they follow seconds; the next token starts after the largest of them.
"""

from __future__ import annotations

import torch

__all__ = ["mrope_position_ids", "rope_time_interval", "vision_runs"]


def vision_runs(is_vision: torch.Tensor) -> list[tuple[int, int]]:
    """``[(begin, end)]`` of the maximal runs of True in a 1D bool tensor."""
    if not is_vision.any():
        return []
    padded = torch.cat([is_vision.new_zeros(1), is_vision, is_vision.new_zeros(1)]).to(torch.int8)
    edges = torch.diff(padded)
    begins = (edges == 1).nonzero().flatten().tolist()
    ends = (edges == -1).nonzero().flatten().tolist()
    return list(zip(begins, ends))


def mrope_position_ids(
    input_ids: torch.Tensor,
    grids: dict[int, torch.Tensor],
    merge_size: int = 2,
    start: int = 0,
    time_interval: float = 1.0,
) -> tuple[torch.Tensor, int]:
    """Positions ``[3, L]`` for one sequence and the next free position.

    ``grids`` maps each vision pad token (video, image) to the LLM grids ``[n, 3]`` (before the
    spatial merge) of its blocks in the order they appear; a run of pads takes the next grid of its
    token. ``start`` continues a sequence already in a KV cache; ``time_interval`` is
    :func:`rope_time_interval` of the model.
    """
    ids = input_ids.flatten()
    is_vision = torch.zeros_like(ids, dtype=torch.bool)
    for token in grids:
        is_vision |= ids == token
    runs = vision_runs(is_vision)
    if len(runs) != sum(len(g) for g in grids.values()):
        raise ValueError(f"{len(runs)} vision blocks in input_ids but {sum(len(g) for g in grids.values())} grids")
    taken = dict.fromkeys(grids, 0)
    pos = torch.empty(3, ids.numel(), dtype=torch.long)
    cursor, next_pos = 0, start
    for begin, end in runs:
        token = int(ids[begin])
        if taken[token] == len(grids[token]):
            raise ValueError(f"more blocks of token {token} in input_ids than its {len(grids[token])} grids")
        t, h, w = grids[token][taken[token]].tolist()
        taken[token] += 1
        h, w = h // merge_size, w // merge_size
        if end - begin != t * h * w:
            raise ValueError(f"vision block at {begin} has {end - begin} tokens, grid needs {t * h * w}")
        pos[:, cursor:begin] = torch.arange(next_pos, next_pos + begin - cursor)
        next_pos += begin - cursor
        times = (torch.arange(t) * time_interval).long()
        ti, hi, wi = torch.meshgrid(times, torch.arange(h), torch.arange(w), indexing="ij")
        pos[:, begin:end] = torch.stack([ti.flatten(), hi.flatten(), wi.flatten()]) + next_pos
        next_pos += max(int(times[-1]) + 1, h, w)
        cursor = end
    pos[:, cursor:] = torch.arange(next_pos, next_pos + ids.numel() - cursor)
    next_pos += ids.numel() - cursor
    return pos, next_pos


def rope_time_interval(config, temporal_patch_size: int = 2, fps: float = 2.0) -> float:
    """Temporal position step per ViT frame group: 1 for Qwen2-VL; Qwen2.5-VL's vision config
    carries ``tokens_per_second`` (positions per second of video)."""
    tokens_per_second = getattr(getattr(config, "vision_config", config), "tokens_per_second", None)
    return 1.0 if tokens_per_second is None else tokens_per_second * temporal_patch_size / fps
