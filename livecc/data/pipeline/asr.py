"""B2: word-timed transcripts from the videos' own audio, the pipeline's first step.

An input line names a video (``{"video": PATH, ...}``, its other keys such as ``title`` and
``category`` carried along); the output line is what ``livecc data clips`` reads: ``{"video",
"words": [[start, end, word], ...], "language", "language_score", ...}``, the words timed on the
video's own clock (:mod:`livecc.data.audio`). A video that cannot be read fails with its path
named; a silent one, or one in which nothing is heard, is dropped and counted.

Engines, each loading its model from this machine (no hub at run time), behind ``--engine``:

- ``pocketsphinx`` (the default): PocketSphinx with the English model its wheel ships, so the
  stage runs anywhere. Its general language model is weak on domain words; a ``vocabulary`` (the
  words the speech may hold, e.g. a sport's) becomes a grammar of those words, which it hears far
  better. It identifies no language: records say ``en`` with no score.
- ``whisper``: a Whisper checkpoint directory through Hugging Face's speech-recognition pipeline,
  word times from its cross-attention, batched on a GPU; the language detected on the first 30 s
  with its probability. A ``vocabulary`` becomes its prompt.
- ``faster-whisper``: a CTranslate2 Whisper directory (``large-v3-turbo`` converted, as the
  reference runs it) through faster-whisper, word times on, batched (16) with its voice detection
  on a GPU as the reference does, one pass on a CPU; a ``vocabulary`` becomes its hotwords.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import RATE, AudioError, cut_at_silences, read_audio
from ..paths import video_under
from ..words import Word, validate_words
from .runner import Outcome

__all__ = ["ENGINES", "AsrStage", "FasterWhisperEngine", "Heard", "PocketSphinxEngine", "WhisperEngine", "load_engine",
           "read_vocabulary"]


@dataclass
class Heard:
    """What an engine heard in one chunk: words timed from the chunk's start, and the language."""

    words: list[Word]
    language: str | None = None
    score: float | None = None


class PocketSphinxEngine:
    """PocketSphinx's English model; with a vocabulary, a grammar of any sequence of its words."""

    name = "pocketsphinx"

    def __init__(self, vocabulary: list[str] | None = None):
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=RATE, loglevel="FATAL")
        if vocabulary:
            words = sorted({w.lower() for w in vocabulary})
            unknown = [w for w in words if self.decoder.lookup_word(w) is None]
            if unknown:
                raise ValueError(f"words not in PocketSphinx's English dictionary: {', '.join(unknown[:20])}")
            grammar = "#JSGF V1.0;\ngrammar vocabulary;\npublic <speech> = ( " + " | ".join(words) + " )* ;\n"
            self.decoder.add_jsgf_string("vocabulary", grammar)
            self.decoder.activate_search("vocabulary")

    def transcribe(self, samples: np.ndarray) -> Heard:
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        words = [Word(s.start_frame / 100, (s.end_frame + 1) / 100, re.sub(r"\(\d+\)$", "", s.word))
                 for s in self.decoder.seg() if not _filler(s.word)]
        return Heard(words, "en", None)


def _filler(token: str) -> bool:
    """PocketSphinx's silences, noises and sentence marks: ``<s>``, ``<sil>``, ``[NOISE]``..."""
    return token.startswith(("<", "[", "+"))


class WhisperEngine:
    """A Whisper checkpoint directory through Hugging Face's speech-recognition pipeline."""

    name = "whisper"

    def __init__(self, model_dir: str | Path, vocabulary: list[str] | None = None, device: str | None = None,
                 batch_size: int = 16):
        import torch
        from transformers import AutoProcessor, WhisperForConditionalGeneration, pipeline

        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"{model_dir}: Whisper model directory not found (no model hub is used)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        self.model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        self.model.to(device).eval()
        self.pipe = pipeline("automatic-speech-recognition", model=self.model, tokenizer=self.processor.tokenizer,
                             feature_extractor=self.processor.feature_extractor, device=device, dtype=dtype)
        self.batch_size = batch_size
        self.prompt = (self.processor.get_prompt_ids(" " + " ".join(vocabulary), return_tensors="pt").to(device)
                       if vocabulary else None)

    def language(self, samples: np.ndarray) -> tuple[str | None, float | None]:
        """The language of the first 30 s and its probability (multilingual checkpoints only)."""
        import torch

        ids = getattr(self.model.generation_config, "lang_to_id", None)
        if not ids:
            return None, None
        features = self.processor.feature_extractor(samples[: 30 * RATE], sampling_rate=RATE, return_tensors="pt")
        start = torch.tensor([[self.model.generation_config.decoder_start_token_id]], device=self.model.device)
        with torch.no_grad():
            logits = self.model(input_features=features.input_features.to(self.model.device, self.model.dtype),
                                decoder_input_ids=start).logits[0, -1].float()
        tokens = list(ids)
        probs = logits[[ids[t] for t in tokens]].softmax(-1)
        best = int(probs.argmax())
        return tokens[best].strip("<|>"), float(probs[best])

    def transcribe(self, samples: np.ndarray) -> Heard:
        language, score = self.language(samples)
        generate = {"task": "transcribe", **({"language": language} if language else {}),
                    **({"prompt_ids": self.prompt} if self.prompt is not None else {})}
        out = self.pipe({"raw": samples, "sampling_rate": RATE}, return_timestamps="word", chunk_length_s=30,
                        batch_size=self.batch_size, generate_kwargs=generate)
        words = [Word(float(c["timestamp"][0]), float(c["timestamp"][1] if c["timestamp"][1] is not None
                                                      else c["timestamp"][0]), c["text"].strip())
                 for c in out["chunks"] if c["text"].strip()]
        return Heard(words, language, score)


