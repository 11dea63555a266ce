"""NVDEC decoding (PyNvVideoCodec) selects the same frames as the CPU decoders, on the GPU."""

import pytest
import torch

from livecc.data.video import available_backends, decode_clip


@pytest.mark.parametrize("name", ["bikes.mp4", "bigbuckbunny.mp4"])
@pytest.mark.parametrize("span", [(None, None), (1.3, 4.1), (0.0, 2.98)])
def test_nvdec_frames_equal_the_cpu_backends(real_clip, name, span):
    if "nvdec" not in available_backends():
        pytest.skip("PyNvVideoCodec does not import here (the gpu extra, or wheels/ for make gpu-check)")
    path = real_clip(name)
    gpu = decode_clip(path, *span, backend="nvdec", resize=False, device="cuda")
    assert gpu.frames.is_cuda and gpu.frames.dtype == torch.uint8
    for backend in ("decord", "pyav"):
        if backend not in available_backends():
            continue
        cpu = decode_clip(path, *span, backend=backend, resize=False)
        assert gpu.pts == cpu.pts, backend  # the same frames, by their times
        diff = (gpu.frames.cpu().int() - cpu.frames.int()).abs().float()
        assert diff.mean() < 2.0, (backend, diff.mean())  # NVDEC's colour conversion rounds its own way


def test_nvdec_decodes_a_clip_as_the_cpu_does(tmp_path):
    """NVDEC on one H.264 clip written here (no sample data needed): the same frames by their times
    as PyAV's, and the same pixels up to the colour conversion's rounding."""
    if "nvdec" not in available_backends() or "pyav" not in available_backends():
        pytest.skip("PyNvVideoCodec and PyAV must both import here")
    from livecc.data.synth import synthesize_clip

    synthesize_clip(tmp_path, "clip", seed=0, duration=4.0, size=(240, 320))
    gpu = decode_clip(tmp_path / "clip.mp4", 0.5, 3.2, backend="nvdec", resize=False, device="cuda")
    cpu = decode_clip(tmp_path / "clip.mp4", 0.5, 3.2, backend="pyav", resize=False)
    assert gpu.frames.is_cuda and gpu.frames.dtype == torch.uint8 and len(gpu.pts) >= 5
    assert gpu.pts == cpu.pts
    assert (gpu.frames.cpu().int() - cpu.frames.int()).abs().float().mean() < 2.0
