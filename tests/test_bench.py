"""The benchmark runner: a sweep becomes JSON, Markdown and a plot keyed by device, and the results
README is regenerated from the files."""

import json

import pytest

from livecc.bench.targets import read_targets
from livecc.cli import main


def test_a_cpu_benchmark_writes_its_results_and_the_readme(tmp_path, capsys):
    assert main(["bench", "cross_entropy", "--out", str(tmp_path), "--text-fracs", "0.05,1"]) == 0
    (data,) = [json.loads(p.read_text()) for p in tmp_path.glob("*-cross_entropy.json")]
    assert data["environment"]["device"].startswith("cpu") and data["environment"]["commit"]
    providers = {r["provider"] for r in data["results"]}
    assert {"livecc", "torch_all_rows", "torch_text_rows"} <= providers
    assert all(r["rel_err_vs_torch_text"] < 1e-4 for r in data["results"])
    md = next(tmp_path.glob("*-cross_entropy.md")).read_text()
    assert "| livecc |" in md and (next(tmp_path.glob("*-cross_entropy.png"), None) or "no plot" in md)
    readme = (tmp_path / "README.md").read_text()
    goal = read_targets()["P3"]  # the goal stated in docs/performance.md, in the file and the README
    assert f"| cross_entropy | {data['environment']['device']} | P3 | {goal} |" in readme
    assert data["headline"][0]["goal"] == goal


def test_the_training_benchmark_runs_its_variants_on_cpu(tmp_path):
    assert main(["bench", "train", "--out", str(tmp_path), "--shapes", "tiny", "--packs", "300",
                 "--variants", "livecc,livecc unfused,reference", "--steps", "1"]) == 0
    (data,) = [json.loads(p.read_text()) for p in tmp_path.glob("*-train.json")]
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == {"livecc", "livecc unfused", "reference"}
    assert all(r["tokens_per_s"] > 0 and r["tokens"] <= 300 for r in rows.values())
    assert rows["reference"]["speedup_vs_reference"] == 1.0


def test_the_training_census_counts_the_accounted_flops_on_meta_tensors(tmp_path):
    """The 7B and 2B steps op by op on meta tensors: the matrix products counted from the ops' shapes
    (and attention by the documents' lengths) are the accounting's hardware FLOPs less the head,
    under every checkpointing policy; full checkpointing moves more bytes than none."""
    from livecc.bench.train_census import run

    sweep = run(["--pack", "4096", "--results", str(tmp_path)])  # no ceilings there: bytes and FLOPs only
    steps = {(r["shape"], r["checkpointing"]): r for r in sweep.rows if r["kind"] == "summary"}
    assert len(steps) == 6 and all(r["floor_ms"] is None for r in steps.values())
    for r in steps.values():
        assert r["tflop"] == pytest.approx(r["hardware_tflop"] - r["head_tflop"], rel=1e-9)
    assert steps["qwen2vl-7b", "full"]["gb"] > steps["qwen2vl-7b", "none"]["gb"]
    ops = {(r["shape"], r["checkpointing"], r["phase"], r["op"]) for r in sweep.rows if r["kind"] != "summary"}
    assert ("qwen2vl-7b", "none", "backward", "livecc.varlen_attention_bwd") in ops


def test_each_benchmark_lists_its_own_options(capsys):
    from livecc.bench.runner import BENCHMARKS

    for name in BENCHMARKS:
        with pytest.raises(SystemExit) as exit_:
            main(["bench", name, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: livecc bench {name}"), out[:200]
    assert main(["bench", "--help"]) == 0 and "NAME --help" in capsys.readouterr().out


def test_the_stream_benchmark_accepts_its_defaults_and_names_a_bad_run():
    from livecc.bench import stream

    assert stream.options([]).runs == tuple(stream.RUNS)
    assert stream.options(["--runs", "livecc,eager"]).runs == ("livecc", "eager")
    with pytest.raises(SystemExit):
        stream.options(["--runs", "livecc,fast"])
    assert stream.options([]).cold_start == ("cold", "warm") and stream.options(["--cold-start", ""]).cold_start == ()
    with pytest.raises(SystemExit):
        stream.options(["--cold-start", "cold,hot"])


def test_a_cold_start_is_timed_in_a_new_process_phase_by_phase():
    """``cold_starts``: a new process built, warmed up and stepped to its first window's text, with
    empty caches; its phases are its total but for the interpreter's exit and the parent's wait."""
    from livecc.bench.cold_start import PHASES, cold_starts

    (row,) = cold_starts(("cold",))
    assert row["run"] == "cold" and row["device"] == "cpu" and row["compile_s"] == 0.0  # nothing compiles on a CPU
    assert all(row[p] >= 0 for p in PHASES) and row["import_s"] > 0.2 and row["first_window_s"] > 0
    assert sum(row[p] for p in PHASES) == pytest.approx(row["total_s"], abs=0.01)
    with pytest.raises(ValueError, match="hot"):
        cold_starts(("hot",))


def test_every_headline_target_names_a_row_of_the_targets_table():
    """Goals come from docs/performance.md alone; every literal headline target starts with an id
    of that table (read from the benchmark sources, so no GPU run is needed to catch a typo)."""
    import re
    from pathlib import Path

    from livecc.bench import targets

    table = targets.read_targets()
    assert {"P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8"} <= set(table)
    sources = Path(targets.__file__).parent.glob("*.py")
    ids = {m for p in sources for m in re.findall(r'"target": f?"([A-Za-z0-9]+)[ "]', p.read_text())}
    assert len(ids) >= 8 and ids <= set(table), ids - set(table)
    assert targets.goal_of("P3 anything") == table["P3"]
    assert "no target 'P99'" in targets.goal_of("P99")
