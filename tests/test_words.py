import json
import math

import pytest

from livecc.data.words import (
    TranscriptError,
    Word,
    load_words,
    parse_json3,
    parse_srt,
    parse_vtt,
    parse_whisper_json,
    split_evenly,
)


def approx_words(words, expected):
    assert [w.text for w in words] == [e[2] for e in expected]
    for w, (s, e, _) in zip(words, expected):
        assert w.start == pytest.approx(s) and w.end == pytest.approx(e)


def test_split_evenly_shares_the_span():
    expected = [(1.0, 1.5, "all"), (1.5, 2.0, "right"), (2.0, 2.5, "now")]
    approx_words(split_evenly(1.0, 2.5, " all right  now "), expected)
    assert split_evenly(0, 1, "   ") == []


def test_json3_asr_word_offsets_and_manual_segments():
    data = {
        "wireMagic": "pb3",
        "events": [
            {"tStartMs": 0, "dDurationMs": 5000, "id": 1, "wpWinPosId": 1},  # window definition, no segs
            {"tStartMs": 1000, "dDurationMs": 2000, "wWinId": 1,
             "segs": [{"utf8": "all", "acAsrConf": 0}, {"utf8": " right", "tOffsetMs": 400},
                      {"utf8": " so", "tOffsetMs": 900}]},
            {"tStartMs": 2990, "dDurationMs": 10, "aAppend": 1, "segs": [{"utf8": "\n"}]},
            {"tStartMs": 4000, "dDurationMs": 1000, "segs": [{"utf8": "Manual caption here"}]},
        ],
    }
    approx_words(parse_json3(data), [
        (1.0, 1.4, "all"), (1.4, 1.9, "right"), (1.9, 3.0, "so"),
        (4.0, 4.0 + 1 / 3, "Manual"), (4.0 + 1 / 3, 4.0 + 2 / 3, "caption"), (4.0 + 2 / 3, 5.0, "here"),
    ])


def test_json3_malformed():
    with pytest.raises(TranscriptError, match="events"):
        parse_json3({"foo": 1}, "x.json3")
    with pytest.raises(TranscriptError, match="event 0.*tStartMs"):
        parse_json3({"events": [{"segs": [{"utf8": "hi"}]}]}, "x.json3")


YOUTUBE_VTT = """WEBVTT
Kind: captions
Language: en

00:00:00.160 --> 00:00:02.350 align:start position:0%
<SP>
all<00:00:00.480><c> right</c><00:00:00.960><c> so</c>

00:00:02.350 --> 00:00:02.360 align:start position:0%
all right so
<SP>

00:00:02.360 --> 00:00:05.000 align:start position:0%
all right so
today<00:00:02.800><c> we&amp;you</c>
""".replace("<SP>", " ")  # YouTube puts one-space lines inside cues


def test_vtt_youtube_inline_times_skip_rolling_repeats():
    approx_words(parse_vtt(YOUTUBE_VTT), [
        (0.16, 0.48, "all"), (0.48, 0.96, "right"), (0.96, 2.35, "so"),
        (2.36, 2.8, "today"), (2.8, 5.0, "we&you"),
    ])


def test_vtt_plain_cues_split_evenly_and_strip_tags():
    text = "WEBVTT\n\n1\n00:01.000 --> 00:03.000\n<v Anna>Hello <i>there</i>\n\n01:00:00.000 --> 01:00:01.000\nbye\n"
    approx_words(parse_vtt(text), [(1.0, 2.0, "Hello"), (2.0, 3.0, "there"), (3600.0, 3601.0, "bye")])


def test_vtt_malformed():
    with pytest.raises(TranscriptError, match="WEBVTT"):
        parse_vtt("00:00.000 --> 00:01.000\nhi\n", "a.vtt")
    with pytest.raises(TranscriptError, match="start after end"):
        parse_vtt("WEBVTT\n\n00:00:05.000 --> 00:00:01.000\nhi\n", "a.vtt")


def test_srt_cues_and_errors():
    text = "1\n00:00:01,000 --> 00:00:02,000\nHello world\n\n2\n00:00:02,500 --> 00:00:03,000\n<b>again</b>\n"
    approx_words(parse_srt(text), [(1.0, 1.5, "Hello"), (1.5, 2.0, "world"), (2.5, 3.0, "again")])
    with pytest.raises(TranscriptError, match="b.srt: line 1: not an SRT cue"):
        parse_srt("just text\n", "b.srt")
    assert parse_srt("\n\n", "b.srt") == []
    with pytest.raises(TranscriptError, match="starts before the previous"):
        parse_srt("1\n00:00:05,000 --> 00:00:06,000\nlate\n\n2\n00:00:01,000 --> 00:00:02,000\nearly\n", "b.srt")


def test_whisperx_words_with_unaligned_entries():
    data = {"segments": [
        {"start": 0.0, "end": 2.0, "text": " Hello 42 world", "words": [
            {"word": "Hello", "start": 0.1, "end": 0.5, "score": 0.9},
            {"word": "42"},  # WhisperX cannot align numbers
            {"word": "world", "start": 1.5, "end": 1.9, "score": 0.8}]},
        {"start": 3.0, "end": 4.0, "text": " two words"},
    ], "word_segments": []}
    approx_words(parse_whisper_json(data), [
        (0.1, 0.5, "Hello"), (0.5, 1.5, "42"), (1.5, 1.9, "world"), (3.0, 3.5, "two"), (3.5, 4.0, "words")])


def test_faster_whisper_bare_list():
    data = [{"start": 0.0, "end": 1.0, "text": "hi", "words": [{"word": " hi", "start": 0.0, "end": 0.4}]}]
    approx_words(parse_whisper_json(data), [(0.0, 0.4, "hi")])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_times_name_file_and_entry(tmp_path, bad):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"segments": [{"start": 0, "end": 2, "words": [
        {"word": "ok", "start": 0.0, "end": 0.5}, {"word": "bad", "start": bad, "end": 1.0}]}]}))
    with pytest.raises(TranscriptError) as err:
        load_words(path)
    assert str(path) in str(err.value) and "'bad'" in str(err.value)


def test_load_words_dispatch_and_broken_files(tmp_path):
    (tmp_path / "a.vtt").write_text(YOUTUBE_VTT)
    json3 = {"events": [{"tStartMs": 0, "dDurationMs": 1000, "segs": [{"utf8": "x"}]}]}
    (tmp_path / "a.json3").write_text(json.dumps(json3))
    (tmp_path / "broken.json").write_text('{"segments": [')
    (tmp_path / "a.txt").write_text("hello")
    assert len(load_words(tmp_path / "a.vtt")) == 5
    assert load_words(tmp_path / "a.json3") == [Word(0.0, 1.0, "x")]
    with pytest.raises(TranscriptError, match=r"broken\.json: broken JSON"):
        load_words(tmp_path / "broken.json")
    with pytest.raises(TranscriptError, match="unknown transcript format"):
        load_words(tmp_path / "a.txt")
    with pytest.raises(TranscriptError, match="not found"):
        load_words(tmp_path / "missing.srt")
    assert all(math.isfinite(w.start) for w in load_words(tmp_path / "a.vtt"))
