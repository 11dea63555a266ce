import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from livecc.data.packing import PackedLoader, StreamingDataset, pack_samples
from livecc.data.records import RecordWriter
from livecc.data.synth import synthesize_clip
from livecc.models import text_only_causal_lm_loss, tiny_qwen_vl, use_livecc_attention
from livecc.train import Trainer, load_config


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    with RecordWriter(root / "train.jsonl") as w:
        for i in range(6):
            w.write(synthesize_clip(root, f"c{i}", seed=10 + i, duration=8.0 + i % 3))
    return root


def config(records, tmp_path, **kw):
    base = dict(data=[str(records / "train.jsonl")], video_root=str(records), output_dir=str(tmp_path / "run"),
                global_batch_clips=2, token_budget=3000, lr=1e-3, max_steps=4, warmup_ratio=0.25,
                gradient_checkpointing=False)
    base.update(kw)
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in base.items()])


def test_packed_loss_equals_sum_of_unpacked_clip_losses(records, processor):
    dataset = StreamingDataset([records / "train.jsonl"], processor, records)
    samples = [dataset[i] for i in range(3)]
    pack = pack_samples(samples)
    assert pack.cu_seqlens.tolist()[-1] == pack.n_tokens and pack.n_clips == 3
    ours = tiny_qwen_vl(seed=0)
    use_livecc_attention(ours)
    ref = tiny_qwen_vl(seed=0, attn_implementation="sdpa")
    with torch.no_grad():
        packed = text_only_causal_lm_loss(ours, labels=pack.labels, reduction="sum", **pack.model_inputs())
        separate = 0.0
        for s in samples:
            n = int((s.labels[1:] != -100).sum())
            out = ref(input_ids=s.input_ids[None], position_ids=s.position_ids[:, None], labels=s.labels[None],
                      pixel_values_videos=s.pixel_values_videos, video_grid_thw=s.video_grid_thw)
            separate += out.loss * n
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-4)


def test_loader_shards_deterministically_and_resumes(records, processor):
    dataset = StreamingDataset([records / "train.jsonl"], processor, records)
    ranks = [PackedLoader(dataset, 10**9, rank=r, world_size=2, seed=3) for r in (0, 1)]
    order = [loader._order() for loader in ranks]
    assert sorted(order[0] + order[1]) == list(range(6)) and not set(order[0]) & set(order[1])
    loader = PackedLoader(dataset, 1, seed=3)  # one clip per pack
    it = iter(loader)
    first = [next(it).input_ids for _ in range(2)]
    state = loader.state_dict()
    rest = [p.input_ids for p in it]
    resumed = PackedLoader(dataset, 1, seed=3)
    resumed.load_state_dict(state)
    again = [p.input_ids for p in resumed]
    assert len(first) + len(rest) == 6 and len(again) == len(rest)
    assert all(torch.equal(a, b) for a, b in zip(again, rest))


def test_livecc_engine_follows_the_hugging_face_loss_curve(records, tmp_path):
    curves = {}
    for engine in ("livecc", "hf"):
        cfg = config(records, tmp_path / engine, engine=engine, global_batch_clips=1, token_budget=1, max_steps=4)
        curves[engine] = [m["loss"] for m in Trainer(cfg).fit()["history"]]
    torch.testing.assert_close(torch.tensor(curves["livecc"]), torch.tensor(curves["hf"]), rtol=2e-4, atol=2e-4)
    assert curves["livecc"][-1] < curves["livecc"][0]


def test_checkpointing_policies_and_the_prefetching_loader_keep_the_losses(records, tmp_path):
    plain = Trainer(config(records, tmp_path / "plain", max_steps=3)).fit()["history"]
    for name, options in {"full": dict(gradient_checkpointing=True),
                          "selective": dict(gradient_checkpointing=True, checkpoint_policy="selective",
                                            num_workers=1, prefetch_packs=3)}.items():
        run = Trainer(config(records, tmp_path / name, max_steps=3, **options)).fit()["history"]
        assert [m["loss"] for m in run] == [m["loss"] for m in plain], name  # fp32 on CPU: exactly
        assert all(m["data_wait_s"] >= 0 and m["loader_clips_per_s"] > 0 for m in run)


def test_compiled_decoder_layers_keep_the_losses(records, tmp_path):
    plain = Trainer(config(records, tmp_path / "plain", max_steps=2)).fit()["history"]
    compiled = Trainer(config(records, tmp_path / "compiled", max_steps=2, compile=True,
                              gradient_checkpointing=True, checkpoint_policy="selective")).fit()["history"]
    torch.testing.assert_close(torch.tensor([m["loss"] for m in compiled]), torch.tensor([m["loss"] for m in plain]),
                               rtol=1e-5, atol=1e-5)


