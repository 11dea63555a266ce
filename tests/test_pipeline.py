import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from livecc.data.pipeline import (
    ClipRules,
    ClipStage,
    RankStage,
    cut_clips,
    rank_threshold,
    run_stage,
    shard_paths,
    split_at_gaps,
    vocabulary_size,
)
from livecc.data.records import ClipRecord
from livecc.data.words import Word

A1, B3 = ClipRules(), ClipRules(sft=True)


def speech(start, duration, rate, texts=None, first="word"):
    """``rate`` words per second over exactly ``duration`` seconds (first start to last end)."""
    n = round(duration * rate)
    step = duration / n
    texts = texts or [first] + [f"w{i}" for i in range(1, n)]
    return [Word(round(start + i * step, 6), round(start + (i + 1) * step, 6), texts[i]) for i in range(n)]


def kept(clips):
    return [c for c, reason, _ in clips if reason is None]


def reasons(clips):
    return [reason for _, reason, _ in clips]


# ------------------------------------------------------------------ A1 thresholds at their edges


def test_gap_of_exactly_three_seconds_does_not_split():
    a = speech(0, 40, 2)
    for gap, runs in ((3.0, 1), (3.001, 2)):
        b = speech(a[-1].end + gap, 40, 2)
        assert len(split_at_gaps(a + b, 3.0)) == runs


def test_duration_edges():
    assert reasons(cut_clips(speech(0, 30.0, 2), A1)) == [None]
    assert reasons(cut_clips(speech(0, 29.5, 2), A1)) == ["too_short"]


def test_speech_rate_edges():
    assert reasons(cut_clips(speech(0, 40, 1.0), A1)) == [None]
    assert reasons(cut_clips(speech(0, 40, 4.0), A1)) == [None]
    assert reasons(cut_clips(speech(0, 40, 0.975), A1)) == ["speech_rate"]  # 39 words
    assert reasons(cut_clips(speech(0, 40, 4.025), A1)) == ["speech_rate"]  # 161 words


def test_cut_at_240_seconds():
    exact = speech(0, 240, 1)
    assert [len(c) for c in kept(cut_clips(exact, A1))] == [240]  # ends exactly at 240 s: one clip
    long = speech(0, 600, 1)
    clips = cut_clips(long, A1)
    assert [len(c) for c, _, _ in clips] == [240, 240, 120]
    assert all(c[-1].end - c[0].start <= 240 for c, _, _ in clips)
    assert sum(len(c) for c, _, _ in clips) == len(long)  # nothing lost between pieces


def test_previous_context_is_the_asr_just_before():
    words = speech(0, 300, 1)
    clips = cut_clips(words, ClipRules(previous_words=3))
    assert clips[0][2] == "" and clips[1][2] == "w237 w238 w239"
    assert all(p == "" for _, _, p in cut_clips(words, B3))


def test_vocabulary_ignores_case_and_punctuation():
    assert vocabulary_size([Word(0, 1, "The"), Word(1, 2, "the,"), Word(2, 3, "dog's"), Word(3, 4, "Dog's!")]) == 2


# ------------------------------------------------------------------ B3 sentence rules


def sentences(start, specs):
    """Words for sentences given as (duration, n_words); each sentence "Xx w w ... w." at a steady pace."""
    words, t = [], start
    for duration, n in specs:
        step = duration / n
        texts = ["Start"] + ["w"] * (n - 2) + ["end."]
        words += [Word(round(t + i * step, 6), round(t + (i + 1) * step, 6), texts[i]) for i in range(n)]
        t += duration
    return words


def test_sft_clips_start_at_a_sentence_start_after_a_sentence_end():
    lead = speech(0, 10, 2, first="and")  # lower-case start: not a sentence start
    lead[-1] = Word(lead[-1].start, lead[-1].end, "so.")
    body = sentences(10, [(20, 40), (20, 40)])
    clips = cut_clips(lead + body, B3)
    assert reasons(clips) == ["not_sentence_start", None]
    clip = kept(clips)[0]
    assert clip[0].text == "Start" and clip[0].start == 10 and clip[-1].text == "end."
    # a capitalised word that does not follow a sentence end is not a start
    words = sentences(0, [(20, 40)]) + [Word(20.0, 20.5, "Then"), *speech(20.5, 20, 2, first="so")]
    words[39] = Word(words[39].start, words[39].end, "end")  # no full stop before "Then"
    assert [c[0].text for c in kept(cut_clips(words, B3))] == ["Start"]
    assert len(kept(cut_clips(words, B3))[0]) == len(words)


