"""``make gpu-check`` without a GPU: the plan it would run fits a lease, the report is written
after every item and survives a kill, an item past its bound is killed and the run goes on, a
rerun takes only what failed."""

import json
import os
import signal
import subprocess
import sys
import time

from livecc.bench.gpu_check import QUICK, QUICK_TESTS, _rerun_plan, main


def test_the_quick_tier_fits_one_command_of_a_lease_by_its_own_bounds(capsys):
    assert main(["--dry-run"]) == 0
    total = sum(item.bound_s for item in QUICK)
    assert total <= 540 and f"{total:.0f} s  in all (8 items, quick tier)" in capsys.readouterr().out
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *QUICK_TESTS],
                               capture_output=True, text=True)
    assert collected.returncode == 0, collected.stdout[-2000:]  # every test it names exists


def report(out):
    (path,) = out.glob("*-gpu-check.json")
    return json.loads(path.read_text())


def test_without_a_gpu_it_says_not_run_and_still_writes_its_report(tmp_path):
    assert main(["--out", str(tmp_path), "--only", "^tests in bf16"]) == 1
    data = report(tmp_path)
    assert data["verdict"].startswith("NOT RUN")
    collected = len(QUICK_TESTS) + 1  # every id found; the checkpointing test's runs both policies
    assert len(data["tests"]) == collected and {t["outcome"] for t in data["tests"]} == {"skipped"}
    assert (tmp_path / "gpu-check-junit.xml").read_text().count("<testcase") == collected
    text = next(tmp_path.glob("*-gpu-check.md")).read_text()
    assert "NOT RUN" in text and "CUDA is not available" in text  # each skip carries its reason


def command(tmp_path, name, code, bound):
    return {"name": name, "kind": "command", "args": [sys.executable, "-c", code], "bound_s": bound}


def test_a_run_killed_mid_item_leaves_a_readable_report(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([command(tmp_path, "quick one", "print('one')", 60),
                                command(tmp_path, "slow one", "import time; print('started', flush=True); "
                                                              "time.sleep(120)", 300)]))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "livecc.bench.gpu_check", "--plan", str(plan), "--out", str(out)],
                            stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while "started" not in ((out / "gpu-check.log").read_text() if (out / "gpu-check.log").exists() else ""):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    items = report(out)["items"]
    assert [(i["item"], i["outcome"]) for i in items] == [("quick one", "passed"), ("slow one", "running")]
    assert "| slow one | running |" in next(out.glob("*-gpu-check.md")).read_text()


def test_an_item_past_its_bound_is_killed_and_the_run_goes_on(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([command(tmp_path, "hangs", "import time; time.sleep(60)", 1),
                                command(tmp_path, "after", "print('ran')", 60)]))
    t0 = time.time()
    assert main(["--plan", str(plan), "--out", str(tmp_path)]) == 1
    assert time.time() - t0 < 30
    items = report(tmp_path)["items"]
    assert [i["outcome"] for i in items] == ["timed out", "passed"] and "killed after 1 s" in items[0]["message"]
    assert "ran" in (tmp_path / "gpu-check.log").read_text()


def test_a_rerun_takes_the_failed_tests_and_the_unfinished_items(tmp_path):
    tests = next(item for item in QUICK if item.kind == "tests")
    benches = [item for item in QUICK if item.kind == "bench"]
    previous = {"items": [
        {"item": benches[0].name, "outcome": "passed"},
        {"item": benches[1].name, "outcome": "timed out"}, {"item": benches[2].name, "outcome": "not run"},
        {"item": tests.name, "outcome": "failed", "tests": [
            {"test": "tests.gpu.test_kernels_cuda::test_rotary_qk[4097-28x4-d128-bf16]", "outcome": "failed"},
            {"test": "tests.gpu.test_kernels_cuda::test_paged_decode_attention[d128-28x4-bf16]",
             "outcome": "passed"}]}]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(previous))
    plan = _rerun_plan(path, QUICK)
    assert [i.name for i in plan] == [benches[1].name, benches[2].name, tests.name]
    assert plan[2].args == ["tests/gpu/test_kernels_cuda.py::test_rotary_qk[4097-28x4-d128-bf16]"]
