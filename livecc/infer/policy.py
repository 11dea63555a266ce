"""The per-stream rules of the streaming engine, apart from running the model: what a window's
prompt is, which token comes next, when an answer stops and how it is closed, what the cache
keeps, and when the survivors' positions close the gaps evicted tokens leave."""

from __future__ import annotations

import torch

from ..qwen_vl import SYSTEM_TURN, TokenIds, user_turn, vision_runs
from .cache import TEXT, VISION
from .state import StreamState

__all__ = ["MAX_QUESTION_TOKENS", "MAX_QUERY_TOKENS", "StreamPolicy"]

MAX_QUERY_TOKENS = 1024  # a stream's first user text: a prompt, a title, previous commentary
MAX_QUESTION_TOKENS = 256  # a question asked mid-stream


class StreamPolicy:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids = TokenIds.from_tokenizer(tokenizer)
        eos = tokenizer(" ...", add_special_tokens=False).input_ids
        if len(eos) != 1:
            raise ValueError("the tokenizer does not encode the streaming EOS ' ...' as one token")
        self.stream_eos = eos[0]
        self.stops = (self.stream_eos, self.ids.im_end)
        self.special = sorted({*tokenizer.all_special_tokens, *getattr(tokenizer, "added_tokens_encoder", {})},
                              key=len, reverse=True)

    # ------------------------------------------------------------------ user text

    def check_text(self, text, what: str, limit: int) -> str:
        """``text`` as a stream may feed it: a string without the chat format's special tokens, at
        most ``limit`` tokens; else a ValueError that says which rule it broke."""
        if not isinstance(text, str):
            raise ValueError(f"{what} must be text, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate, which JSON's \uD800 escapes can carry
            raise ValueError(f"{what} is not well-formed Unicode text ({e.reason} at {e.start})") from e
        text = text.strip()
        found = next((t for t in self.special if t in text), None)
        if found is not None:
            raise ValueError(f"{what} may not contain the special token {found!r}")
        n = len(self.tokenizer(text, add_special_tokens=False).input_ids) if len(text) <= 16 * limit else None
        if n is None or n > limit:
            raise ValueError(f"{what} is longer than {limit} tokens")
        return text

    # ------------------------------------------------------------------ prompts

    def prompt(self, s: StreamState, start: float, end: float, n_frames: int, grid: torch.Tensor):
        """The window's user turn (after the closing of the previous answer) for its ``n_frames``
        frames of ViT ``grid [1, 3]``: ``(ids [n], M-RoPE positions [3, n], kinds [n], position
        ranges lo, hi [n])``. A text token occupies its position; each visual block (the window's
        frames, or with Qwen3-VL each frame pair) occupies its grid's whole range."""
        head = SYSTEM_TURN if s.window_index == 0 else ""
        asked = ([s.config.query] if s.window_index == 0 and s.config.query else []) + s.questions
        s.questions = []
        turn = user_turn(start, end, "\n".join(asked), s.video.block(n_frames, start))
        text = head + turn + "<|im_start|>assistant\n"
        ids, positions, s.next_pos = s.video.sequence(self.tokenizer, self.ids, text, grid, prefix=s.pending,
                                                      start=s.next_pos)
        visual = ids == self.ids.video_pad
        lo, hi = positions[0].clone(), positions[0] + 1
        for begin, stop in vision_runs(visual):
            block = positions[:, begin:stop]
            lo[begin:stop], hi[begin:stop] = int(block.min()), int(block.max()) + 1
        return ids, positions, visual.to(torch.int8), lo, hi

    def text_positions(self, s: StreamState, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` text tokens fed after the stream's last: ``(positions [3, n], lo, hi)``."""
        p = torch.arange(s.next_pos, s.next_pos + n)
        s.next_pos += n
        return p.expand(3, -1), p, p + 1

    # ------------------------------------------------------------------ answers

    def choose(self, streams: list[StreamState], logits: torch.Tensor) -> torch.Tensor:
        """The next token of each stream ``[B]`` (on the device) from its logits ``[B, V]``: the
        repetition penalty over the tokens it has fed, then argmax, or sampling at its temperature."""
        penalty = torch.stack([s.penalty for s in streams])[:, None]
        seen = torch.stack([s.seen for s in streams])
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
        tokens = logits.argmax(dim=-1)
        for k, s in enumerate(streams):
            if s.config.temperature > 0:
                probs = torch.softmax(logits[k] / s.config.temperature, dim=-1)
                tokens[k] = torch.multinomial(probs, 1, generator=s.generator)[0]
        return tokens

    def closing(self, generated: list[int]) -> list[int]:
        """Tokens that end this answer in the training format: ``... ...<|im_end|>\\n``."""
        newline = [self.ids.newline]
        last = generated[-1]
        if last == self.ids.im_end:
            return [last, *newline]
        if last == self.stream_eos:
            return [last, self.ids.im_end, *newline]
        return [last, self.stream_eos, self.ids.im_end, *newline]

    def text(self, generated: list[int]) -> str:
        return self.tokenizer.decode([t for t in generated if t not in self.stops]).strip()

    # ------------------------------------------------------------------ what the cache keeps

    def evictions(self, s: StreamState, now: float) -> torch.Tensor:
        """``[length]`` True for the live tokens to drop: visual tokens past the horizon, and text
        between the sink and the most recent ``max_text_tokens``."""
        cache, config = s.cache, s.config
        n = cache.length
        kind, when = cache.kind[:n], cache.time[:n]
        drop = (kind == VISION) & (when <= now - config.horizon)
        if config.max_text_tokens is not None:
            text_slots = (kind == TEXT).nonzero().flatten()  # host metadata: no device sync
            text_slots = text_slots[cache.origin[text_slots].argsort()]  # slots are not in fed order
            old = text_slots[config.text_sink : max(config.text_sink, text_slots.numel() - config.max_text_tokens)]
            drop[old] = True
        return drop

    @staticmethod
    def compaction(s: StreamState) -> tuple[torch.Tensor, int] | None:
        """``(how far each live token moves down, positions freed)`` once more than
        ``compact_after`` positions below the stream's next are free; None before, or never."""
        if s.config.compact_after is None:
            return None
        moved, free = s.cache.gaps(s.next_pos)
        return (moved, free) if free > s.config.compact_after else None