class FasterWhisperEngine:
    """A CTranslate2 Whisper directory through faster-whisper."""

    name = "faster-whisper"

    def __init__(self, model_dir: str | Path, vocabulary: list[str] | None = None, device: str | None = None,
                 batch_size: int = 16):
        import torch
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"{model_dir}: CTranslate2 Whisper directory not found (no model hub is used)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        gpu = device.startswith("cuda")
        self.model = WhisperModel(str(model_dir), device="cuda" if gpu else "cpu",
                                  compute_type="float16" if gpu else "float32")
        self.batched = BatchedInferencePipeline(model=self.model) if gpu else None
        self.batch_size, self.hotwords = batch_size, " ".join(vocabulary) if vocabulary else None

    def transcribe(self, samples: np.ndarray) -> Heard:
        options = {"word_timestamps": True, "hotwords": self.hotwords}
        if self.batched is not None:
            segments, info = self.batched.transcribe(samples, batch_size=self.batch_size, **options)
        else:
            segments, info = self.model.transcribe(samples, beam_size=1, **options)
        words = [Word(float(w.start), float(w.end), w.word.strip()) for s in segments for w in (s.words or [])
                 if w.word.strip()]
        return Heard(words, info.language, float(info.language_probability))


ENGINES = ("pocketsphinx", "whisper", "faster-whisper")


def _placed(word: Word, begin: float, end: float) -> Word:
    """A word heard ``word.start`` into a chunk that spans ``[begin, end]`` of the video's clock, on
    that clock (within the chunk, and not before the video's start)."""
    at = lambda t: max(0.0, min(begin + t, end))  # noqa: E731
    return Word(at(word.start), max(at(word.start), at(word.end)), word.text)


def load_engine(name: str, model: str | None = None, vocabulary: list[str] | None = None, device: str | None = None):
    if name == "pocketsphinx":
        return PocketSphinxEngine(vocabulary)
    if name in ("whisper", "faster-whisper"):
        if model is None:
            raise ValueError(f"the {name} engine needs --model, a local Whisper checkpoint directory")
        return (WhisperEngine if name == "whisper" else FasterWhisperEngine)(model, vocabulary, device)
    raise ValueError(f"unknown ASR engine {name!r} (engines: {', '.join(ENGINES)})")


def read_vocabulary(path: str | Path) -> list[str]:
    """Words, one or more a line (blank lines and ``#`` comments skipped)."""
    words = [w for line in Path(path).read_text().splitlines() if not line.lstrip().startswith("#")
             for w in line.split()]
    if not words:
        raise ValueError(f"{path}: no words in the vocabulary file")
    return words


class AsrStage:
    """One video -> its word-timed transcript, as ``livecc data clips`` reads it."""

    name = "asr"

    def __init__(self, engine, video_root: str | Path | None = None, chunk_s: float = 30.0,
                 allow_absolute_paths: bool = False):
        self.engine, self.video_root, self.chunk_s = engine, video_root, chunk_s
        self.allow_absolute_paths = allow_absolute_paths
        self.audio_seconds = self.busy_seconds = 0.0

    def process(self, items: list[tuple[int, object]]) -> list[Outcome]:
        return [self._one(index, item) for index, item in items]

    def _one(self, index: int, item) -> Outcome:
        source = f"input {index}"
        try:
            if not isinstance(item, dict) or "video" not in item:
                raise ValueError("expected an object with 'video'")
            path = video_under(self.video_root, item["video"], source=source, allow_absolute=self.allow_absolute_paths)
            started = time.perf_counter()
            audio = read_audio(path)
            if audio.silent:
                return Outcome(dropped=[("silent", item)])
            words, language, score = self.hear(audio)
            self.audio_seconds += audio.seconds
            self.busy_seconds += time.perf_counter() - started
        except (ValueError, OSError, AudioError) as e:
            return Outcome.failed(e)
        if not words:
            return Outcome(dropped=[("no_speech", item)])
        record = {**item, "words": [[round(w.start, 3), round(w.end, 3), w.text] for w in words],
                  "language": language, **({"language_score": round(score, 4)} if score is not None else {})}
        return Outcome(kept=[record])

    def hear(self, audio) -> tuple[list[Word], str | None, float | None]:
        """Every chunk heard, its words moved onto the video's clock; the first chunk's language. A
        word is kept within its chunk's audio (Whisper times words on its 30 s window, past a shorter
        chunk's end) and within the video (audio heard before the first frame is said at 0)."""
        words, language, score = [], None, None
        for begin, end in cut_at_silences(audio.samples, self.chunk_s):
            heard = self.engine.transcribe(audio.samples[begin:end])
            span = (audio.offset + begin / RATE, audio.offset + end / RATE)  # the next chunk begins at its end
            words += sorted((_placed(w, *span) for w in heard.words), key=lambda w: w.start)
            if language is None:
                language, score = heard.language, heard.score
        return validate_words(words, "heard words"), language, score

    def summary(self) -> str:
        rate = self.audio_seconds / self.busy_seconds if self.busy_seconds else 0.0
        return (f"asr: {self.audio_seconds / 3600:.3f} h of audio heard in {self.busy_seconds:.1f} s "
                f"({rate:.1f} audio hours an hour, this worker)")
