"""The ASR stage's speed and accuracy on speech of known words: phrases of the demo's commentary
said by espeak-ng at known times over a few minutes of audio, heard by each engine this machine
has (PocketSphinx with and without the phrases' vocabulary; a Whisper directory with ``--model``):
audio hours heard per hour of work (one worker) and the word error rate.

    livecc bench asr [--minutes 2] [--model WHISPER_DIR] [--ct2 CTRANSLATE2_DIR]
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np

from ..data.audio import RATE
from ..data.synth import COLORS, SHAPES, speak
from .results import Sweep


def _speech(minutes: float, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """A phrase every 2 s ("red circle enters", ...), and the words said in order."""
    audio, said = np.zeros(int(minutes * 60 * RATE), dtype=np.float32), []
    for t in np.arange(0.5, minutes * 60 - 2, 2.0):
        color = str(rng.choice(list(COLORS)))
        phrase = f"{color} {SHAPES[color]} {rng.choice(['enters', 'leaves'])}"
        clip = speak(phrase)[: int(1.8 * RATE)]
        audio[int(t * RATE): int(t * RATE) + len(clip)] = clip
        said += phrase.split()
    return audio, said


def _word_errors(heard: list[str], said: list[str]) -> int:
    d = np.arange(len(heard) + 1)
    for a in said:
        prev, d[0] = d.copy(), d[0] + 1
        for j, b in enumerate(heard, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (a != b))
    return int(d[-1])


def run(argv=()) -> Sweep | None:
    from ..data.audio import Audio
    from ..data.pipeline import AsrStage, load_engine

    parser = argparse.ArgumentParser(prog="livecc bench asr", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="minutes of speech")
    parser.add_argument("--model", default=None, help="a Whisper checkpoint directory (the whisper engine)")
    parser.add_argument("--ct2", default=None, help="a CTranslate2 Whisper directory (the faster-whisper engine)")
    args = parser.parse_args(list(argv))
    if shutil.which("espeak-ng") is None:
        print("asr: skipped (espeak-ng, which says the phrases, is not installed)")
        return None
    audio, said = _speech(args.minutes, np.random.default_rng(0))
    vocabulary = sorted(set(said))
    engines = [("pocketsphinx", None, None), ("pocketsphinx", None, vocabulary)]
    engines += [("whisper", args.model, vocabulary)] if args.model else []
    engines += [("faster-whisper", args.ct2, vocabulary)] if args.ct2 else []
    rows = []
    for name, model, words in engines:
        stage = AsrStage(load_engine(name, model, words))
        t0 = time.perf_counter()
        heard, _, _ = stage.hear(Audio(audio, 0.0))
        seconds = time.perf_counter() - t0
        errors = _word_errors([w.text.lower().strip(".,!?") for w in heard], said)
        rows.append({"engine": name, "vocabulary": bool(words), "audio_s": round(len(audio) / RATE, 1),
                     "seconds": round(seconds, 2), "audio_hours_per_hour": round(len(audio) / RATE / seconds, 1),
                     "words_said": len(said), "words_heard": len(heard), "wer": round(errors / len(said), 3)})
        print(f"{name}{' + vocabulary' if words else ''}: {rows[-1]['audio_hours_per_hour']} audio hours an hour, "
              f"WER {rows[-1]['wer']}", flush=True)
    best = min(rows, key=lambda r: r["wer"])
    headline = [{"target": "asr", "figure": f"{best['engine']}{' + vocabulary' if best['vocabulary'] else ''}: "
                                            f"WER {best['wer']}, {best['audio_hours_per_hour']} audio hours an hour"}]
    notes = (f"{args.minutes:g} min of espeak-ng speech, a three-word phrase of the demo's commentary every 2 s; "
             "one worker; times include chunking at pauses.")
    return Sweep("asr", rows, list(rows[0]), notes, None, headline)
