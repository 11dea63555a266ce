"""The GPU suite: every test here carries the ``gpu`` marker and is skipped, with the reason, where
CUDA is absent (``make gpu-check`` runs it on a GPU machine)."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="CUDA is not available: the GPU suite runs on a GPU machine (make gpu-check)")
    for item in items:
        if "tests/gpu/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)
