"""The ASR stage, from raw video to a streaming training sample: videos whose audio is known speech
(espeak-ng) at known times, heard by the embedded engine (PocketSphinx with the clips' vocabulary),
words timed on the video's own clock, then ``data clips`` and a training sample."""

import json
import shutil
import subprocess
import wave

import numpy as np
import pytest

pytest.importorskip("pocketsphinx", reason="pocketsphinx is part of the dev extra (make setup installs it)")

from livecc.cli import main  # noqa: E402
from livecc.data.audio import RATE, cut_at_silences, read_audio  # noqa: E402
from livecc.data.pipeline import shard_paths  # noqa: E402
from livecc.data.synth import speak  # noqa: E402

# four three-word phrases at 1, 3, 5 and 7 s, as a commentator of the demo's shapes would say them
PHRASES = [(1.0, "red circle enters"), (3.0, "green square leaves"), (5.0, "blue triangle enters"),
           (7.0, "yellow diamond leaves")]
VOCABULARY = "red green blue yellow circle square triangle diamond enters leaves"


def speech_video(path, seconds=9.0, audio_delay=0.0, options=()) -> list[tuple[float, float, list[str]]]:
    """A video of ``seconds`` whose audio track holds :data:`PHRASES` (starting ``audio_delay`` after
    its frames); the phrases' spans on the video's clock and their words."""
    if shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None:
        pytest.skip("ffmpeg and espeak-ng are needed (make setup installs them)")
    audio, spans = np.zeros(int(seconds * RATE), dtype=np.int16), []
    for t, text in PHRASES:
        said = (speak(text) * 32767).astype(np.int16)
        audio[int(t * RATE): int(t * RATE) + len(said)] = said[: len(audio) - int(t * RATE)]
        spans.append((t + audio_delay, t + audio_delay + len(said) / RATE, text.split()))
    wav = path.with_suffix(".wav")
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE), w.writeframes(audio.tobytes())
    frames = np.full((int((seconds + audio_delay) * 10), 32, 32, 3), 90, dtype=np.uint8)  # frames to the last word
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "32x32", "-r", "10",
                    "-i", "-", "-itsoffset", str(audio_delay), "-i", str(wav), "-c:v", "libx264", "-pix_fmt",
                    "yuv420p", "-c:a", "aac", *options, str(path)], input=frames.tobytes(), check=True)
    return spans


def word_errors(heard: list[list], spans) -> tuple[int, int]:
    """``(errors, words said)``: per phrase, the edit distance between the words said and the words
    heard within its span (0.3 s either side); words heard outside every span are errors too."""
    errors, used = 0, set()
    for start, end, truth in spans:
        got = [w for i, (s, e, w) in enumerate(heard) if start - 0.3 <= s and e <= end + 0.3 and not used.add(i)]
        d = np.arange(len(got) + 1)
        for a in truth:  # Levenshtein, row by row
            prev, d[0] = d.copy(), d[0] + 1
            for j, b in enumerate(got, 1):
                d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (a != b))
        errors += int(d[-1])
    return errors + len(heard) - len(used), sum(len(t) for _, _, t in spans)


@pytest.mark.parametrize("delay, options", [(0.0, ()), (1.0, ()), (0.0, ("-output_ts_offset", "3.3"))],
                         ids=["mp4", "audio-a-second-late", "video-starting-at-3.3s"])