def test_selective_checkpointing_recomputes_no_gemm(processor):
    from torch.utils._python_dispatch import TorchDispatchMode

    from livecc.train.parallelize import apply_activation_checkpointing

    class CountGemms(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
            return func(*args, **(kwargs or {}))

    ids = torch.randint(0, 1000, (1, 40))
    counts = {}
    for policy in ("none", "selective", "full"):
        model = tiny_qwen_vl(seed=0).train()
        if policy != "none":
            apply_activation_checkpointing(model, policy)
        with CountGemms() as mode:
            model(input_ids=ids).logits.sum().backward()
        counts[policy] = mode.n
    assert counts["none"] == counts["selective"] < counts["full"], counts


@pytest.mark.parametrize("policy", ["selective", "full"])
def test_checkpointing_leaves_the_frozen_vit_out_of_the_backward(policy):
    """Enabling checkpointing hooks every input embedding, the ViT's patch embedding among them, to
    make its output require grad; left so, a frozen ViT would hold its activations for a backward
    that computes nothing it keeps (and run again under full checkpointing)."""
    from livecc.qwen_vl import mrope_position_ids
    from livecc.train.parallelize import apply_activation_checkpointing

    model = tiny_qwen_vl(seed=0).train()
    model.model.visual.requires_grad_(False)
    apply_activation_checkpointing(model, policy)
    seen = []
    model.model.visual.register_forward_hook(lambda module, args, out: seen.append(out.pooler_output))
    grid = torch.tensor([[2, 4, 4]])
    ids = torch.tensor([[1, 2] + [151656] * 8 + [3, 4]])
    pos, _ = mrope_position_ids(ids[0], {151656: grid})
    model(input_ids=ids, position_ids=pos[:, None], pixel_values_videos=torch.randn(32, 1176),
          video_grid_thw=grid).logits.sum().backward()
    assert len(seen) == 1 and not seen[0].requires_grad
    assert model.model.language_model.embed_tokens.weight.grad is not None  # the LLM still trains


def test_resume_gives_the_losses_of_an_uninterrupted_run(records, tmp_path):
    full = Trainer(config(records, tmp_path / "full")).fit()["history"]
    first = Trainer(config(records, tmp_path / "part", stop_after=2)).fit()["history"]
    resumed = Trainer(config(records, tmp_path / "part"))
    resumed.resume(tmp_path / "part" / "run" / "checkpoint-2")
    second = resumed.fit()["history"]
    losses = [m["loss"] for m in first + second]
    assert [m["step"] for m in second] == [3, 4]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor([m["loss"] for m in full]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_checkpoint_loads_with_from_pretrained(records, tmp_path, arch):
    from transformers import AutoModelForImageTextToText

    from livecc.models import load_model

    trainer = Trainer(config(records, tmp_path, max_steps=1, tiny={"arch": arch}))
    assert trainer.fit()["history"][0]["loss"] > 0
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "run" / "checkpoint-1")
    assert loaded.config.model_type == arch
    for name, p in trainer.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], p, msg=name)
    assert (tmp_path / "run" / "checkpoint-1" / "tokenizer.json").is_file()
    model, _ = load_model(str(tmp_path / "run" / "checkpoint-1"), "cpu")  # what `livecc stream --model` uses
    assert type(model) is type(loaded)


def test_data_of_which_no_record_builds_ends_the_run_with_an_error(tmp_path):
    """With max_steps the loader cycles epochs; when none of them builds a pack the run stops, naming
    the data and the rejects file, instead of cycling forever."""
    with RecordWriter(tmp_path / "missing.jsonl") as w:
        for i in range(3):
            w.write(synthesize_clip(tmp_path, f"m{i}", seed=i, duration=6.0, n_events=2, size=(64, 64)))
    for i in range(3):
        (tmp_path / f"m{i}.mp4").unlink()
    cfg = config(tmp_path, tmp_path, data=[str(tmp_path / "missing.jsonl")], max_steps=50)
    with pytest.raises(RuntimeError, match=r"no record of .*missing.jsonl builds a sample \(6 failures; see .*rejects"):
        Trainer(cfg).fit()


def test_a_training_step_reads_the_device_once_at_its_end(records, tmp_path):
    """Through the GPU code path (a census of what would live on the device, on the CPU), a step
    over video packs launches its work without waiting on the device: the ViT's geometry and the
    labelled rows are found on the host, a non-finite norm would skip the update on the device, and
    the step's loss, norm and skip flag come back in one read once all its work is queued."""
    from livecc.infer import census

    trainer = Trainer(config(records, tmp_path, max_steps=3))
    trainer.train_step()
    with census.Census(trainer.model, phases=("step",)) as counted:
        census.window()
        metrics = trainer.train_step()
    reads = {where: n for (_, what, where), n in counted.sites.items() if what == "reads"}
    assert list(reads.values()) == [1] and "trainer.py" in next(iter(reads)), reads
    assert counted.totals()["step"]["launches"] > 100 and metrics["loss"] > 0


