import pytest
import torch
from kernel_checks import TOL, rel_err

from livecc.kernels import rerotate_keys, rerotate_keys_reference, shift_angles


def rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Hugging Face's rotate-half RoPE of ``x [n, H, D]`` at ``positions [n]``, in float64."""
    angles = positions.double()[:, None] * inv_freq.double()[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None], torch.cat([angles.sin()] * 2, -1)[:, None]
    half = x.shape[-1] // 2
    x = x.double()
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads, d", [(4, 128), (3, 80), (1, 64)])
def test_keys_rotated_for_a_position_move_to_another(gen, dtype, heads, d):
    """A key stored rotated for position p, re-rotated by its shift, is the key rotated for
    p - shift; keys in other slots are untouched, bit for bit."""
    slots_total = 97
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    raw = torch.randn(slots_total, heads, d, generator=gen, dtype=torch.float64)
    positions = torch.randint(0, 120_000, (slots_total,), generator=gen)
    keys = rope(raw, positions, inv_freq).to(dtype)
    before = keys.clone()
    slots = torch.randperm(slots_total, generator=gen)[:41]
    shifts = torch.randint(0, 3, (41,), generator=gen) * torch.randint(1, 90_000, (1,), generator=gen)
    shifts[0] = 0  # a survivor before every gap keeps its place
    rows, cos, sin = shift_angles(shifts, inv_freq)
    for fn in (rerotate_keys, rerotate_keys_reference):
        moved = before.clone()
        fn(moved, slots, rows, cos, sin)
        want = rope(raw[slots], positions[slots] - shifts, inv_freq)
        assert rel_err(moved[slots], want) < TOL[dtype]
        untouched = torch.ones(slots_total, dtype=torch.bool)
        untouched[slots] = False
        assert torch.equal(moved[untouched], before[untouched])
    kernel, reference = before.clone(), before.clone()
    rerotate_keys(kernel, slots, rows, cos, sin)
    rerotate_keys_reference(reference, slots, rows, cos, sin)
    assert rel_err(kernel, reference) < TOL[dtype] / 2  # the same rounding, up to an ulp where bf16 ties


def test_bad_layouts_are_rejected():
    keys = torch.zeros(4, 2, 7)
    rows, cos, sin = shift_angles(torch.tensor([1]), torch.ones(3))
    with pytest.raises(ValueError, match="D even"):
        rerotate_keys(keys, torch.tensor([0]), rows, cos, sin)
    with pytest.raises(ValueError, match="one entry per key"):
        rerotate_keys(torch.zeros(4, 2, 6), torch.tensor([0, 1]), rows, cos, sin)
