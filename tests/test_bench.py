"""The benchmark runner: a sweep becomes JSON, Markdown and a plot keyed by device, and the results
README is regenerated from the files."""

import json

from livecc.cli import main


def test_a_cpu_benchmark_writes_its_results_and_the_readme(tmp_path, capsys):
    assert main(["bench", "cross_entropy", "--out", str(tmp_path)]) == 0
    (data,) = [json.loads(p.read_text()) for p in tmp_path.glob("*-cross_entropy.json")]
    assert data["environment"]["device"].startswith("cpu") and data["environment"]["commit"]
    providers = {r["provider"] for r in data["results"]}
    assert {"livecc", "torch_all_rows", "torch_text_rows"} <= providers
    assert all(r["rel_err_vs_torch_text"] < 1e-4 for r in data["results"])
    md = next(tmp_path.glob("*-cross_entropy.md")).read_text()
    assert "| livecc |" in md and (next(tmp_path.glob("*-cross_entropy.png"), None) or "no plot" in md)
    readme = (tmp_path / "README.md").read_text()
    assert "| cross_entropy |" in readme and "P3" in readme


def test_the_training_benchmark_runs_its_variants_on_cpu(tmp_path):
    assert main(["bench", "train", "--out", str(tmp_path), "--shapes", "tiny", "--packs", "300",
                 "--variants", "livecc,livecc unfused,reference", "--steps", "1"]) == 0
    (data,) = [json.loads(p.read_text()) for p in tmp_path.glob("*-train.json")]
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == {"livecc", "livecc unfused", "reference"}
    assert all(r["tokens_per_s"] > 0 and r["tokens"] <= 300 for r in rows.values())
    assert rows["reference"]["speedup_vs_reference"] == 1.0
