import json

import pytest

from livecc.data.records import ClipRecord, RecordError, RecordWriter, SeekableRecords, read_records
from livecc.data.words import Word

LIVE_CC_LINE = [
    {"role": "user", "content": [
        {"type": "video", "video": "video/youtube/-4dnPeRv1ns.mp4", "video_start": 16.8, "video_end": 158.8},
        {"type": "text", "text": "", "previous": "", "title": "Airsoft G&G Combat Machine M4 Review"}]},
    {"role": "assistant", "content": [
        {"type": "text_stream", "text_stream": [[16.8, 16.9, "all"], [16.9, 17.0, "right"]]}]},
]


def test_record_round_trip_keeps_every_field():
    messages = json.loads(json.dumps(LIVE_CC_LINE))
    messages[0]["content"][1]["category"] = "Gaming"
    record = ClipRecord.from_messages(messages)
    assert record.video_start == 16.8 and record.words == [Word(16.8, 16.9, "all"), Word(16.9, 17.0, "right")]
    assert record.title.startswith("Airsoft") and record.meta == {"category": "Gaming"}
    assert record.to_messages() == messages


def test_writer_seek_line_and_random_access(tmp_path):
    path = tmp_path / "clips_with_seeks.jsonl"
    records = []
    for i in range(5):
        r = ClipRecord.from_messages(LIVE_CC_LINE)
        r.title = f"clip {i} \u00e9"  # non-ASCII: offsets are bytes, not characters
        records.append(r)
    with RecordWriter(path) as writer:
        for r in records:
            writer.write(r)
    lines = path.read_bytes().splitlines()
    assert len(lines) == 6 and json.loads(lines[-1])[0] == 0
    dataset = SeekableRecords(path)
    assert len(dataset) == 5
    assert [dataset.record(i).title for i in (4, 0, 2)] == ["clip 4 \u00e9", "clip 0 \u00e9", "clip 2 \u00e9"]
    assert dataset.record(-1).title == "clip 4 \u00e9"
    assert len(list(read_records(path))) == 5
    with pytest.raises(IndexError, match="out of range"):
        dataset[5]


def test_file_without_seek_line_is_indexed_by_scanning(tmp_path):
    path = tmp_path / "plain.jsonl"
    with RecordWriter(path, with_seeks=False) as writer:
        for _ in range(3):
            writer.write(LIVE_CC_LINE)
    assert len(SeekableRecords(path)) == 3


def test_empty_dataset_with_seek_line(tmp_path):
    path = tmp_path / "empty.jsonl"
    RecordWriter(path).close()
    assert len(SeekableRecords(path)) == 0 and list(read_records(path)) == []


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m[1]["content"][0].pop("text_stream"), "text_stream must be a list"),
    (lambda m: m[1]["content"][0]["text_stream"].append([17.0, float("nan"), "x"]), "not finite"),
    (lambda m: m[0]["content"][0].update(video_end=10.0), "empty clip"),
    (lambda m: m[0]["content"][0].update(video_start=float("nan")), "video_start is not a finite"),
    (lambda m: m.pop(), "not a Live-CC streaming record"),
])
def test_malformed_records_name_the_source(mutate, message):
    messages = json.loads(json.dumps(LIVE_CC_LINE))
    mutate(messages)
    with pytest.raises(RecordError, match=message) as err:
        ClipRecord.from_messages(messages, "data.jsonl: record 7")
    assert "data.jsonl: record 7" in str(err.value)


def test_broken_json_line_is_reported_with_its_index(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(LIVE_CC_LINE) + "\n{not json\n")
    with pytest.raises(RecordError, match="record 1 is broken JSON"):
        SeekableRecords(path)[1]
    with pytest.raises(RecordError, match="line 2 is broken JSON"):
        list(read_records(path))
    with pytest.raises(FileNotFoundError):
        SeekableRecords(tmp_path / "missing.jsonl")