def test_non_finite_gradient_skips_the_step(records, tmp_path):
    trainer = Trainer(config(records, tmp_path, max_steps=2))
    weight = trainer.model.model.language_model.layers[0].mlp.up_proj.weight
    before = weight.detach().clone()
    handle = weight.register_hook(lambda g: g * float("nan"))
    metrics = trainer.train_step()
    handle.remove()
    assert metrics["skipped_steps"] == 1 and torch.equal(weight.detach(), before)
    assert trainer.train_step()["skipped_steps"] == 1 and not torch.equal(weight.detach(), before)


# One clip per pack, two per step: rank r takes clips r, r+2, ... of the same shuffled order, so
# every step sees the same clips as a single process does. A checkpoint after every step.
TWO_PROCESS = ["global_batch_clips=2", "token_budget=1", "lr=0.001", "max_steps=5", "gradient_checkpointing=false",
               "save_every=1"]
_ENV = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, "OMP_NUM_THREADS": "1"}


def train_command(records, out, processes: int = 1) -> list[str]:
    data = [f"data={json.dumps([str(records / 'train.jsonl')])}", f"video_root={json.dumps(str(records))}"]
    launcher = [sys.executable, "-m"] if processes == 1 else [shutil.which("torchrun") or "torchrun", "--standalone",
                                                              f"--nproc_per_node={processes}", "-m"]
    return [*launcher, "livecc.cli", "train", *data, *TWO_PROCESS, f"output_dir={out}"]


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process_run(records, tmp_path_factory):
    """An uninterrupted two-process (FSDP2) run, for the tests that compare another run with it."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    out = tmp_path_factory.mktemp("two-process")
    done = subprocess.run(train_command(records, out, 2), capture_output=True, text=True, env=_ENV, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out


@pytest.mark.xdist_group("two-process")
def test_two_process_fsdp2_matches_one_process(records, two_process_run, tmp_path):
    single = subprocess.run(train_command(records, tmp_path / "one"), capture_output=True, text=True, env=_ENV,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (two_process_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["clips"] for m in two] == [m["clips"] for m in one] == [2] * 5
    torch.testing.assert_close(torch.tensor([m["loss"] for m in two]), torch.tensor([m["loss"] for m in one]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.xdist_group("two-process")
def test_two_process_run_killed_and_resumed_from_its_shards_gives_the_same_losses(records, two_process_run, tmp_path):
    import signal
    import time

    run = lambda out, **kw: subprocess.Popen(train_command(records, out, 2), stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True, env=_ENV, **kw)
    killed = run(tmp_path / "killed", start_new_session=True)
    deadline = time.monotonic() + 600
    while not (tmp_path / "killed" / "checkpoint-2").is_dir():
        assert killed.poll() is None and time.monotonic() < deadline, killed.stdout.read()[-3000:]
        time.sleep(0.02)
    assert killed.poll() is None, "the run ended before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    shards = sorted(p.name for p in (tmp_path / "killed" / "checkpoint-2").glob("shard.*"))
    assert shards == ["shard.0-of-2.pt", "shard.1-of-2.pt"]
    again = run(tmp_path / "killed")  # continues from its latest complete checkpoint
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0 and "resuming from" in out, out[-3000:]
    assert len(losses(tmp_path / "killed")) == 5 and losses(tmp_path / "killed") == losses(two_process_run)
    # a sharded checkpoint resumes at the world size that wrote it, and says so
    single = subprocess.run([*train_command(records, tmp_path / "killed"), "max_steps=6"], capture_output=True,
                            text=True, env=_ENV, timeout=600)
    assert single.returncode != 0 and "resumes at the world size that wrote it" in single.stderr


@pytest.mark.parametrize("name", ["pretrain-qwen2vl-7b.yaml", "sft-qwen2vl-7b.yaml", "tiny-cpu.json"])
def test_example_configs_parse(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[1] / "configs" / name, ["max_steps=3"])
    assert cfg.max_steps == 3 and cfg.engine == "livecc"


def test_paths_in_a_config_file_are_relative_to_its_folder(tmp_path, monkeypatch):
    """From any working directory, a config file's paths mean the same files; an override on the
    command line is relative to the working directory, as typed."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    cfg = load_config(repo / "configs" / "tiny-cpu.json", ["output_dir=\"here\""])
    assert Path(cfg.video_root).resolve() == repo / "demo_out" and cfg.model == "tiny"
    assert [Path(d).resolve() for d in cfg.data] == [repo / "demo_out" / "train.jsonl"] and cfg.output_dir == "here"


def test_bad_config_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(None, ["learning_rate=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["lr"])
