import pytest
import torch
from kernel_checks import TOL, rel_err

from livecc.kernels import rotary_qk, rotary_qk_reference


def projected(gen, b, length, heads, d, dtype):
    """``[B, H, L, D]`` as the attention layer makes it: a ``[B, L, H, D]`` projection, transposed."""
    return torch.randn(b, length, heads, d, generator=gen).to(dtype).transpose(1, 2).requires_grad_()


def cos_sin(gen, b, length, d, dtype):
    """Angles of arbitrary positions with halves that differ (the kernel must not assume they match)."""
    angles = torch.rand(b, length, d, generator=gen, dtype=torch.float64) * 50
    return angles.cos().to(dtype), angles.sin().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b, length, hq, hk, d", [(1, 37, 7, 1, 64), (2, 5, 4, 2, 80), (1, 19, 28, 4, 128),
                                                  (3, 1, 2, 3, 16)])
def test_matches_reference_forward_and_backward(nan_empty, gen, dtype, b, length, hq, hk, d):
    q, k = projected(gen, b, length, hq, d, dtype), projected(gen, b, length, hk, d, dtype)
    cos, sin = cos_sin(gen, b, length, d, dtype)
    qo, ko = rotary_qk(q, k, cos, sin)
    assert qo.dtype == dtype and qo.shape == q.shape and qo.stride() == q.stride() and ko.stride() == k.stride()
    q64, k64 = (x.detach().double().requires_grad_() for x in (q, k))
    rq, rk = rotary_qk_reference(q64, k64, cos.double(), sin.double())
    assert rel_err(qo, rq) < TOL[dtype] and rel_err(ko, rk) < TOL[dtype]
    gq, gk = torch.randn_like(rq, dtype=torch.float64), torch.randn_like(rk, dtype=torch.float64)
    (qo.double() * gq).sum().add((ko.double() * gk).sum()).backward()
    (rq * gq).sum().add((rk * gk).sum()).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert rel_err(q.grad, q64.grad) < TOL[dtype] and rel_err(k.grad, k64.grad) < TOL[dtype]


def test_contiguous_inputs_and_hugging_face_formula(gen):
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb

    q, k = torch.randn(2, 3, 9, 32, generator=gen), torch.randn(2, 1, 9, 32, generator=gen)
    cos, sin = cos_sin(gen, 2, 9, 32, torch.float32)
    for got, want in zip(rotary_qk(q, k, cos, sin), apply_rotary_pos_emb(q, k, cos, sin)):
        assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_a_patched_model_equals_the_unpatched_one(monkeypatch, gen, arch):
    import sys

    from livecc.models import patch, tiny_qwen_vl

    reference, fused = tiny_qwen_vl(seed=0, arch=arch), tiny_qwen_vl(seed=0, arch=arch)
    module = sys.modules[type(fused).__module__]
    for name in ("apply_rotary_pos_emb", "apply_multimodal_rotary_pos_emb"):
        if hasattr(module, name):  # restored after the test
            monkeypatch.setattr(module, name, getattr(module, name))
    ids = torch.randint(0, 1000, (1, 23), generator=gen)
    positions = torch.randint(0, 40, (3, 1, 23), generator=gen)
    want = reference(input_ids=ids, position_ids=positions).logits
    want.square().sum().backward()
    patch(fused, attention=False, loss=False, fused_ops=True)
    from livecc.kernels.rotary import triton as kernel

    calls, run = [], kernel.rotary_qk_fwd
    monkeypatch.setattr(kernel, "rotary_qk_fwd", lambda *a: calls.append(a[-1]) or run(*a))
    got = fused(input_ids=ids, position_ids=positions).logits
    got.square().sum().backward()
    assert False in calls and True in calls, "the fused kernel did not run forward and backward"
    assert rel_err(got, want) < 1e-5
    for (name, p), r in zip(fused.named_parameters(), reference.parameters()):
        if r.grad is not None:
            assert rel_err(p.grad, r.grad) < 1e-4, name



def test_the_older_transformers_multimodal_entry_point(gen):
    """transformers < 5.2x calls apply_multimodal_rotary_pos_emb(q, k, cos, sin, mrope_section) with
    cos/sin [3, B, L, D] per position axis; the patch picks the sections, then rotates fused."""
    from livecc.models.patch import _multimodal_rotary

    section = [4, 6, 6]  # head dim 32
    q, k = torch.randn(1, 3, 11, 32, generator=gen), torch.randn(1, 1, 11, 32, generator=gen)
    angles = torch.rand(3, 1, 11, 32, generator=gen) * 20
    cos, sin = angles.cos(), angles.sin()
    # Hugging Face's formula of those releases
    pick = lambda x: torch.cat([m[i % 3] for i, m in enumerate(x.split(section * 2, dim=-1))], dim=-1)
    want = rotary_qk_reference(q, k, pick(cos), pick(sin))
    for got, ref in zip(_multimodal_rotary(q, k, cos, sin, section), want):
        assert rel_err(got, ref) < 1e-6
    assert pick(cos)[0, 0, :4].equal(cos[0, 0, 0, :4]) and pick(cos)[0, 0, 4:10].equal(cos[1, 0, 0, 4:10])
