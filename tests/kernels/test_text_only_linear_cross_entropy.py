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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_row_labelled_takes_the_rows_as_they_are(nan_empty, gen, dtype):
    hidden, weight, bias, labels = draw(gen, 29, 48, 1000, dtype, ignore_frac=0.0)
    check(hidden, weight, bias, labels, "mean", 0.0)


def peak_bytes(fn) -> int:
    """The most the CPU allocator held during ``fn`` beyond what was live before it (the
    profiler's memory events, in the order they happened)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("ignore_frac", [0.6, 0.0])
@pytest.mark.parametrize("chunk_rows", [64, 1000])
def test_the_loss_holds_no_more_than_its_working_bytes(gen, ignore_frac, chunk_rows):
    """Forward and backward measured by the allocator: beyond the inputs and the gradients, never
    more than ``working_bytes`` (one chunk of logits, the labelled rows and their gradient), and
    at least the chunk of logits it must hold."""
    from livecc.kernels.text_only_linear_cross_entropy import working_bytes

    n, h, v = 600, 32, 3000
    hidden, weight, _, labels = draw(gen, n, h, v, torch.float32, ignore_frac, bias=False)
    rows = int((labels != -100).sum())
    cap = chunk_rows * v * 4

    def step():
        text_only_linear_cross_entropy(hidden, weight, labels, max_logit_bytes=cap).backward()

    peak = peak_bytes(step)
    grads = (n * h + v * h) * 4
    bound = working_bytes(n, rows, h, v, 4, cap)
    assert min(rows, chunk_rows) * v * 4 <= peak - v * h * 4  # dW is made with the logits, in the forward
    assert peak - grads <= bound + 16384, (peak - grads, bound)  # 16 KB: the scalars of the loss and its autograd


def test_the_7b_heads_working_bytes_stay_under_half_a_gigabyte():
    from livecc.kernels.text_only_linear_cross_entropy import working_bytes

    for rows in (819, 16384):  # a 16k pack at 5% text, and all text
        assert working_bytes(16384, rows, 3584, 152064, 2) < 0.5e9