def test_sft_cuts_between_sentences_within_240_seconds():
    words = sentences(0, [(100, 200), (100, 200), (100, 200)])
    clips = cut_clips(words, B3)
    assert reasons(clips) == [None, None]
    assert [round(c[-1].end - c[0].start) for c in kept(clips)] == [200, 100]
    assert all(c[0].text == "Start" for c in kept(clips))
    assert reasons(cut_clips(sentences(0, [(250, 500)]), B3)) == ["sentence_too_long"]


# ------------------------------------------------------------------ stages, accounting, resume


def write_lines(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")
    return path


def vtt(words):
    def clock(t):
        return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:06.3f}"

    cues = [f"{clock(w.start)} --> {clock(w.end)}\n{w.text}\n" for w in words]
    return "WEBVTT\n\n" + "\n".join(cues)


def srt(words):
    def clock(t):
        return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{int(t % 60):02d},{round(t % 1 * 1000):03d}"

    return "\n".join(f"{i + 1}\n{clock(w.start)} --> {clock(w.end)}\n{w.text}\n" for i, w in enumerate(words))


@pytest.fixture
def manifest(tmp_path):
    talk = speech(0, 60, 2) + speech(70, 20, 2)  # a kept clip, then a short one after a 10 s gap
    (tmp_path / "a.vtt").write_text(vtt(talk))
    (tmp_path / "b.srt").write_text(srt(speech(5, 50, 2.5)))
    events = [{"tStartMs": int(w.start * 1000), "dDurationMs": int((w.end - w.start) * 1000),
               "segs": [{"utf8": w.text}]} for w in speech(0, 45, 3)]
    (tmp_path / "c.json3").write_text(json.dumps({"events": events}))
    (tmp_path / "d.json").write_text(json.dumps({"segments": [{"start": 0, "end": 40, "words": [
        {"word": w.text, "start": w.start, "end": w.end} for w in speech(0, 40, 1.5)]}]}))
    rows = [
        {"video": "a.mp4", "transcript": "a.vtt", "title": "A", "category": "Sports", "language": "en"},
        {"video": "b.mp4", "transcript": "b.srt", "category": "Sports", "language": "en"},
        {"video": "c.mp4", "transcript": "c.json3", "category": "Sports", "language": "en"},
        {"video": "d.mp4", "transcript": "d.json", "category": "Gaming", "language": "en"},  # category
        {"video": "e.mp4", "transcript": "missing.vtt", "category": "Sports", "language": "en"},  # failed
        '{"video": "f.mp4", "transcript": ',  # broken JSON: failed
        {"video": "g.mp4", "words": [[0, float("nan"), "x"]], "category": "Sports", "language": "en"},  # NaN
        {"video": "h.mp4", "words": [[float(i), i + 0.5, "w"] for i in range(10)], "category": "Sports",
         "language": "de"},  # language
        {"video": "i.mp4", "words": [[i * 0.1, i * 0.1 + 0.05, "w"] for i in range(10)], "category": "Sports",
         "language": "en"},  # too short
    ]
    return write_lines(tmp_path / "videos.jsonl", rows)


