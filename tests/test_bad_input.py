"""Every class of bad input a user or a probe can hand livecc: each gets a clear error naming the
input, or in a batch job a counted reject, and nothing else is lost, hangs or runs."""

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from livecc.cli import main
from livecc.data.paths import UnsafePathError, resolve_under
from livecc.data.pipeline import ClipStage, StageMismatchError, TalkingHeadStage, run_stage, shard_paths
from livecc.data.records import ClipRecord, RecordError, RecordWriter, SeekableRecords, read_records
from livecc.data.sequence import EmptySampleError, build_conversation_sample, build_streaming_sample, context_text
from livecc.data.synth import synthesize_clip
from livecc.data.video import VideoError
from livecc.data.words import TranscriptError, Word, load_words, parse_json3, parse_srt, parse_vtt

REPO = Path(__file__).resolve().parents[1]


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_video(path, height, width, codec="libx264", pix_fmt="yuv420p", frames=20, rate=10):
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width, stream.pix_fmt = height, width, pix_fmt
        for i in range(frames):
            image = np.full((height, width, 3), 7 * i % 255, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A good 8 s clip, a 1x1 video (decord misreads it) and a 10x10000 one (beyond the aspect limit)."""
    root = tmp_path_factory.mktemp("videos")
    record = synthesize_clip(root, "good", seed=3, duration=8.0)
    write_video(root / "tiny.mkv", 1, 1, codec="ffv1", pix_fmt="bgr0")
    write_video(root / "wide.mp4", 10, 10000)
    return root, record


def record_for(video, words=((0.5, 0.8, "red"), (0.8, 1.1, "circle")), start=0.0, end=2.0):
    return ClipRecord(video=video, video_start=start, video_end=end, words=[Word(*w) for w in words]).to_messages()


# ---------------------------------------------------------------- security: paths and checkpoints


@pytest.mark.parametrize("path", ["../../../../etc/passwd", "/etc/passwd", "a/../../b.mp4", "../missing.mp4"])
def test_paths_from_records_stay_under_their_root_and_reveal_nothing(path, tmp_path):
    with pytest.raises(UnsafePathError, match="record 4") as err:
        resolve_under(tmp_path, path, source="records.jsonl: record 4")
    # The same words whether or not the file exists: no file-system access happened.
    assert "not found" not in str(err.value) and "exist" not in str(err.value)
    if path.startswith("/"):
        assert resolve_under(tmp_path, path, source="x", allow_absolute=True) == Path(path)
    assert resolve_under(tmp_path, "sub/../clip.mp4", source="x") == tmp_path / "clip.mp4"


def test_every_entry_point_refuses_an_escaping_video(clip_dir, processor, tmp_path):
    root, _ = clip_dir
    messages = record_for("../../../../etc/passwd")
    with pytest.raises(UnsafePathError, match="data.jsonl: record 0"):
        build_streaming_sample(messages, processor, video_root=root, source="data.jsonl: record 0")
    chat = [{"role": "user", "content": [{"type": "video", "video": "/etc/passwd"}]},
            {"role": "assistant", "content": "hi"}]
    with pytest.raises(UnsafePathError):
        build_conversation_sample(chat, processor, video_root=root)
    head = TalkingHeadStage(lambda frames: 0.0, video_root=root).process([(0, messages)])[0]
    assert head.error.startswith("UnsafePathError")
    clips = ClipStage().process([(0, {"video": "x.mp4", "transcript": "../../etc/passwd"}),
                                 (1, {"video": "/etc/passwd", "words": []})])
    assert all(o.error.startswith("UnsafePathError") for o in clips)


def test_questions_and_events_resolve_under_the_video_root(clip_dir, tmp_path, capsys):
    root, _ = clip_dir
    questions = write_lines(tmp_path / "q.jsonl", [
        {"video": "../../etc/passwd", "question": "?", "options": ["a", "b"], "answer": "A"}])
    assert main(["eval", "mcq", str(questions), "--video-root", str(root), "--model", "tiny"]) == 3
    assert "UnsafePathError" in capsys.readouterr().out
    events = write_lines(tmp_path / "e.jsonl", [{"video": "/etc/passwd", "video_id": "x", "event_id": 1,
                                                 "begin": 0, "end": 2}])
    out = tmp_path / "p.jsonl"
    assert main(["eval", "cc-generate", "--annotations", str(events), "--video-root", str(root), "--model",
                 "tiny", "--out", str(out)]) == 3
    assert "UnsafePathError" in out.with_suffix(".failed.jsonl").read_text()


class Payload:
    """Unpickling this writes a file: what a tampered checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def test_resume_refuses_a_checkpoint_that_would_run_code(clip_dir, tmp_path):
    from livecc.train import Trainer, load_config

    root, record = clip_dir
    with RecordWriter(tmp_path / "train.jsonl") as w:
        w.write(record)
    cfg = load_config(None, [f"data={json.dumps([str(tmp_path / 'train.jsonl')])}",
                             f"video_root={json.dumps(str(root))}", f"output_dir={json.dumps(str(tmp_path / 'run'))}",
                             "max_steps=1", "global_batch_clips=1", "gradient_checkpointing=false"])
    Trainer(cfg).fit()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    marker = tmp_path / "pwned"
    state = torch.load(checkpoint / "trainer.pt", weights_only=True)
    state["payload"] = Payload(marker)
    torch.save(state, checkpoint / "trainer.pt")
    with pytest.raises(ValueError, match="refused"):
        Trainer(cfg).resume(checkpoint)
    assert not marker.exists()


# ---------------------------------------------------------------- data lost or stale


def test_three_shards_in_separate_processes_equal_one_shard_and_the_readme_commands_work(tmp_path):
    words = [[i * 0.5, i * 0.5 + 0.4, f"w{i % 37}"] for i in range(120)]
    rows = [{"video": f"v{i}.mp4", "words": [[s + i, e + i, t] for s, e, t in words]} for i in range(40)]
    manifest = write_lines(tmp_path / "videos.jsonl", rows)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "livecc.cli", "data", "clips", str(manifest), "--out",
                               str(tmp_path / "clips"), "--shard", str(i), "--num-shards", "3", "--quiet"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert main(["data", "clips", str(manifest), "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    reports = [json.loads(shard_paths(tmp_path / "clips", "clips", i, 3)["report"].read_text()) for i in range(3)]
    whole = json.loads(shard_paths(tmp_path / "whole", "clips", 0, 1)["report"].read_text())
    for key in ("inputs", "kept", "outputs"):
        assert sum(r[key] for r in reports) == whole[key], key
    records = lambda path: sorted(json.dumps(r) for r in read_records(path))
    sharded = sorted(r for i in range(3) for r in records(shard_paths(tmp_path / "clips", "clips", i, 3)["out"]))
    assert sharded == records(shard_paths(tmp_path / "whole", "clips", 0, 1)["out"])
    # The README's next step, over the shard files by glob: only the outputs match.
    shard_files = sorted(str(p) for p in (tmp_path / "clips").glob("clips.*.jsonl"))
    assert len(shard_files) == 3
    assert main(["data", "rank", *shard_files, "--out", str(tmp_path / "ranked"), "--top", "10", "--quiet"]) == 0
    ranked = json.loads(shard_paths(tmp_path / "ranked", "rank", 0, 1)["report"].read_text())
    assert ranked["inputs"] == whole["outputs"] and ranked["kept"] == 10


def test_a_rerun_over_other_inputs_or_options_is_refused(tmp_path):
    manifest = write_lines(tmp_path / "in.jsonl", [{"video": "v.mp4", "words": [[0, 40, "w"]]}])
    run_stage(ClipStage(), [manifest], tmp_path / "out", progress=False, options={"min_duration": 30})
    with pytest.raises(StageMismatchError, match="other inputs or options"):
        run_stage(ClipStage(), [manifest], tmp_path / "out", progress=False, options={"min_duration": 10})
    time.sleep(0.01)
    write_lines(manifest, [{"video": "v.mp4", "words": [[0, 40, "w"]]}, {"video": "w.mp4", "words": []}])
    with pytest.raises(StageMismatchError):
        run_stage(ClipStage(), [manifest], tmp_path / "out", progress=False, options={"min_duration": 30})
    report = run_stage(ClipStage(), [manifest], tmp_path / "out", progress=False, options={"min_duration": 30},
                       overwrite=True)
    assert report.inputs == 2


def test_lines_that_look_like_seek_lines_are_records(tmp_path):
    good = {"video": "v.mp4", "words": [[0, 1, "w"]]}
    lines = [good] * 25 + ["[]", "[1, 2, 3]", good]
    path = write_lines(tmp_path / "in.jsonl", lines)
    report = run_stage(ClipStage(), [path], tmp_path / "out", progress=False)
    assert report.inputs == 28 and report.balanced and sum(report.failed.values()) == 2
    # A real seek line (the offsets of the lines before it, last) is not an input.
    RecordWriter(tmp_path / "r.jsonl").close()
    with RecordWriter(tmp_path / "r.jsonl") as w:
        for _ in range(3):
            w.write(record_for("v.mp4"))
    assert len(list(read_records(tmp_path / "r.jsonl"))) == 3 and len(SeekableRecords(tmp_path / "r.jsonl")) == 3
    tail = write_lines(tmp_path / "tail.jsonl", [record_for("v.mp4"), "[1, 2, 3]"])
    assert len(list(read_records(tail))) == 2 and len(SeekableRecords(tail)) == 2


@pytest.mark.parametrize("video, error", [(None, "ValueError"), (["a.mp4"], "ValueError"), ("", "ValueError"),
                                          ("gone.mp4", "FileNotFoundError")])
def test_clips_refuse_videos_that_are_not_files_under_the_root(video, error, tmp_path):
    outcome = ClipStage(video_root=tmp_path).process([(0, {"video": video, "words": [[0, 40, "w"]]})])[0]
    assert outcome.error.startswith(error) and not outcome.kept


def test_unsupported_elements_are_errors_naming_the_record(processor):
    audio_chat = [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "?"}]},
                  {"role": "assistant", "content": "A cat."}]
    with pytest.raises(RecordError, match="sft.jsonl: record 2: unsupported 'audio' element"):
        build_conversation_sample(audio_chat, processor, source="sft.jsonl: record 2")
    messages = record_for("v.mp4")
    messages[0]["content"].append({"type": "image", "image": "a.png"})
    with pytest.raises(RecordError, match="record 9: unsupported 'image'"):
        ClipRecord.from_messages(messages, "record 9")
    with pytest.raises(RecordError, match="content must be a list"):
        ClipRecord.from_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "r")


