import pytest
import torch
from kernel_checks import TOL, rel_err

from livecc.kernels import text_only_linear_cross_entropy, text_only_linear_cross_entropy_reference


def draw(g, n, h, v, dtype, ignore_frac, scale=1.0, bias=True):
    hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * scale / h**0.5).to(dtype).requires_grad_()
    b = (torch.randn(v, generator=g)).to(dtype).requires_grad_() if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore_frac] = -100
    return hidden, weight, b, labels


def check(hidden, weight, bias, labels, reduction, smoothing, chunk_rows=5, tol=None):
    """``chunk_rows`` rows of logits per chunk (a cap in bytes), so every shape crosses chunks."""
    params = [t for t in (hidden, weight, bias) if t is not None]
    out = text_only_linear_cross_entropy(hidden, weight, labels, bias, reduction=reduction,
                                         label_smoothing=smoothing,
                                         max_logit_bytes=chunk_rows * weight.shape[0] * weight.element_size())
    grad_out = torch.randn_like(out) if reduction == "none" else torch.tensor(1.7)
    grads = torch.autograd.grad(out, params, grad_out)
    ref_params = [t.detach().double().requires_grad_() for t in params]
    ref_bias = ref_params[2] if bias is not None else None
    ref = text_only_linear_cross_entropy_reference(ref_params[0], ref_params[1], labels, ref_bias,
                                                   reduction=reduction, label_smoothing=smoothing)
    ref_grads = torch.autograd.grad(ref, ref_params, grad_out.double())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    tol = tol or TOL[hidden.dtype]
    assert rel_err(out, ref) < tol or (out.double() - ref).abs().max() < 1e-6
    for name, g, r in zip(("hidden", "weight", "bias"), grads, ref_grads):
        assert torch.isfinite(g).all(), name
        assert rel_err(g, r) < tol, (name, rel_err(g, r))
    # Ignored rows get exactly zero gradient.
    assert (grads[0][labels == -100] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(1, 16, 7), (23, 48, 1000), (37, 80, 4099)])
def test_matches_float64_reference(nan_empty, gen, dtype, reduction, shape):
    hidden, weight, bias, labels = draw(gen, *shape, dtype, ignore_frac=0.6)
    labels[0] = 3  # at least one labelled row
    check(hidden, weight, bias, labels, reduction, smoothing=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_label_smoothing_and_no_bias(nan_empty, gen, dtype):
    hidden, weight, _, labels = draw(gen, 19, 32, 777, dtype, ignore_frac=0.3, bias=False)
    labels[0] = 776  # the last vocabulary row, in a partial block
    for reduction in ("mean", "none"):
        check(hidden, weight, None, labels, reduction, smoothing=0.1)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored_gives_zero_loss_and_zero_gradients(nan_empty, gen, reduction):
    hidden, weight, bias, labels = draw(gen, 9, 16, 300, torch.float32, ignore_frac=1.1)
    out = text_only_linear_cross_entropy(hidden, weight, labels, bias, reduction=reduction)
    assert (out == 0).all()
    grads = torch.autograd.grad(out.sum(), (hidden, weight, bias))
    assert all(torch.isfinite(g).all() and (g == 0).all() for g in grads)


def test_very_large_logits_stay_finite(nan_empty, gen):
    hidden, weight, bias, labels = draw(gen, 11, 32, 500, torch.float32, ignore_frac=0.2, scale=4000.0)
    labels[0] = 1
    # Logits in the thousands: fp32 keeps ~1e-4 absolute on them, so the softmax is only that exact.
    check(hidden, weight, bias, labels, "mean", smoothing=0.0, tol=1e-3)


def test_rejects_bad_arguments(gen):
    hidden, weight, bias, labels = draw(gen, 4, 8, 20, torch.float32, 0.0)
    with pytest.raises(ValueError, match="reduction"):
        text_only_linear_cross_entropy(hidden, weight, labels, reduction="avg")
    with pytest.raises(ValueError, match="expected hidden"):
        text_only_linear_cross_entropy(hidden, weight[:, :4], labels)
