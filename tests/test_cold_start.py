"""What a new process does before its first window: the attention tilings a GPU run's tuners chose,
recorded in its result files and shipped per GPU (``livecc.kernels.tilings``), and the kernels of
its windows compiled ahead (``livecc.kernels.aot.compile_ahead``). That a launch uses a shipped
tiling, and that compiling ahead covers every kernel of a window, are checked by compiling for
sm_90 in ``test_hopper_gate.py``; the cold start's phases are timed in ``test_bench.py``."""

import json

import pytest

from livecc.bench.results import Sweep, write_sweep
from livecc.kernels import aot, tilings


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
    assert tilings.table_path("NVIDIA H100 80GB HBM3").name == "nvidia-h100-80gb-hbm3.json"


def test_compiling_ahead_leaves_a_mark_that_spares_a_restart(tmp_path, monkeypatch):
    """Launches compiled whole are marked inside Triton's cache: the next start compiles nothing; a
    failed launch leaves no mark; other launches, another GPU or an emptied cache compile again."""
    compiled = []

    def compile_all(selected, arch, jobs, progress=None):
        compiled.append(len(selected))
        return [{"launch": {"kernel": x.kernel, "shape": x.shape, "dtype": x.dtype}, "ok": x.kernel != "bad",
                 "error": "CompilationError: no"} for x in selected]

    monkeypatch.setattr(aot, "compile_all", compile_all)
    monkeypatch.setattr(aot.torch.cuda, "is_available", lambda: True)
    gpu = ["Some GPU"]
    monkeypatch.setattr(aot.torch.cuda, "get_device_name", lambda *device: gpu[0])
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    launches = [aot.Launch("rotary", "llm7b", "bf16", (False,)), aot.Launch("rerotate", "llm7b", "bf16")]
    assert aot.compile_ahead(launches, jobs=2)["cached"] is False and compiled == [2]
    assert aot.compile_ahead(launches, jobs=2) == {"launches": 2, "failed": 0, "seconds": pytest.approx(0, abs=1),
                                                   "cached": True} and compiled == [2]
    gpu[0] = "Other GPU"
    assert aot.compile_ahead(launches)["cached"] is False and compiled == [2, 2]
    failing = [*launches, aot.Launch("bad", "llm7b", "bf16")]
    assert aot.compile_ahead(failing)["failed"] == 1 and aot.compile_ahead(failing)["cached"] is False
    for mark in (tmp_path / "triton").rglob("*.json"):
        mark.unlink()
    assert aot.compile_ahead(launches)["cached"] is False and compiled[-1] == 2


def test_a_compile_started_while_the_model_loads_is_the_one_the_warm_up_waits_for(tmp_path, monkeypatch):
    """``compile_ahead(background=True)`` returns at once; the next call for the same launches (the
    engine's warm-up) waits for that compile rather than starting another; the launches computed
    from a checkpoint's config before its weights load are the loaded model's own."""
    import threading

    import torch

    from livecc.infer import StreamingSession
    from livecc.infer.cache import PAGE_SIZE
    from livecc.models import load_model, model_config

    release, compiled = threading.Event(), []

    def compile_all(selected, arch, jobs, progress=None):
        release.wait(10)
        compiled.append(len(selected))
        return [{"launch": {"kernel": x.kernel, "shape": x.shape, "dtype": x.dtype}, "ok": True} for x in selected]

    monkeypatch.setattr(aot, "compile_all", compile_all)
    monkeypatch.setattr(aot.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(aot.torch.cuda, "get_device_name", lambda *device: "Some GPU")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    for arch in ("qwen2_vl", "qwen3_vl"):
        before = aot.stream_launches(model_config(f"tiny:{arch}"), torch.bfloat16, PAGE_SIZE)
        model, processor = load_model(f"tiny:{arch}", "cpu", torch.bfloat16)
        pool = StreamingSession(model, processor).engine.pool
        assert before == aot.stream_launches(model.config, model.dtype, pool.page_size)
    assert aot.compile_ahead(before, background=True) is None and compiled == []  # returned before compiling
    assert aot.compile_ahead(before, background=True) is None and len(aot._in_flight) == 1  # not started twice
    threading.Timer(0.2, release.set).start()
    assert aot.compile_ahead(before)["cached"] is False and compiled == [len(before)]
    assert aot.compile_ahead(before)["cached"] is True and compiled == [len(before)]