@pytest.mark.parametrize("parse, text, match", [
    (parse_vtt, "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\ngood\n\n00:00:03.000 -> 00:00:04.000\nbad arrow\n",
     "line 6: not a WebVTT cue"),
    (parse_vtt, "WEBVTT\n\n00:01.000 --> 00:02\nno millis\n\nnothing timed\nhere\n", "line 3"),
    (parse_vtt, "WEBVTT\n\n00:99:99.000 --> 01:40:40.000\nbad clock\n", "below 60"),
    (parse_srt, "1\n-00:00:01,000 --> 00:00:02,000\nnegative\n", "not an SRT cue"),
    (parse_srt, "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03,000 --> 00:00:04\nbroken\n", "line 6"),
    (parse_json3, {"events": [{"tStartMs": 1000, "dDurationMs": -500, "segs": [{"utf8": "back"}]}]}, "below 0"),
    (parse_json3, {"events": [{"tStartMs": 0, "dDurationMs": 9, "segs": [{"utf8": 5}]}]}, "not text"),
])
def test_transcripts_are_parsed_strictly(parse, text, match):
    with pytest.raises(TranscriptError, match=match) as err:
        parse(text, "subs/x")
    assert "subs/x" in str(err.value)


def test_plain_cues_beside_inline_times_keep_their_words():
    text = ("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nintro words\n\n"
            "00:00:01.000 --> 00:00:02.000\none<00:00:01.500><c> two</c>\n\n"
            "00:00:02.000 --> 00:00:02.010\none two\n\n"
            "00:00:03.000 --> 00:00:04.000\none two\nthree<00:00:03.500><c> four</c>\n\n"
            "00:00:05.000 --> 00:00:06.000\nplain ending\n")
    assert [w.text for w in parse_vtt(text)] == ["intro", "words", "one", "two", "three", "four", "plain", "ending"]