def read_jsonl(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def test_clip_stage_accounts_for_every_input(manifest, tmp_path):
    stage = ClipStage(ClipRules(), transcript_root=tmp_path, categories={"Sports"}, language="en")
    report = run_stage(stage, [manifest], tmp_path / "out", progress=False)
    assert report.inputs == 9 and report.balanced
    assert (report.kept, dict(report.dropped), dict(report.failed)) == (
        3, {"category": 1, "language": 1, "too_short": 1}, {"TranscriptError": 2, "JSONDecodeError": 1})
    paths = shard_paths(tmp_path / "out", "clips", 0, 1)
    lines = read_jsonl(paths["out"])
    offsets = lines.pop()  # the seek index
    records = [ClipRecord.from_messages(m) for m in lines]
    assert len(offsets) == len(records) == report.outputs == 3
    assert [r.video for r in records] == ["a.mp4", "b.mp4", "c.mp4"]
    assert records[0].video_start == 0 and math.isclose(records[0].video_end, 60)
    assert records[0].title == "A" and records[0].meta["category"] == "Sports" and records[0].meta["vocab"] == 120
    side = read_jsonl(paths["side"])
    # every input that is not kept, and the short clip cut from a.vtt, is on the side file with its reason
    assert sorted(r.get("reason") or r["error"].split(":")[0] for r in side) == sorted(
        ["too_short", "category", "language", "too_short", "TranscriptError", "TranscriptError",
         "JSONDecodeError"])
    assert all("input" in r for r in side)
    assert json.loads(paths["report"].read_text())["inputs"] == 9


def test_shards_partition_the_inputs(manifest, tmp_path):
    stage = ClipStage(ClipRules(), transcript_root=tmp_path)
    reports = [run_stage(stage, [manifest], tmp_path / "out", shard=i, num_shards=3, progress=False)
               for i in range(3)]
    assert [r.inputs for r in reports] == [3, 3, 3]
    whole = run_stage(stage, [manifest], tmp_path / "whole", progress=False)
    assert sum(r.outputs for r in reports) == whole.outputs and sum(r.kept for r in reports) == whole.kept


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_ray_engine_writes_what_the_local_engine_writes(ray_cluster, manifest, tmp_path):
    """Batches run on Ray actors (two workers, two batches in flight, one input per batch failing),
    from this process as a driver of the suite's cluster; outputs, side files and reports are byte
    for byte the local engine's."""
    pytest.importorskip("ray.data")
    import functools

    import ray

    from livecc.cli import main
    from livecc.data.pipeline.ray_engine import RayStage

    factory = functools.partial(ClipStage, ClipRules(), tmp_path, {"Sports"}, "en")
    ray.init(address=ray_cluster, log_to_driver=False, configure_logging=False)
    try:
        remote = run_stage(RayStage("clips", factory, window=2, workers=2, num_cpus=0.5), [manifest],
                           tmp_path / "ray", batch_size=2, progress=False)
        assert main(["data", "clips", str(manifest), "--out", str(tmp_path / "cli"), "--transcript-root",
                     str(tmp_path), "--categories", "Sports", "--language", "en", "--batch-size", "2", "--quiet",
                     "--engine", "ray", "--ray-workers", "1", "--ray-cpus", "0.5", "--allow-failures"]) == 0
    finally:
        ray.shutdown()
    local = run_stage(factory(), [manifest], tmp_path / "local", batch_size=2, progress=False)
    assert remote.to_dict() == local.to_dict() and remote.balanced and remote.failed
    for kind in ("out", "side", "report"):
        expected = shard_paths(tmp_path / "local", "clips", 0, 1)[kind].read_bytes()
        assert shard_paths(tmp_path / "ray", "clips", 0, 1)[kind].read_bytes() == expected, kind
        assert shard_paths(tmp_path / "cli", "clips", 0, 1)[kind].read_bytes() == expected, kind


def test_rank_keeps_the_largest_vocabularies_with_ties_broken_by_the_clip(tmp_path):
    def clip(i, vocab):
        words = [Word(float(k), k + 0.5, f"v{k % vocab}") for k in range(40)]
        return ClipRecord(f"{i}.mp4", 0.0, 40.0, words, meta={"vocab": vocab}).to_messages()

    vocabs = [5, 9, 7, 9, 3, 7, 7]
    path = write_lines(tmp_path / "clips.jsonl", [clip(i, v) for i, v in enumerate(vocabs)] + [[0, 10, 20]])
    report = run_stage(RankStage(rank_threshold([path], 4)), [path], tmp_path / "out", progress=False)
    kept_videos = [ClipRecord.from_messages(m).video for m in read_jsonl(shard_paths(tmp_path / "out", "rank", 0, 1)
                                                                             ["out"])[:-1]]
    assert kept_videos == ["1.mp4", "2.mp4", "3.mp4", "5.mp4"]  # 9, 9, then the first two 7s
    assert report.balanced and report.dropped["rank"] == 3
    assert rank_threshold([path], 100) == (-1, None)  # fewer clips than asked: keep all


def test_rank_keeps_the_same_clips_however_the_clips_were_sharded(tmp_path):
    """Clips cut in 3 shards and in 1 are read in other orders; with ties at the cut, rank keeps
    the same clips from both, and a line nested too deep for the parser is a failed item."""
    rows = [{"video": f"v{i:03d}.mp4", "words": [list(w) for w in speech(0, 30, 1, [f"w{k % 8}" for k in range(30)])]}
            for i in range(12)]  # every clip: vocabulary 8, all tied
    manifest = write_lines(tmp_path / "videos.jsonl", rows)
    for n in (1, 3):
        for i in range(n):
            run_stage(ClipStage(), [manifest], tmp_path / f"clips{n}", shard=i, num_shards=n, progress=False)
    kept = {}
    for n in (1, 3):
        inputs = sorted((tmp_path / f"clips{n}").glob("clips.*-of-*.jsonl"))
        deep = write_lines(tmp_path / f"deep{n}.jsonl", ["[" * 50_000])
        report = run_stage(RankStage(rank_threshold([*inputs, deep], 4)), [*inputs, deep], tmp_path / f"rank{n}",
                           progress=False)
        assert report.failed == {"RecursionError": 1}
        kept[n] = [ClipRecord.from_messages(m).video for m in read_jsonl(
            shard_paths(tmp_path / f"rank{n}", "rank", 0, 1)["out"])[:-1]]
    assert kept[1] == ["v000.mp4", "v001.mp4", "v002.mp4", "v003.mp4"] and sorted(kept[3]) == kept[1]


SLOW_STAGE = '''
import time
from livecc.data.pipeline import ClipRules, ClipStage

class SlowClips(ClipStage):
    def process(self, items):
        time.sleep(0.05)
        return super().process(items)
'''


def test_a_killed_run_resumes_to_the_uninterrupted_output(tmp_path):
    videos = []
    for i in range(120):
        words = speech(i, 30 + i % 7, 1 + i % 4) + speech(100 + i, 31 + i % 5, 2)
        videos.append({"video": f"{i}.mp4", "words": [list(w) for w in words]})
    manifest = write_lines(tmp_path / "videos.jsonl", videos[:50] + ["{broken"] + videos[50:])
    (tmp_path / "slowstage.py").write_text(SLOW_STAGE)
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from slowstage import SlowClips; "
            f"from livecc.data.pipeline import run_stage; "
            f"run_stage(SlowClips(), [{str(manifest)!r}], {str(tmp_path / 'killed')!r}, batch_size=3, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    progress = shard_paths(tmp_path / "killed", "clips", 0, 1)["progress"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if progress.is_file() and json.loads(progress.read_text())["consumed"] >= 30:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads(progress.read_text())
    assert not state["done"] and 30 <= state["consumed"] < 121, state["consumed"]

    resumed = run_stage(ClipStage(), [manifest], tmp_path / "killed", batch_size=3, progress=False)
    whole = run_stage(ClipStage(), [manifest], tmp_path / "whole", batch_size=3, progress=False)
    assert resumed.to_dict() == whole.to_dict() and whole.inputs == 121 and whole.failed["JSONDecodeError"] == 1
    for kind in ("out", "side", "report"):
        a, b = (shard_paths(tmp_path / d, "clips", 0, 1)[kind].read_bytes() for d in ("killed", "whole"))
        assert a == b, kind
    again = run_stage(ClipStage(), [manifest], tmp_path / "whole", progress=False)  # complete: nothing redone
    assert again.to_dict() == whole.to_dict()


def test_a_stage_error_on_one_item_fails_only_that_item(tmp_path):
    class Fragile:
        name = "fragile"

        def process(self, items):
            from livecc.data.pipeline import Outcome

            if any(value.get("bad") for _, value in items):
                raise RuntimeError("boom")
            return [Outcome(kept=[value]) for _, value in items]

    path = write_lines(tmp_path / "in.jsonl", [{"i": 0}, {"i": 1, "bad": True}, {"i": 2}])
    report = run_stage(Fragile(), [path], tmp_path / "out", batch_size=8, seek_index=False, progress=False)
    assert (report.kept, dict(report.failed)) == (2, {"RuntimeError": 1})


def test_cli_clips_and_rank(manifest, tmp_path, capsys):
    from livecc.cli import main

    args = ["data", "clips", str(manifest), "--out", str(tmp_path / "c"), "--transcript-root", str(tmp_path),
            "--quiet"]
    assert main(args) == 3  # three inputs failed: the exit status says so
    assert "9 in = 4 kept" in capsys.readouterr().out
    assert main([*args, "--allow-failures"]) == 0  # a rerun retries the three once; they fail again
    assert "9 in = 4 kept + 2 dropped (too_short 2) + 3 failed" in capsys.readouterr().out
    clips = shard_paths(tmp_path / "c", "clips", 0, 1)["out"]
    assert main(["data", "rank", str(clips), "--top", "2", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert "4 in = 2 kept + 2 dropped (rank 2)" in capsys.readouterr().out


# ------------------------------------------------------------------ model-backed stages


@pytest.fixture(scope="module")
def causal_lm_dir(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from livecc.qwen_vl import offline_processor

    path = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(path)
    offline_processor().tokenizer.save_pretrained(path)
    return path


def clip_records(n, seed):
    g = torch.Generator().manual_seed(seed)
    vocab = ["the", "ball", "goes", "left", "and", "he", "shoots", "score", "wow", "nice", "pass", "red"]
    out = []
    for i in range(n):
        k = int(torch.randint(5, 30, (1,), generator=g))
        words = [Word(float(j), j + 0.5, vocab[int(torch.randint(0, len(vocab), (1,), generator=g))])
                 for j in range(k)]
        out.append(ClipRecord(f"{i}.mp4", 0.0, float(k), words).to_messages())
    return out


def test_lm_filter_batched_losses_equal_one_by_one(causal_lm_dir, tmp_path):
    from livecc.data.pipeline import LMFilterStage, clip_text_losses

    stage = LMFilterStage(causal_lm_dir, keep=(0.0, 100.0))
    texts = [" ".join(w.text for w in ClipRecord.from_messages(r).words) for r in clip_records(5, seed=1)]
    batched = clip_text_losses(stage.model, stage.tokenizer, texts)
    alone = [clip_text_losses(stage.model, stage.tokenizer, [t])[0] for t in texts]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(alone), rtol=1e-5, atol=1e-5)
    assert all(11.0 < loss < 13.0 for loss in batched)  # a random LM: about ln(151936) = 11.9

    ordered = sorted(batched)
    stage.low, stage.high = (ordered[0] + ordered[1]) / 2, (ordered[-2] + ordered[-1]) / 2
    path = write_lines(tmp_path / "clips.jsonl", clip_records(5, seed=1) + ["[not json"])
    report = run_stage(stage, [path], tmp_path / "out", batch_size=4, progress=False)
    assert (report.kept, dict(report.dropped), dict(report.failed)) == (
        3, {"lm_loss_low": 1, "lm_loss_high": 1}, {"JSONDecodeError": 1})
    losses = [ClipRecord.from_messages(m).meta["lm_loss"] for m in read_jsonl(
        shard_paths(tmp_path / "out", "lm-filter", 0, 1)["out"])[:-1]]
    assert all(stage.low <= x <= stage.high for x in losses) and len(losses) == 3


def test_talking_head_with_a_tiny_qwen_vl(tmp_path, processor):
    from livecc.data.pipeline import TalkingHeadStage, load_scorer
    from livecc.data.records import RecordWriter
    from livecc.data.synth import synthesize_clip
    from livecc.models import tiny_qwen_vl

    model_dir = tmp_path / "vlm"
    tiny_qwen_vl(seed=0).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    scorer = load_scorer("qwen-vl", str(model_dir))
    with RecordWriter(tmp_path / "clips.jsonl", with_seeks=False) as w:
        w.write(synthesize_clip(tmp_path, "a", seed=0, duration=6.0))
        w.write(synthesize_clip(tmp_path, "b", seed=1, duration=6.0))
        w.write(ClipRecord("missing.mp4", 0.0, 5.0, [Word(1, 2, "x")]))
        w.write(ClipRecord("b.mp4", 0.0, 5.0, [Word(1, 2, "x")], meta={"active_speaker_ratio": 0.04}))
        w.write(ClipRecord("b.mp4", 0.0, 5.0, [Word(1, 2, "x")], meta={"active_speaker_ratio": 0.2}))
    record = ClipRecord.from_messages(read_jsonl(tmp_path / "clips.jsonl")[0])
    from livecc.data.pipeline.talking_head import sample_frames

    frames = sample_frames(tmp_path / record.video, record.video_start, record.video_end)
    assert frames.shape[0] == 8
    score = scorer(frames)
    assert 0.0 < score < 1.0
    report = run_stage(TalkingHeadStage(scorer, tmp_path, threshold=score + 1e-3), [tmp_path / "clips.jsonl"],
                       tmp_path / "out", progress=False)
    assert report.balanced and report.inputs == 5 and report.failed["FileNotFoundError"] == 1
    assert report.dropped["active_speaker"] == 1 and report.kept + report.dropped["talking_head"] == 3
    kept = [ClipRecord.from_messages(m) for m in read_jsonl(shard_paths(tmp_path / "out", "talking-head", 0, 1)
                                                                ["out"])[:-1]]
    assert kept[0].meta["talking_head"] == round(score, 4)


# ------------------------------------------------------------------ prompts over a real HTTP server


@pytest.fixture
def chat_server():
    import http.server
    import threading

    state = {"fail_first": 0, "calls": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["calls"] += 1
            prompt = body["messages"][0]["content"]
            if state["calls"] <= state["fail_first"]:
                self.send_response(503)
                self.end_headers()
                return
            if "poison" in prompt:
                self.send_response(400)
                self.end_headers()
                return
            title = prompt.split("Title: ")[1].split("\n")[0]
            payload = {"choices": [{"message": {"role": "assistant", "content": f'"Comment on {title}"'}}]}
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()


def test_prompts_through_a_server_that_fails_and_recovers(chat_server, tmp_path):
    from livecc.chat import ChatClient
    from livecc.data.pipeline import PromptStage

    url, state = chat_server
    state["fail_first"] = 3
    records = [ClipRecord(f"{i}.mp4", 0.0, 5.0, [Word(1, 2, "poison" if i == 2 else "hello")], title=f"match {i}",
                          meta={"category": "Sports"}).to_messages() for i in range(6)]
    path = write_lines(tmp_path / "clips.jsonl", records)
    client = ChatClient(url, "judge", "key", backoff=0.01, max_retries=4)
    report = run_stage(PromptStage(client, concurrency=3), [path], tmp_path / "out", batch_size=4, progress=False)
    assert (report.kept, dict(report.failed)) == (5, {"ChatError": 1})
    assert client.retries >= 3
    out = [ClipRecord.from_messages(m) for m in read_jsonl(shard_paths(tmp_path / "out", "prompts", 0, 1)["out"])[:-1]]
    assert [r.query for r in out] == [f"Comment on match {i}" for i in (0, 1, 3, 4, 5)]


def test_another_shard_count_is_refused_and_overwrite_replaces_the_old_set(manifest, tmp_path):
    """Rerunning a stage with another --num-shards would leave the old shards beside the new (the
    glob STAGE.*.jsonl would read both): refused; with overwrite the old set goes."""
    from livecc.data.pipeline.runner import StageMismatchError

    stage = ClipStage(ClipRules(), transcript_root=tmp_path)
    for i in range(3):
        run_stage(stage, [manifest], tmp_path / "out", shard=i, num_shards=3, progress=False)
    with pytest.raises(StageMismatchError, match="outputs of 3 shards, not 2"):
        run_stage(stage, [manifest], tmp_path / "out", shard=0, num_shards=2, progress=False)
    for i in range(2):
        run_stage(stage, [manifest], tmp_path / "out", shard=i, num_shards=2, progress=False, overwrite=i == 0)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names and all("-of-00002" in n for n in names)
    whole = run_stage(stage, [manifest], tmp_path / "whole", progress=False)
    assert sum(len(read_jsonl(p)) - 1 for p in (tmp_path / "out").glob("clips.*.jsonl")) == whole.outputs


def test_concatenated_outputs_read_as_every_record(manifest, tmp_path):
    """Each shard's file ends with its own seek line; concatenated, every record is read (by
    scanning: the last seek line does not index the whole file) and no seek line is a record."""
    from livecc.data.records import SeekableRecords, read_records

    stage = ClipStage(ClipRules(), transcript_root=tmp_path)
    for i in range(3):
        run_stage(stage, [manifest], tmp_path / "out", shard=i, num_shards=3, progress=False)
    shards = sorted((tmp_path / "out").glob("clips.*-of-00003.jsonl"))
    joined = tmp_path / "all.jsonl"
    joined.write_bytes(b"".join(p.read_bytes() for p in shards))
    expected = [r for p in shards for r in read_records(p)]
    assert len(expected) >= 3 and list(read_records(joined)) == expected
    seekable = SeekableRecords(joined)
    assert len(seekable) == len(expected) and [seekable[i] for i in range(len(seekable))] == expected
    report = run_stage(RankStage(rank_threshold([joined], 100)), [joined], tmp_path / "ranked", progress=False)
    assert report.inputs == len(expected) and not report.failed
