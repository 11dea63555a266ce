"""The data pipeline on a real Ray cluster: a local cluster of several worker processes, started by
the test (``ray start --head``) and stopped after it; the command line joins it through
``RAY_ADDRESS`` as it would join any cluster. ``clips``, ``rank`` and the model-backed
``lm-filter`` write, record for record and in the report, what the local engine writes; a worker
killed in the middle of a stage is restarted, and the stage and its rerun end with the same files too."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray", reason="ray[data] is part of the dev extra (make setup installs it)")

from test_pipeline import causal_lm_dir, clip_records, speech, write_lines  # noqa: E402, F401

from livecc.data.pipeline import shard_paths  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def data(args, cluster=None, **popen):
    """``livecc data ...`` in a process of its own (with ``cluster``: on it, through ``RAY_ADDRESS``)."""
    env = {**os.environ, **({"RAY_ADDRESS": cluster} if cluster else {})}
    env.pop("TRITON_INTERPRET", None)
    command = [sys.executable, "-m", "livecc.cli", "data", *map(str, args), "--quiet", "--allow-failures"]
    if popen:
        return subprocess.Popen(command, env=env, **popen)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def same_files(stage, a, b):
    for kind in ("out", "side", "report"):
        left, right = (shard_paths(d, stage, 0, 1)[kind].read_bytes() for d in (a, b))
        assert left == right, (stage, kind)
    return json.loads(shard_paths(a, stage, 0, 1)["report"].read_text())


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rows = [{"video": f"{i}.mp4", "words": [list(w) for w in speech(3 * i, 30 + i % 9, 1 + i % 3)]}
            for i in range(40)]
    return write_lines(root / "videos.jsonl", rows[:20] + ["{broken"] + rows[20:])


def local(args):
    """``livecc data ...`` on the local engine, in this process."""
    from livecc.cli import main

    assert main(["data", *map(str, args), "--quiet", "--allow-failures"]) == 0


def test_clips_and_rank_on_a_cluster_write_what_the_local_engine_writes(ray_cluster, videos, tmp_path):
    ray_options = ["--engine", "ray", "--ray-workers", "3", "--ray-cpus", "1", "--batch-size", "3"]
    local(["clips", videos, "--out", tmp_path / "local", "--batch-size", "3"])
    data(["clips", videos, "--out", tmp_path / "ray", *ray_options], ray_cluster)
    report = same_files("clips", tmp_path / "local", tmp_path / "ray")
    assert report["inputs"] == 41 and report["failed"]
    clips = shard_paths(tmp_path / "local", "clips", 0, 1)["out"]
    local(["rank", clips, "--out", tmp_path / "rank-local", "--top", "15"])
    data(["rank", clips, "--out", tmp_path / "rank-ray", "--top", "15", *ray_options], ray_cluster)
    assert same_files("rank", tmp_path / "rank-local", tmp_path / "rank-ray")["kept"] == 15


def test_a_model_stage_on_a_cluster_and_a_worker_killed_mid_stage(ray_cluster, causal_lm_dir, tmp_path):  # noqa: F811
    clips = write_lines(tmp_path / "clips.jsonl", clip_records(60, seed=2) + ["[not json"])
    options = ["--model", causal_lm_dir, "--keep", "0,100", "--batch-size", "2"]
    local(["lm-filter", clips, "--out", tmp_path / "local", *options])
    ray_options = ["--engine", "ray", "--ray-workers", "2", "--ray-cpus", "1", "--ray-window", "4"]
    data(["lm-filter", clips, "--out", tmp_path / "ray", *options, *ray_options], ray_cluster)
    assert same_files("lm-filter", tmp_path / "local", tmp_path / "ray")["kept"] == 60

    run = data(["lm-filter", clips, "--out", tmp_path / "killed", *options, *ray_options], ray_cluster,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = shard_paths(tmp_path / "killed", "lm-filter", 0, 1)["progress"]
    deadline, killed = time.monotonic() + 300, None
    while killed is None and time.monotonic() < deadline and run.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["consumed"] >= 4:
            workers = subprocess.run(["pgrep", "-f", "ray::.*Worker"], capture_output=True, text=True).stdout.split()
            if workers:
                killed = int(workers[0])
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None, "no worker to kill while the stage ran"
    assert run.wait(timeout=600) == 0  # the worker restarted and its batch ran again
    data(["lm-filter", clips, "--out", tmp_path / "killed", *options, *ray_options], ray_cluster)  # the rerun
    assert same_files("lm-filter", tmp_path / "local", tmp_path / "killed")["inputs"] == 61