def test_transcripts_are_read_in_bounded_memory(tmp_path):
    with pytest.raises(TranscriptError, match="larger than the 1 MiB"):
        load_words("/dev/zero", max_bytes=2**20)
    assert main(["words", "/dev/zero"]) == 1


def test_words_past_the_video_end_are_an_error(clip_dir, processor):
    root, record = clip_dir  # good.mp4 is 8 s long
    messages = record.to_messages()
    messages[0]["content"][0]["video_end"] = 12.0
    messages[1]["content"][0]["text_stream"].append([10.0, 10.3, "late"])
    with pytest.raises(VideoError, match="1 of its words lie past the video"):
        build_streaming_sample(messages, processor, video_root=root)


# ---------------------------------------------------------------- one bad item never stops a job


def test_training_counts_bad_records_and_says_so_in_its_exit_status(clip_dir, tmp_path, capsys):
    root, record = clip_dir
    with RecordWriter(tmp_path / "train.jsonl") as w:
        w.write(record)
        w.write(record_for("tiny.mkv"))  # a 1x1 video
        w.write(record_for("wide.mp4"))  # 10000x10
        w.write([{"role": "user", "content": "text"}, {"role": "assistant", "content": [5]}])  # non-dict content
        w.write(record_for("../outside.mp4"))
        w.write(record)
    common = ["train", f"data={json.dumps([str(tmp_path / 'train.jsonl')])}", f"video_root={json.dumps(str(root))}",
              "max_steps=1", "global_batch_clips=2", "gradient_checkpointing=true", "lr=0.001"]
    assert main([*common, f"output_dir={json.dumps(str(tmp_path / 'a'))}"]) == 3
    assert "4 records failed to build" in capsys.readouterr().err
    rejects = [json.loads(line) for line in (tmp_path / "a" / "rejects.rank0.jsonl").read_text().splitlines()]
    assert sorted(r["error"].split(":")[0] for r in rejects) == ["RecordError", "UnsafePathError", "VideoError",
                                                                 "VideoError"]
    assert all("train.jsonl: record" in r["record"] for r in rejects)
    assert main([*common, f"output_dir={json.dumps(str(tmp_path / 'b'))}", "allow_failures=true"]) == 0


