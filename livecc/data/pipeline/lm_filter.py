"""A2 / B4: the text loss of each clip's ASR under a small causal LM.

Too low a loss means the words need no video; too high means bad ASR. The loss (mean next-token
cross-entropy over the clip's words) is stored on the record as ``lm_loss``; clips outside
``[low, high]`` are dropped (pre-training [1.5, 6.5], SFT [1.5, 5]).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..records import ClipRecord
from .runner import Outcome

__all__ = ["LMFilterStage", "clip_text_losses", "token_losses"]


def clip_text_losses(model, tokenizer, texts: list[str], max_tokens: int = 2048) -> list[float]:
    """Mean next-token loss of each text (its first ``max_tokens`` tokens), in one padded batch."""
    return token_losses(model, [tokenizer(t, add_special_tokens=False).input_ids[:max_tokens] for t in texts])


@torch.no_grad()
def token_losses(model, encoded: list[list[int]]) -> list[float]:
    """Mean next-token loss of each token sequence (at least 2 tokens each), in one padded batch."""
    if any(len(ids) < 2 for ids in encoded):
        raise ValueError("a clip's text has fewer than 2 tokens")
    device = next(model.parameters()).device
    width = max(len(ids) for ids in encoded)
    ids = torch.zeros(len(encoded), width, dtype=torch.long)
    mask = torch.zeros(len(encoded), width, dtype=torch.long)
    for i, row in enumerate(encoded):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
    targets = ids[:, 1:].to(device)
    valid = mask[:, 1:].to(device).bool()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return ((nll * valid).sum(1) / valid.sum(1)).tolist()


class LMFilterStage:
    name = "lm-filter"

    def __init__(self, model_dir: str | Path, keep: tuple[float, float] = (1.5, 6.5), device: str | None = None,
                 max_tokens: int = 2048):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"{model_dir}: language model directory not found")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        self.model.to(device).eval()
        self.low, self.high = keep
        self.max_tokens = max_tokens

    def process(self, items: list[tuple[int, object]]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(items)
        records, encoded = [], []
        for k, (_, raw) in enumerate(items):
            try:
                record = ClipRecord.from_messages(raw)
                text = " ".join(w.text for w in record.words)
                ids = self.tokenizer(text, add_special_tokens=False).input_ids[:self.max_tokens]
                if len(ids) < 2:
                    raise ValueError("fewer than 2 tokens of text")
            except ValueError as e:
                outcomes[k] = Outcome.failed(e)
                continue
            records.append((k, record))
            encoded.append(ids)
        losses = token_losses(self.model, encoded) if encoded else []
        for (k, record), loss in zip(records, losses):
            record.meta["lm_loss"] = round(loss, 4)
            out = record.to_messages()
            if loss < self.low:
                outcomes[k] = Outcome(dropped=[("lm_loss_low", out)])
            elif loss > self.high:
                outcomes[k] = Outcome(dropped=[("lm_loss_high", out)])
            else:
                outcomes[k] = Outcome(kept=[out])
        return outcomes
