import torch

from livecc.data.records import ClipRecord
from livecc.data.sequence import build_streaming_sample
from livecc.data.video import VideoClip
from livecc.data.words import Word
from livecc.models import text_only_causal_lm_loss, tiny_qwen_vl


def streaming_batch(processor, gen):
    frames = torch.randint(0, 256, (10, 252, 280, 3), dtype=torch.uint8, generator=gen)
    clip = VideoClip(frames, [k / 2 for k in range(10)], "clip.mp4", "test")
    text = ["the", "red", "ball", "rolls", "left", "and", "stops"]
    words = [Word(0.2 + 0.45 * k, 0.4 + 0.45 * k, w) for k, w in enumerate(text)]
    s = build_streaming_sample(ClipRecord("clip.mp4", 0.0, 5.0, words), processor, clip=clip)
    return dict(input_ids=s.input_ids[None], labels=s.labels[None], position_ids=s.position_ids[:, None],
                pixel_values_videos=s.pixel_values_videos, video_grid_thw=s.video_grid_thw)


def train(processor, batch, use_ours, steps=4):
    model = tiny_qwen_vl(seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    calls = []
    model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    losses = []
    for _ in range(steps):
        if use_ours:
            loss = text_only_causal_lm_loss(model, **batch)
        else:
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, len(calls)


def test_text_only_loss_follows_hugging_face_loss_curve(processor, gen, triton_interpreter, monkeypatch):
    with monkeypatch.context() as torch_path:  # the clip's patch rows on torch; the loss kernel interpreted
        torch_path.delenv("TRITON_INTERPRET")
        batch = streaming_batch(processor, gen)
    assert (batch["labels"] != -100).float().mean() < 0.2  # mostly vision: the case this is for
    ours, head_calls = train(processor, batch, use_ours=True)
    theirs, _ = train(processor, batch, use_ours=False)
    assert head_calls == 0  # the full-vocabulary LM head never ran
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=2e-4, atol=2e-4)
    assert ours[-1] < ours[0]