def test_a_batch_of_one_that_raises_is_a_counted_failure(tmp_path):
    class Fails:
        name = "fails"

        def process(self, items):
            raise AttributeError("boom")

    path = write_lines(tmp_path / "in.jsonl", [{"i": 0}, "[" * 200_000, {"i": 1}])
    report = run_stage(Fails(), [path], tmp_path / "out", progress=False)
    assert report.inputs == 3 and dict(report.failed) == {"AttributeError": 2, "RecursionError": 1}


def test_failed_items_are_retried_once_on_a_rerun_and_never_duplicated(tmp_path):
    flaky = {"calls": 0}

    class Flaky:
        name = "flaky"

        def process(self, items):
            flaky["calls"] += 1
            if flaky["calls"] <= 2:
                raise TimeoutError("endpoint down")
            from livecc.data.pipeline import Outcome

            return [Outcome(kept=[value]) for _, value in items]

    path = write_lines(tmp_path / "in.jsonl", [{"i": 0}, {"i": 1}])
    first = run_stage(Flaky(), [path], tmp_path / "out", progress=False)
    assert dict(first.failed) == {"TimeoutError": 2}
    again = run_stage(Flaky(), [path], tmp_path / "out", progress=False)
    assert (again.inputs, again.kept, dict(again.failed)) == (2, 2, {})
    paths = shard_paths(tmp_path / "out", "flaky", 0, 1)
    assert sorted(r["i"] for r in read_records(paths["out"])) == [0, 1]
    assert paths["side"].read_text() == ""
    assert json.loads(paths["report"].read_text())["kept"] == 2


