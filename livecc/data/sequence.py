"""The LiveCC streaming training sample (``docs/spec.md`` section 4).

A clip's frames are cut into windows by the stream's :class:`~livecc.data.windows.WindowPlan` (6
frames = 3 s first, then 2 frames = 1 s, as inference cuts them); each window is a
user turn ``Time=a-b s`` + its frames, followed by an assistant turn with the words whose end time
is at or before the window's last frame, ending in the streaming EOS ``' ...'``. Only assistant
content through ``<|im_end|>`` carries labels.

Fixed relative to the reference: words are consumed exactly once (the reference repeats a clip's
last word in every later window and crashes on a window after the last word), and clips shorter
than the first window are accepted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..kernels import preprocess_frames
from ..qwen_vl.tokens import TokenIds
from ..qwen_vl.turns import (
    IMAGE_BLOCK,
    STREAM_EOS,
    SYSTEM_TURN,
    VIDEO_BLOCK,
    assistant_labels,
    assistant_turn,
    chat_text,
    user_turn,
)
from ..qwen_vl.video_format import VideoFormat
from ..qwen_vl.vision import PixelBudget, VisionSpec, clip_frame_size
from .image import image_pixel_bounds, image_size, load_image
from .paths import resolve_under, video_under
from .records import ClipRecord, RecordError
from .video import VideoClip, VideoError, decode_clip
from .windows import WindowPlan
from .words import Word

__all__ = [
    "EmptySampleError",
    "StreamingSample",
    "Window",
    "assign_words",
    "build_conversation_sample",
    "build_streaming_sample",
    "context_text",
    "is_streaming_record",
    "plan_windows",
]


class EmptySampleError(ValueError):
    """A clip with no words inside its frames has nothing to learn from."""


@dataclass
class Window:
    frames: slice  # into the clip's frames
    start: float  # seconds from the clip start, as written in ``Time=``
    end: float
    words: list[Word] = field(default_factory=list)

    @property
    def text(self) -> str:
        """Assistant content: the window's words and the streaming EOS."""
        return " ".join(w.text.strip() for w in self.words) + STREAM_EOS


@dataclass
class StreamingSample:
    input_ids: torch.Tensor  # [L]
    labels: torch.Tensor  # [L], -100 off assistant content
    position_ids: torch.Tensor  # [3, L] M-RoPE (t, h, w)
    pixel_values_videos: torch.Tensor  # [N, 1176]
    video_grid_thw: torch.Tensor  # [n_windows, 3]
    windows: list[Window]
    text: str  # the rendered conversation, one <|video_pad|> per LLM video block
    # images of an SFT conversation, in order (Hugging Face's ``pixel_values`` / ``image_grid_thw``)
    pixel_values_images: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 1176))
    image_grid_thw: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, dtype=torch.long))


def plan_windows(n_frames: int, plan: WindowPlan = WindowPlan()) -> list[Window]:
    """A clip's windows by ``plan`` (the first fewer frames for a short clip)."""
    return [Window(slice(a, b), a / plan.fps, b / plan.fps) for a, b in plan.bounds(n_frames)]


def assign_words(windows: list[Window], pts: list[float], words: list[Word]) -> None:
    """Give each window, in order, the not-yet-used words ending at or before its last frame's pts.

    Words are consumed in transcript order, so a word ending after the cut stops the window even
    if a later word (overlapping it) ends earlier, as in the reference. Words after the last frame
    belong to no window.
    """
    next_word = 0
    for window in windows:
        cut = pts[window.frames.stop - 1]
        first = next_word
        while next_word < len(words) and words[next_word].end <= cut:
            next_word += 1
        window.words = list(words[first:next_word])


def context_text(record: ClipRecord, with_context: bool) -> str:
    """The first user turn's text, by the reference's rule: with context, when the record has a
    ``title`` or ``previous`` key, ``"{query}\n{title}\n{previous}"`` stripped (title blank when
    previous ASR exists), so an empty context strips the query too; otherwise the query as is."""
    if not with_context or (record.title is None and record.previous is None):
        return record.query
    title = "" if record.previous else record.title or ""
    return f"{record.query}\n{title}\n{record.previous or ''}".strip()


def _open_clip(video, start: float | None, end: float | None, *, source: str, video_root, allow_absolute_paths: bool,
               **decode) -> VideoClip:
    """Decode a record's clip: its path resolved under ``video_root``, ``decode`` options for
    :func:`~livecc.data.video.decode_clip` (budget, backend, device, rule)."""
    path = video_under(video_root, video, source=source, allow_absolute=allow_absolute_paths)
    return decode_clip(path, start, end, resize=False, **decode)


