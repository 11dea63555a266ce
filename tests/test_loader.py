"""The training loader: worker processes and prefetched packs give the packs of a plain loop, a
corrupt or missing video is counted and written to the rejects, and resuming skips what was used."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from livecc.data.packing import PackedLoader, StreamingDataset
from livecc.data.records import RecordWriter
from livecc.data.synth import synthesize_clip


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    good = [synthesize_clip(root, f"g{i}", seed=10 + i, duration=8.0 + i % 2) for i in range(5)]
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    corrupt = synthesize_clip(root, "tmp", seed=9, duration=8.0)
    with RecordWriter(root / "mix.jsonl") as w:
        for i, record in enumerate(good):
            w.write(record)
            if i == 1:
                w.write(corrupt.__class__(**{**corrupt.__dict__, "video": "corrupt.mp4"}))
            if i == 3:
                w.write(corrupt.__class__(**{**corrupt.__dict__, "video": "missing.mp4"}))
    return root


def packs_of(loader):
    return [(p.input_ids, p.pixel_values_videos, p.cu_seqlens) for p in loader]


@pytest.mark.parametrize("workers, threads, prefetch", [(2, 0, 3), (0, 0, 1), (0, 3, 2)])
def test_workers_and_prefetch_give_the_plain_packs_and_count_bad_videos(mixed, processor, tmp_path, workers, threads,
                                                                        prefetch):
    dataset = StreamingDataset([mixed / "mix.jsonl"], processor, mixed)
    plain = PackedLoader(dataset, 3000, seed=1)
    expected = packs_of(plain)
    loader = PackedLoader(dataset, 3000, seed=1, num_workers=workers, threads=threads, prefetch=prefetch,
                          rejects=tmp_path / "rejects.jsonl")
    got = packs_of(loader)
    assert len(got) == len(expected) > 1
    for a, b in zip(got, expected):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sum(loader.errors.values()) == 2 and loader.errors == plain.errors
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["record"].rsplit(" ", 1)[1] for r in rejects) == ["2", "5"]
    assert all("corrupt.mp4" in r["error"] or "missing.mp4" in r["error"] for r in rejects)
    stats = loader.stats
    assert stats.clips == 5 and stats.packs == len(got) and stats.frames > 0 and stats.build_s > 0
    rates = stats.rates()
    assert rates["loader_clips_per_s"] > 0 and rates["data_wait_s"] >= 0


def test_worker_processes_start_after_a_frame_was_converted_on_another_thread(mixed):
    """PyAV keeps a frame converter per thread, with threads of its own: a worker forked from the
    loader's thread would free the main thread's in the child and wait forever on threads the fork
    did not copy. The workers start from a fork server instead (in a new process, timed out)."""
    code = f"""
        import av
        from pathlib import Path
        from livecc.data.packing import PackedLoader, StreamingDataset
        from livecc.qwen_vl import offline_processor

        root = Path({str(mixed)!r})
        with av.open(str(root / "g0.mp4")) as container:
            next(container.decode(video=0)).to_ndarray(format="rgb24")
        dataset = StreamingDataset([root / "mix.jsonl"], offline_processor(), root)
        got = [p.input_ids for p in PackedLoader(dataset, 3000, seed=1, num_workers=1)]
        plain = [p.input_ids for p in PackedLoader(dataset, 3000, seed=1)]
        assert len(got) == len(plain) > 1 and all((a == b).all() for a, b in zip(got, plain))
        print("packs", len(got))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "packs" in done.stdout, done.stderr[-3000:]


def test_processes_and_threads_do_not_mix(mixed, processor):
    with pytest.raises(ValueError, match="not both"):
        PackedLoader(StreamingDataset([mixed / "mix.jsonl"], processor, mixed), 10, num_workers=1, threads=1)


def test_resume_mid_epoch_with_prefetch(mixed, processor):
    dataset = StreamingDataset([mixed / "mix.jsonl"], processor, mixed)
    everything = packs_of(PackedLoader(dataset, 1, seed=2))
    loader = PackedLoader(dataset, 1, seed=2, prefetch=4)
    it = iter(loader)
    first = [next(it) for _ in range(2)]
    state = loader.state_dict()  # taken while the thread has packs ready beyond the two handed out
    it.close()
    resumed = PackedLoader(dataset, 1, seed=2)
    resumed.load_state_dict(state)
    rest = packs_of(resumed)
    assert len(first) + len(rest) == len(everything) == 5
    assert all(torch.equal(p.input_ids, e[0]) for p, e in zip(first, everything))
    assert all(torch.equal(r[0], e[0]) for r, e in zip(rest, everything[2:]))


def test_a_pack_keeps_its_pixel_rows_where_they_were_built():
    """Frames decoded on the GPU beside a text-only sample (whose empty rows sit on the CPU)."""
    from livecc.data.packing import pack_samples
    from livecc.data.sequence import StreamingSample

    def sample(rows, grid):
        ids = torch.arange(5)
        return StreamingSample(ids, ids, ids.expand(3, 5), rows, grid, [], "")

    on_device = sample(torch.zeros(8, 1176, device="meta", dtype=torch.bfloat16), torch.tensor([[2, 2, 2]]))
    text_only = sample(torch.zeros(0, 1176), torch.zeros(0, 3, dtype=torch.long))
    pack = pack_samples([text_only, on_device])
    assert pack.pixel_values_videos.device.type == "meta" and pack.pixel_values_videos.dtype == torch.bfloat16
    assert pack.pixel_values_videos.shape == (8, 1176) and pack.pixel_values_images.shape == (0, 1176)