def test_raw_video_to_words_to_clips_to_a_training_sample(processor, tmp_path, delay, options):
    """Heard with the clips' vocabulary: word error rate at most 1 in 4, every word heard within its
    phrase's span on the video's clock (its audio starting late, or the whole file after 0); then
    ``data clips`` cuts a clip and it becomes a streaming training sample whose labels hold them."""
    from livecc.data.records import ClipRecord, read_records
    from livecc.data.sequence import build_streaming_sample

    suffix = ".mkv" if options else ".mp4"
    spans = speech_video(tmp_path / f"talk{suffix}", audio_delay=delay, options=list(options))
    (tmp_path / "videos.jsonl").write_text(json.dumps({"video": f"talk{suffix}", "title": "shapes"}) + "\n")
    (tmp_path / "vocabulary.txt").write_text(VOCABULARY + "\n")
    assert main(["data", "asr", str(tmp_path / "videos.jsonl"), "--out", str(tmp_path / "asr"), "--video-root",
                 str(tmp_path), "--vocabulary", str(tmp_path / "vocabulary.txt"), "--quiet"]) == 0
    (out,) = read_records(shard_paths(tmp_path / "asr", "asr", 0, 1)["out"])
    assert out["video"] == f"talk{suffix}" and out["title"] == "shapes" and out["language"] == "en"
    errors, said = word_errors(out["words"], spans)
    print(f"heard {len(out['words'])} words, {errors} errors of {said}: {out['words']}")
    assert errors / said <= 0.25
    assert main(["data", "clips", str(shard_paths(tmp_path / "asr", "asr", 0, 1)["out"]), "--out",
                 str(tmp_path / "clips"), "--min-duration", "2", "--video-root", str(tmp_path), "--quiet"]) == 0
    (clip,) = read_records(shard_paths(tmp_path / "clips", "clips", 0, 1)["out"])
    record = ClipRecord.from_messages(clip)
    sample = build_streaming_sample(record, processor, video_root=tmp_path)
    labelled = processor.tokenizer.decode(sample.input_ids[sample.labels != -100])
    assert sum(w in labelled for _, _, truth in spans for w in truth) >= said - errors