def test_cc_generate_reruns_retry_failures_without_duplicating_them(clip_dir, tmp_path, capsys):
    root, _ = clip_dir
    events = write_lines(tmp_path / "e.jsonl", [
        {"video": "good.mp4", "video_id": "g", "event_id": 1, "begin": 0, "end": 4},
        {"video": "tiny.mkv", "video_id": "t", "event_id": 2, "begin": 0, "end": 2}])
    out = tmp_path / "p.jsonl"
    args = ["eval", "cc-generate", "--annotations", str(events), "--video-root", str(root), "--model", "tiny",
            "--out", str(out)]
    for _ in range(2):
        assert main(args) == 3
    assert "retried=1" in capsys.readouterr().out
    failed = out.with_suffix(".failed.jsonl").read_text().splitlines()
    assert len(failed) == 1 and "t_2" in failed[0]
    assert len(out.read_text().splitlines()) == 1
    out.write_text(out.read_text() + '{"video_id": "t", "eve')  # a generation killed mid-write
    assert main([*args, "--allow-failures"]) == 0


# ---------------------------------------------------------------- hangs


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.held, self.stop = [], False

        def accept():
            while not self.stop:
                try:
                    self.held.append(self.sock.accept()[0])
                except OSError:
                    return

        threading.Thread(target=accept, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_stream_from_a_silent_server_ends_within_its_timeout(tmp_path):
    with SilentServer() as server:
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "livecc.cli", "stream", f"{server.url}/live.ts", "--model",
                              "tiny", "--timeout", "2"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "cannot open stream" in run.stderr
    assert time.monotonic() - started < 60


def test_judge_against_a_silent_endpoint_gives_up_by_its_deadline(tmp_path, capsys, caplog):
    events = write_lines(tmp_path / "e.jsonl", [{"video": "v.mp4", "video_id": "v", "event_id": 1, "begin": 0,
                                                 "end": 1, "event_asr_text": "goal"}])
    preds = write_lines(tmp_path / "p.jsonl", [{"video_id": "v", "event_id": 1, "pred": "a goal"}])
    with SilentServer() as server:
        started = time.monotonic()
        code = main(["eval", "cc-judge", "--annotations", str(events), "--predictions", str(preds), "--baseline",
                     str(preds), "--model-id", "M", "--out", str(tmp_path / "v.jsonl"), "--base-url", server.url,
                     "--timeout", "1", "--max-retries", "2", "--deadline", "3"])
        elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1 and "judgements failed" in err and elapsed < 15
    assert "retry 1 of 2" in caplog.text  # retries are said as they happen (a warning: on stderr)


# ---------------------------------------------------------------- resume


def test_a_rerun_continues_from_the_latest_checkpoint(clip_dir, tmp_path, capsys):
    root, record = clip_dir
    with RecordWriter(tmp_path / "train.jsonl") as w:
        for _ in range(4):
            w.write(record)
    run = tmp_path / "run"
    common = ["train", f"data={json.dumps([str(tmp_path / 'train.jsonl')])}", f"video_root={json.dumps(str(root))}",
              f"output_dir={json.dumps(str(run))}", "global_batch_clips=1", "gradient_checkpointing=false",
              "max_steps=4", "save_every=2"]
    assert main([*common, "stop_after=3"]) == 0  # checkpoints at 2 and 3, metrics 1-3
    (run / ".checkpoint-9.partial").mkdir()  # a checkpoint whose writing was killed is never resumed
    (run / "checkpoint-3").rename(run / ".checkpoint-3.partial")
    assert main(common) == 0
    assert "resuming from" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert main([*common, "--restart"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and not (run / ".checkpoint-9.partial").exists()
    assert main([*common, "--resume", str(tmp_path / "nope")]) == 1
    assert "not a livecc checkpoint directory" in capsys.readouterr().err


# ---------------------------------------------------------------- exit codes and messages


def test_a_stage_where_every_input_failed_exits_non_zero(tmp_path, capsys):
    path = write_lines(tmp_path / "in.jsonl", ["{broken", "[1, 2", "{}"])
    assert main(["data", "rank", str(path), "--out", str(tmp_path / "r"), "--top", "1", "--quiet"]) == 3
    assert "3 failed" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["eval", "cc-score", "{verdicts}", "--model-id", "LiveCC-7B-Instuct"], "wins no judgement"),
    (["eval", "cc-score", "{broken_verdicts}", "--model-id", "M"], "line 2 lacks 'ba_winner'"),
    (["sample", "{records}", "--index", "7"], "record 7 out of range"),
    (["train", "lr=\"abc\""], "'lr': expected float"),
    (["train", "max_steps=\"ten\""], "'max_steps': expected int"),
    (["train", "betas=[0.9]"], "'betas': expected tuple"),
    (["train", "global_batch_clips=0"], "'global_batch_clips': expected a positive"),
    (["train", "token_budget=-5"], "'token_budget'"),
    (["train", "--config", "{yaml}"], "broken config file"),
    (["stream", "x.mp4", "--model", "tiny", "--device", "cuda"], "no CUDA"),
    (["eval", "cc-judge", "--annotations", "{events}", "--predictions", "{bad_preds}", "--baseline",
      "{bad_preds}", "--model-id", "M", "--out", "{out}"], "line 1 lacks 'event_id'"),
])
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA case assumes a CPU-only machine")
def test_bad_arguments_and_files_are_messages_naming_them(argv, message, tmp_path, capsys):
    files = {
        "verdicts": write_lines(tmp_path / "v.jsonl", [{"ab_winner": "LiveCC-7B-Instruct", "ba_winner": "tie"}]),
        "broken_verdicts": write_lines(tmp_path / "b.jsonl", [{"ab_winner": "M", "ba_winner": "M"},
                                                              {"ab_winner": "M"}]),
        "records": write_lines(tmp_path / "r.jsonl", [record_for("v.mp4")]),
        "yaml": tmp_path / "c.yaml",
        "events": write_lines(tmp_path / "e.jsonl", [{"video": "v", "video_id": "v", "event_id": 1, "begin": 0,
                                                      "end": 1}]),
        "bad_preds": write_lines(tmp_path / "p.jsonl", [{"video_id": "v", "pred": "x"}]),
        "out": tmp_path / "out.jsonl",
    }
    files["yaml"].write_text("lr: [1, 2\nmodel: tiny\n")
    argv = [a.format(**files) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sample_prints_a_chat_record(tmp_path, capsys):
    path = write_lines(tmp_path / "chat.jsonl", [[{"role": "user", "content": "Hi?"},
                                                  {"role": "assistant", "content": "Hello."}]])
    assert main(["sample", str(path)]) == 0
    assert "Hello." in capsys.readouterr().out


def test_a_torn_last_line_of_the_judge_cache_does_not_block_a_rerun(tmp_path):
    from livecc.eval.judge import _Cache

    cache = tmp_path / "v.cache.jsonl"
    cache.write_text('{"key": "a", "verdict": "A"}\n{"key": "b", "verd')
    assert _Cache(cache).entries == {"a": "A"}
    assert cache.read_text() == '{"key": "a", "verdict": "A"}\n'
    cache.write_text('{"key": "a", "verdict": "A"}\n{broken\n{"key": "c", "verdict": "B"}\n')
    with pytest.raises(ValueError, match="line 2 is broken JSON"):
        _Cache(cache)


def test_odd_videos_are_errors_naming_the_file(clip_dir, processor):
    root, _ = clip_dir
    for name in ("tiny.mkv", "wide.mp4"):
        with pytest.raises(VideoError, match=name):
            build_streaming_sample(record_for(name), processor, video_root=root, backend="decord")


def test_a_clip_without_words_names_the_record(clip_dir, processor):
    root, _ = clip_dir
    with pytest.raises(EmptySampleError, match="data.jsonl: record 3"):
        build_streaming_sample(record_for("good.mp4", words=()), processor, video_root=root,
                               source="data.jsonl: record 3")


# ---------------------------------------------------------------- fidelity to the reference


@pytest.mark.parametrize("title, previous, expected", [
    (None, None, "  ask me  "),  # no context keys: the query as is
    ("", "", "ask me"),  # context keys, both empty: the reference strips the query
    ("A title", "", "ask me  \nA title"),
    ("A title", "earlier words", "ask me  \n\nearlier words"),
])
def test_the_first_turn_text_follows_the_reference(title, previous, expected):
    record = ClipRecord("v.mp4", 0.0, 5.0, [], query="  ask me  ", title=title, previous=previous)
    assert context_text(record, with_context=True) == expected
    assert context_text(record, with_context=False) == "  ask me  "
    assert pickle.loads(pickle.dumps(record)) == record


class TricklingServer:
    """Loopback: answers every connection with one byte of a valid response every ``every`` s,
    or (``garbage``) with a line that is not HTTP."""

    def __init__(self, every: float = 1.0, garbage: bool = False):
        self.every, self.garbage, self.stop = every, garbage, False
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        try:
            conn.recv(65536)
            if self.garbage:
                conn.sendall(b"I AM NOT HTTP\r\n\r\n")
                conn.close()
                return
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000:
                if self.stop:
                    return
                conn.sendall(bytes([byte]))
                time.sleep(self.every)
        except OSError:
            return

    def __enter__(self):
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.sock.close()


def test_a_trickling_or_garbage_endpoint_is_cut_off_by_the_deadline(tmp_path):
    """One byte every second never trips a 2 s socket timeout; the attempt's wall-clock limit and
    the deadline end it. A server that does not speak HTTP is a clear error, not a traceback."""
    from livecc.chat import ChatClient, ChatError

    with TricklingServer() as server:
        started = time.monotonic()
        with pytest.raises(ChatError, match="TimeoutError"):
            ChatClient(server.url, timeout=2, max_retries=0, deadline=4).complete("hi")
        assert time.monotonic() - started < 4
    with TricklingServer(garbage=True) as server, pytest.raises(ChatError, match="not an HTTP response"):
        ChatClient(server.url, timeout=2, max_retries=1, backoff=0.01, deadline=4).complete("hi")


def test_a_missing_video_names_the_directory_searched_and_the_flag(tmp_path, capsys, monkeypatch):
    (tmp_path / "data").mkdir()
    records = tmp_path / "data" / "test.jsonl"
    with RecordWriter(records) as w:
        w.write(ClipRecord("test000.mp4", 0.0, 4.0, [Word(0.5, 0.9, "go")]))
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(records)]) == 1
    err = capsys.readouterr().err
    assert f"video 'test000.mp4' not found under {tmp_path}" in err and "--video-root" in err
