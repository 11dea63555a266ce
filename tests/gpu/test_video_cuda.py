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