def _frame_size(clip: VideoClip, budget: PixelBudget, spec: VisionSpec) -> tuple[int, int]:
    try:
        return clip_frame_size(clip.frames.shape[1], clip.frames.shape[2], len(clip.pts), budget, spec.factor)
    except ValueError as e:  # a 1-pixel or 10000x10 video
        raise VideoError(f"{clip.source}: {e}") from e


def build_streaming_sample(
    record: ClipRecord | list,
    processor,
    *,
    video_root: str | os.PathLike | None = None,
    clip: VideoClip | None = None,
    with_context: bool = False,
    plan: WindowPlan = WindowPlan(),
    budget: PixelBudget = PixelBudget(),
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    video: VideoFormat = VideoFormat(),
    frame_rule: str = "reference",
    allow_absolute_paths: bool = False,
    source: str = "<record>",
) -> StreamingSample:
    """Decode the record's clip and build its streaming sample (``clip`` skips the decode).
    ``video`` is the model's :class:`~livecc.qwen_vl.video_format.VideoFormat` (Qwen2.5-VL's
    temporal spacing, Qwen3-VL's timestamped frame pairs); ``frame_rule`` the sampling rule of
    :mod:`livecc.data.video`; the video path resolves under
    ``video_root`` (absolute paths only with ``allow_absolute_paths``).

    With ``device="cuda"`` the clip is decoded there on NVDEC when it can, and resized and
    patchified by the Triton kernel, so CPU data workers only read records.
    """
    if not isinstance(record, ClipRecord):
        record = ClipRecord.from_messages(record, source)
    tokenizer = getattr(processor, "tokenizer", processor)
    ids, spec = TokenIds.from_tokenizer(tokenizer), VisionSpec.from_processor(processor)
    if clip is None:
        clip = _open_clip(record.video, record.video_start, record.video_end, source=source, video_root=video_root,
                          allow_absolute_paths=allow_absolute_paths, budget=budget, backend=backend, device=device,
                          rule=frame_rule, fps=plan.fps)
    if clip.cut_short and (late := sum(w.end > clip.pts[-1] for w in record.words)):
        raise VideoError(f"{source}: {clip.source} ends at {clip.pts[-1]:.2f} s, before the clip's end "
                         f"({record.video_end} s); {late} of its words lie past the video")

    windows = plan_windows(len(clip.pts), plan)
    assign_words(windows, clip.pts, record.words)
    while windows and not windows[-1].words:  # trailing silent windows teach nothing
        windows.pop()
    if not windows:
        raise EmptySampleError(f"{source}: no words within the frames of {clip.source}")

    size, tp = _frame_size(clip, budget, spec), spec.temporal_patch_size
    if all((w.frames.stop - w.frames.start) % tp == 0 for w in windows):  # no pair straddles two windows
        pixel_values, grid = preprocess_frames(clip.frames[: windows[-1].frames.stop].to(device), size, spec, dtype)
    else:  # a window of odd length repeats its own last frame into its last pair, as a stream pads it
        parts = [preprocess_frames(clip.frames[w.frames].to(device), size, spec, dtype) for w in windows]
        pixel_values, grid = torch.cat([p for p, _ in parts]), parts[0][1]
    _, gh, gw = grid[0].tolist()
    grids = torch.tensor([[-(-(w.frames.stop - w.frames.start) // tp), gh, gw] for w in windows])

    query = context_text(record, with_context)
    # A pair that holds the decoder's repeated last frame is timed by its real frame, as Qwen3-VL's
    # processor times the frames it sampled.
    real = lambda w: max(1, min(w.frames.stop, clip.real_frames) - w.frames.start)
    text = SYSTEM_TURN + "".join(
        user_turn(w.start, w.end, query if i == 0 else "", video.block(real(w), w.start))
        + assistant_turn(w.text) for i, w in enumerate(windows)
    )
    input_ids, position_ids, _ = video.sequence(tokenizer, ids, text, grids)
    return StreamingSample(
        input_ids=input_ids,
        labels=assistant_labels(input_ids, ids),
        position_ids=position_ids,
        pixel_values_videos=pixel_values,
        video_grid_thw=grids,
        windows=windows,
        text=text,
    )


def is_streaming_record(messages) -> bool:
    """A Live-CC record (its assistant speaks a ``text_stream``), as opposed to an ordinary chat."""
    return isinstance(messages, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), list)
        and any(isinstance(c, dict) and c.get("type") == "text_stream" for c in m["content"]) for m in messages)


def _content(message: dict, where: str) -> list[dict]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
        raise RecordError(f"{where}: content must be a string or a list of elements")
    return content


def build_conversation_sample(
    messages: list,
    processor,
    *,
    video_root: str | os.PathLike | None = None,
    clip: VideoClip | None = None,
    budget: PixelBudget = PixelBudget(),
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    video: VideoFormat = VideoFormat(),
    frame_rule: str = "reference",
    allow_absolute_paths: bool = False,
    source: str = "<conversation>",
) -> StreamingSample:
    """An ordinary (non-streaming) chat for SFT: ``[{"role", "content"}]`` turns whose content is a
    string or a list of elements: ``{"type": "text", "text": str}``, ``{"type": "image", "image":
    path}`` (any number, LLaVA-OneVision style; sized by the processor's image pixel bounds) and
    ``{"type": "video", "video": path}`` (at most one, decoded at 2 FPS as one block, LLaVA-Video
    style). Labels cover the assistant turns; ``windows`` is empty. Any other element is an error
    naming the record: nothing of a conversation is left out silently."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids, spec = TokenIds.from_tokenizer(tokenizer), VisionSpec.from_processor(processor)
    element_video, images = None, []
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"{source}: expected a list of chat messages")
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise RecordError(f"{source}: unknown role {role!r}")
        for element in _content(message, source):
            kind = element.get("type")
            if kind == "video":
                if element_video is not None:
                    raise RecordError(f"{source}: more than one video")
                element_video = element
            elif kind == "image":
                images.append(element.get("image"))
            elif not (kind == "text" and isinstance(element.get("text"), str)):
                raise RecordError(f"{source}: unsupported {kind!r} element in a conversation "
                                  "(supported: text with a string, images, one video)")
    text = chat_text(processor, messages)
    written = (text.count(IMAGE_BLOCK), text.count(VIDEO_BLOCK))
    if written != (len(images), int(element_video is not None)):
        raise RecordError(f"{source}: the processor's chat template writes {written[0]} images and {written[1]} "
                          f"videos of the conversation's {len(images)} and {int(element_video is not None)}")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        raise EmptySampleError(f"{source}: no assistant turn to learn from")
    if element_video is None:
        pixel_values, grids = torch.zeros(0, spec.row_size, dtype=dtype), torch.zeros(0, 3, dtype=torch.long)
    else:
        if clip is None:
            start, end = element_video.get("video_start"), element_video.get("video_end")
            for name, value in (("video_start", start), ("video_end", end)):
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise RecordError(f"{source}: {name} is not a number ({value!r})")
            clip = _open_clip(element_video.get("video"), start, end, source=source, video_root=video_root,
                              allow_absolute_paths=allow_absolute_paths, budget=budget, backend=backend,
                              device=device, rule=frame_rule)
        pixel_values, grids = preprocess_frames(clip.frames.to(device), _frame_size(clip, budget, spec), spec, dtype)
        text = text.replace(VIDEO_BLOCK, video.block(clip.real_frames), 1)
    image_values, image_grids = _images(images, processor, spec, dtype, device, video_root, allow_absolute_paths,
                                        source)
    input_ids, position_ids, _ = video.sequence(tokenizer, ids, text, grids, image_grids)
    return StreamingSample(input_ids=input_ids, labels=assistant_labels(input_ids, ids), position_ids=position_ids,
                           pixel_values_videos=pixel_values, video_grid_thw=grids, windows=[], text=text,
                           pixel_values_images=image_values, image_grid_thw=image_grids)


def _images(paths: list, processor, spec: VisionSpec, dtype, device, video_root, allow_absolute_paths: bool,
            source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch rows and grids of a conversation's images, each resized as Hugging Face's processor
    sizes it (one frame, repeated into its temporal patch)."""
    rows, grids = [torch.zeros(0, spec.row_size, dtype=dtype, device=device)], [torch.zeros(0, 3, dtype=torch.long)]
    bounds = image_pixel_bounds(processor)
    for path in paths:
        where = resolve_under(video_root, path, source=source, allow_absolute=allow_absolute_paths)
        pixels = load_image(where)
        r, g = preprocess_frames(pixels.to(device), image_size(pixels, bounds, spec.factor, str(where)), spec, dtype)
        rows.append(r)
        grids.append(g)
    return torch.cat(rows), torch.cat(grids)