def test_silent_missing_and_broken_videos_are_counted_and_named(tmp_path):
    """A video without speech is dropped as silent; a missing file and a file that is not a video
    fail with their names; the rest of the batch goes on and the exit status says items failed."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (make setup installs it)")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=32x32:d=2", "-f", "lavfi",
                    "-i", "anullsrc=r=16000:cl=mono", "-t", "2", "-c:v", "libx264", "-c:a", "aac",
                    str(tmp_path / "quiet.mp4")], check=True)
    (tmp_path / "notes.mp4").write_text("not a video")
    rows = [{"video": "quiet.mp4"}, {"video": "gone.mp4"}, {"video": "notes.mp4"}, "[broken"]
    (tmp_path / "videos.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    code = main(["data", "asr", str(tmp_path / "videos.jsonl"), "--out", str(tmp_path / "asr"), "--video-root",
                 str(tmp_path), "--quiet"])
    paths = shard_paths(tmp_path / "asr", "asr", 0, 1)
    report = json.loads(paths["report"].read_text())
    assert code == 3 and report["inputs"] == 4 and report["dropped"] == {"silent": 1} and report["kept"] == 0
    side = paths["side"].read_text()
    assert "gone.mp4" in side and "notes.mp4" in side


def test_long_audio_is_cut_at_its_silences():
    """Chunks of at most the limit, each cut in the quietest 20 ms of the few seconds before it."""
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(RATE * 70) * 0.3).astype(np.float32)
    for pause in (27.0, 55.5):  # the pauses between words
        samples[int(pause * RATE): int((pause + 0.1) * RATE)] = 0
    cuts = cut_at_silences(samples, chunk_s=30.0)
    assert cuts[0][0] == 0 and cuts[-1][1] == len(samples) and all(b == c for (_, b), (c, _) in zip(cuts, cuts[1:]))
    assert [round(b / RATE, 1) for _, b in cuts[:-1]] == [27.0, 55.5]
    assert all(e - b <= 30 * RATE for b, e in cuts)


def test_a_video_without_audio_names_itself(tmp_path):
    from livecc.data.audio import AudioError

    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=32x32:d=1", "-c:v", "libx264",
                    str(tmp_path / "mute.mp4")], check=True)
    with pytest.raises(AudioError, match="mute.mp4: no audio stream"):
        read_audio(tmp_path / "mute.mp4")


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """A random tiny multilingual Whisper (English and German) with a byte-level tokenizer of its
    own, its word times from both heads of its one decoder layer, saved as a checkpoint directory."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    out = tmp_path_factory.mktemp("whisper")
    (out / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(bytes_to_unicode().values())}))
    (out / "merges.txt").write_text("#version: 0.2\n")
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
                *(f"<|{i * 0.02:.2f}|>" for i in range(1501))]
    end = "<|endoftext|>"
    tokenizer = WhisperTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), unk_token=end, bos_token=end,
                                 eos_token=end, pad_token=end)
    tokenizer.add_tokens(specials, special_tokens=True)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(out)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials[:10]}
    special = dict(decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids[end], pad_token_id=ids[end],
                   bos_token_id=ids[end])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, **special))
    model.generation_config = GenerationConfig(
        **special, is_multilingual=True, lang_to_id={"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50, alignment_heads=[[0, 0], [0, 1]], max_length=40)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_ctranslate2_whisper(tiny_whisper, tmp_path_factory):
    """The same checkpoint converted for faster-whisper (CTranslate2), as ``large-v3-turbo`` is."""
    converters = pytest.importorskip("ctranslate2.converters", reason="faster-whisper is part of the dev extra")
    out = tmp_path_factory.mktemp("ct2") / "model"
    converters.TransformersConverter(str(tiny_whisper), copy_files=["tokenizer.json"]).convert(str(out))
    return out


@pytest.mark.parametrize("engine", ["whisper", "faster-whisper"])
def test_the_whisper_engines_hear_in_chunks_with_their_language(request, tmp_path, engine):
    """The plumbing of the Whisper engines on a random tiny checkpoint: 70 s of audio heard in three
    chunks cut at its pauses, each chunk's words moved to its place on the clock, the language
    detected with its probability; the record is what ``data clips`` reads, and it reads the same
    words from it as from the same words written as WhisperX JSON."""
    from livecc.data.pipeline import AsrStage, ClipRules, ClipStage, load_engine
    from livecc.data.words import Word

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (make setup installs it)")
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(RATE * 70) * 3000).astype(np.int16)
    for pause in (28.0, 57.0):
        samples[int(pause * RATE): int((pause + 0.2) * RATE)] = 0
    with wave.open(str(tmp_path / "noise.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE), w.writeframes(samples.tobytes())
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=32x32:d=73", "-itsoffset", "2",
                    "-i", str(tmp_path / "noise.wav"), "-c:v", "libx264", "-c:a", "aac", str(tmp_path / "v.mp4")],
                   check=True)
    model = request.getfixturevalue("tiny_whisper" if engine == "whisper" else "tiny_ctranslate2_whisper")
    stage = AsrStage(load_engine(engine, str(model), vocabulary=["red", "circle"]), video_root=tmp_path)
    (outcome,) = stage.process([(0, {"video": "v.mp4"})])
    assert outcome.error is None, outcome.error
    (record,) = outcome.kept
    words = [Word(*w) for w in record["words"]]
    assert record["language"] in ("en", "de") and 0 < record["language_score"] <= 1 and words
    assert all(1.9 <= w.start <= w.end <= 72.1 for w in words)  # the audio starts 2 s into the video
    assert any(w.start >= 2.0 + 28.0 for w in words)  # heard in a later chunk, placed after the first cut
    assert stage.audio_seconds == pytest.approx(70, abs=0.1) and "audio hours an hour" in stage.summary()
    inline = {"video": "v.mp4", "words": record["words"], "language": record["language"]}
    whisperx = {"segments": [{"start": words[0].start, "end": words[-1].end,
                              "words": [{"word": w.text, "start": w.start, "end": w.end} for w in words]}]}
    (tmp_path / "v.json").write_text(json.dumps(whisperx))
    rules = ClipRules(min_duration=0.1, max_rate=1000, min_rate=0)
    clips = ClipStage(rules, transcript_root=tmp_path)
    from_inline = clips.process([(0, inline)])[0]
    from_json = clips.process([(0, {"video": "v.mp4", "transcript": "v.json", "language": record["language"]})])[0]
    assert from_inline.error is None and from_inline.kept + from_inline.dropped
    assert from_inline.kept == from_json.kept and from_inline.dropped == from_json.dropped
