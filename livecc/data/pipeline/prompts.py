"""B6: an LLM writes each SFT clip's user prompt, matching the speech's style and intent without
revealing its content, through any OpenAI-compatible chat endpoint (concurrent, rate-limited,
retried with backoff by :class:`livecc.chat.ChatClient`; resumable through the stage runner)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ...chat import ChatClient, ChatError
from ..records import ClipRecord, RecordError
from .runner import Outcome

__all__ = ["PromptStage", "prompt_request"]

INSTRUCTION = """Below is the transcript of a video clip, with its title and category. Write the one \
request a viewer could have typed to get this commentary from a video assistant: it must match the \
speech's style and intent (e.g. "Describe the game as it unfolds", "Walk me through the repair") but \
must not reveal what is said. Reply with the request only.

Title: {title}
Category: {category}
Transcript: {transcript}"""


def prompt_request(record: ClipRecord, max_words: int = 400) -> str:
    transcript = " ".join(w.text for w in record.words[:max_words])
    return INSTRUCTION.format(title=record.title or "(none)", category=record.meta.get("category", "(none)"),
                              transcript=transcript)


class PromptStage:
    name = "prompts"

    def __init__(self, client: ChatClient, concurrency: int = 8, max_tokens: int = 64):
        self.client, self.concurrency, self.max_tokens = client, concurrency, max_tokens
        self.pool = ThreadPoolExecutor(max_workers=concurrency)

    def _one(self, raw) -> Outcome:
        try:
            record = ClipRecord.from_messages(raw)
            text = self.client.complete(prompt_request(record), max_tokens=self.max_tokens, temperature=0.0)
        except (RecordError, ChatError) as e:
            return Outcome.failed(e)
        query = text.strip().strip('"').strip()
        if not query:
            return Outcome(dropped=[("empty_prompt", raw)])
        record.query = query
        return Outcome(kept=[record.to_messages()])

    def process(self, items: list[tuple[int, object]]) -> list[Outcome]:
        return list(self.pool.map(self._one, [raw for _, raw in items]))
