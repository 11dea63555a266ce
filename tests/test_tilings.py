"""The attention tilings a GPU run's tuners chose, recorded in its result files and shipped per GPU
(``livecc.kernels.tilings``); that a launch uses a shipped one is in ``test_hopper_gate.py``."""

import json

import pytest

from livecc.bench.results import Sweep, write_sweep
from livecc.kernels import tilings


def _env(device: str) -> dict:
    return {"device": device, "torch": "2.11.0", "triton": "3.6.0", "commit": "0" * 40, "dirty": False,
            "date": "2026-12-07T00:00:00+00:00"}


def test_chosen_tilings_go_from_result_files_into_the_gpus_table(tmp_path, monkeypatch, capsys):
    """Tilings recorded by tuners land in a benchmark's result file; merged, each GPU gets its table
    (the first file naming a key decides it, a disagreeing later one is reported), and the table
    answers the launcher's lookups by GPU name."""
    monkeypatch.setattr(tilings, "_chosen", {})
    key = (128, True, 7, 64, "bfloat16")
    tilings.note("fwd", False, key, ("fwd", 128, 64, 8, 3, False))
    tilings.note("bwd_kv", True, (128, True, 7, True, "bfloat16"), ("bwd_kv", 32, 128, 8, 2, True))
    first = write_sweep(Sweep("attention", [{"provider": "livecc"}], ["provider"]), tmp_path / "a", _env("NVIDIA H200"))
    monkeypatch.setattr(tilings, "_chosen", {})
    tilings.note("fwd", False, key, ("fwd", 64, 64, 4, 4, False))  # another run chose otherwise
    tilings.note("fwd", True, (80, False, 1, 0, "bfloat16"), ("fwd", 128, 64, 8, 3, True))
    second = write_sweep(Sweep("stream", [{"provider": "livecc"}], ["provider"]), tmp_path / "b", _env("NVIDIA H200"))
    monkeypatch.setattr(tilings, "_chosen", {})
    cpu = write_sweep(Sweep("video", [{"provider": "livecc"}], ["provider"]), tmp_path / "c", _env("cpu-x86_64"))
    assert len(json.loads(first.read_text())["tilings"]) == 2 and "tilings" not in json.loads(cpu.read_text())

    tables = tmp_path / "tuned"
    assert tilings.main([str(first), str(second), str(cpu), "--into", str(tables)]) == 0
    said = capsys.readouterr().out
    assert "kept ['fwd', 128, 64, 8, 3, False]" in said and "no tilings recorded" in said
    table = json.loads((tables / "nvidia-h200.json").read_text())
    assert table["gpu"] == "NVIDIA H200" and table["triton"] == "3.6.0" and len(table["tilings"]) == 3
    assert tilings.shipped("NVIDIA H200", "fwd", False, key, tables) == ("fwd", 128, 64, 8, 3, False)
    assert tilings.shipped("NVIDIA H200", "fwd", True, key, tables) is None  # the descriptor tuner's: not chosen
    assert tilings.shipped("NVIDIA H100 80GB HBM3", "fwd", False, key, tables) is None  # no table for it


def test_the_shipping_command_names_what_it_cannot_use(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tilings.main([str(tmp_path / "missing.json")])
    assert "no such result file" in capsys.readouterr().err
    bad = tmp_path / "tuned" / "nvidia-h200.json"
    bad.parent.mkdir()
    bad.write_text('{"tilings": [{"kernel": "fwd"}]}')
    with pytest.raises(ValueError, match="not a table of tilings"):
        tilings.shipped("NVIDIA H200", "fwd", False, (128,), bad.parent)
    assert tilings.gpu_label("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
