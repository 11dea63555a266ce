"""One oracle for every streaming test: the logits of one masked forward pass of the model over
everything a stream fed, for every family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) and device."""

import torch

# A stream's logits against the oracle: fp32 sums in another order; bf16 two bf16 computations.
LOGIT_TOL = {torch.float32: dict(atol=2e-4, rtol=1e-4), torch.bfloat16: dict(atol=8e-2, rtol=5e-2)}
VIDEO_PAD = 151656


def full_forward_logits(model, trace) -> torch.Tensor:
    """``[fed tokens, vocab]`` fp32 logits of one forward pass of ``model`` over every token the
    traced stream fed, each evicted token hidden from the queries fed after its eviction. Qwen3-VL
    takes its positions from Hugging Face's own ``get_rope_index`` (asserted equal to the stream's)
    and adds its DeepStack features itself."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    ids = torch.cat(trace.ids)[None]
    positions = torch.cat(trace.positions, dim=1)[:, None]
    grids = torch.cat(trace.grids)
    n = ids.shape[1]
    visible = torch.ones(n, n, dtype=torch.bool).tril()
    for fed_by_then, origins in trace.evictions:
        visible[fed_by_then:, origins] = False
    mask = torch.zeros(1, 1, n, n, dtype=dtype).masked_fill(~visible, float("-inf"))
    if model.config.model_type.startswith("qwen3_vl"):
        theirs, _ = model.model.get_rope_index(ids, mm_token_type_ids=torch.where(ids == VIDEO_PAD, 2, 0),
                                               video_grid_thw=grids)
        assert torch.equal(theirs, positions), "the stream's positions differ from get_rope_index's"
    # an MoE's load-balancing loss is of no interest here (and does not take a 4D mask)
    router = {"output_router_logits": False} if hasattr(model.config.get_text_config(), "num_experts") else {}
    with torch.no_grad():
        out = model(input_ids=ids.to(device), position_ids=positions.to(device), attention_mask=mask.to(device),
                    pixel_values_videos=torch.cat(trace.pixel_values).to(device, dtype),
                    video_grid_thw=grids.to(device), **router)
    return out.logits[0].float()


def check_stream_logits(model, trace, dtype: torch.dtype = torch.float32, at_least: int = 1,
                        tol: dict | None = None) -> None:
    """Every logit the stream computed (prefill ends and decode steps) equals the oracle's, within
    ``tol`` (default: :data:`LOGIT_TOL` of ``dtype``)."""
    full = full_forward_logits(model, trace)
    assert len(trace.logits) >= at_least
    for index, logits in trace.logits:
        torch.testing.assert_close(logits.float().to(full.device), full[index], **(tol or LOGIT_TOL[dtype]))
