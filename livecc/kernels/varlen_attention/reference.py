"""Pure-torch varlen attention: per-sequence loop in fp32 math. The oracle and the CPU path."""

from __future__ import annotations

import torch

from ..dispatch import reference

__all__ = ["varlen_attention_reference"]


@reference
def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    causal: bool = True,
    softmax_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q [Tq, Hq, D]``, ``k/v [Tk, Hkv, D]`` -> ``(out [Tq, Hq, D], lse [Hq, Tq])``.

    Sequences are consecutive: sequence ``b`` holds queries ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``.
    Causal masks are aligned bottom-right (query ``i`` of a sequence with ``Lq`` queries and ``Lk``
    keys sees keys ``j <= i + Lk - Lq``). A query that sees no key gets output 0 and lse -inf.
    """
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    scale = d**-0.5 if softmax_scale is None else softmax_scale
    compute = torch.promote_types(q.dtype, torch.float32)
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs = [q.new_zeros((cu_q[0], hq, d), dtype=compute)]
    lses = [q.new_full((hq, cu_q[0]), float("-inf"), dtype=compute)]
    for b in range(len(cu_q) - 1):
        qb = q[cu_q[b] : cu_q[b + 1]].to(compute).transpose(0, 1)  # [Hq, Lq, D]
        kb = k[cu_k[b] : cu_k[b + 1]].to(compute).transpose(0, 1).repeat_interleave(hq // hkv, dim=0)
        vb = v[cu_k[b] : cu_k[b + 1]].to(compute).transpose(0, 1).repeat_interleave(hq // hkv, dim=0)
        scores = (qb @ kb.transpose(1, 2)) * scale  # [Hq, Lq, Lk]
        if causal:
            lq, lk = qb.shape[1], kb.shape[1]
            rows, cols = torch.arange(lq, device=q.device), torch.arange(lk, device=q.device)
            scores = scores.masked_fill(cols[None, :] > rows[:, None] + lk - lq, float("-inf"))
        # Rows that see no key: softmax over zeros, then masked, so gradients stay finite.
        seen = torch.isfinite(scores).any(dim=-1, keepdim=True)
        scores = torch.where(seen, scores, 0.0)
        probs = torch.softmax(scores, dim=-1) * seen
        outs.append((probs @ vb).transpose(0, 1))
        lses.append(torch.where(seen[..., 0], torch.logsumexp(scores, dim=-1), float("-inf")))
    tail = q.shape[0] - cu_q[-1]
    outs.append(q.new_zeros((tail, hq, d), dtype=compute))
    lses.append(q.new_full((hq, tail), float("-inf"), dtype=compute))
    return torch.cat(outs).to(q.dtype), torch.cat(lses, dim=1)
