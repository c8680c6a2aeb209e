"""The built-in ``digit-strings`` dataset: K digits said and shown one after another, the audio
and the video on one clock.

An item (a deterministic function of ``(seed, epoch, index)``, like ``digits``):

* ``audio`` (L, 32): one speaker setting (voice, speed, pitch) of the shipped espeak-ng
  recordings says K digits (K drawn from ``lengths``); each recording is cut to its voiced
  frames (``voiced_span``) and laid end to end after a random lead-in, with a random pause
  between words; the rest is silence (-1). Frames are 25 ms (``digits.mel_params``). The
  speaker is drawn among the settings whose K words fit the clip, so every item says all its
  digits at their real durations.
* ``video`` (L / hop, 1, 8, 8): frame j covers audio frames [j hop, (j + 1) hop). Digit k is on
  screen from its spoken onset until the next digit's onset (the last one until its word
  ends): a frame shows the digit whose word covers most of the frame's span (blank, -1, before
  the first onset and after the last word). Each digit is one real sklearn image of that
  digit, moved by a random walk of one-pixel offsets as frames pass, so frames are not copies.
* ``text``: the caption, the digits' names ("three one four"); ``digits``: the label string
  ("3 1 4"); both in the ``digits-words`` vocabulary.

Splits are those of ``digits``: test images and test voices only in ``test``. The timing of
each item is ``segments(index)``: per digit its audio span and the video frames it is shown on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from anydit.config import ModalityConfig
from anydit.data.digits import (
    DIGIT_NAMES,
    _audio_npz,
    _check_split,
    audio_split,
    load_digit_images,
    mel_params,
)

VOICED = -0.8  # a log-mel frame is voiced when its loudest band is above this (silence is -1)


@dataclass(frozen=True)
class StringsLayout:
    """The clip geometry: ``audio_frames`` log-mel frames of 25 ms, a video frame every
    ``hop`` of them, strings of one of ``lengths`` digits, ``pause`` (min, max) silent frames
    between words and a lead-in of 0..``lead`` frames."""

    audio_frames: int = 128
    hop: int = 8
    lengths: tuple[int, ...] = (3, 4)
    pause: tuple[int, int] = (1, 3)
    lead: int = 8

    def __post_init__(self) -> None:
        if self.audio_frames % self.hop:
            raise ValueError(
                f"digit-strings: audio_frames ({self.audio_frames}) must be a multiple of "
                f"hop ({self.hop}), so video and audio frames share one clock"
            )
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"digit-strings: lengths must be >= 1, got {self.lengths}")
        if not 0 <= self.pause[0] <= self.pause[1]:
            raise ValueError(f"digit-strings: pause must be (min, max), got {self.pause}")

    @property
    def video_frames(self) -> int:
        return self.audio_frames // self.hop


@dataclass(frozen=True)
class Segment:
    """One digit of a clip: its audio span [start, end) in audio frames and the video frames
    [first, last) it is on screen."""

    digit: int
    start: int
    end: int
    first: int
    last: int


def voiced_span(mel: np.ndarray) -> tuple[int, int]:
    """[start, end) of the voiced frames of one (frames, mels) recording."""
    voiced = np.nonzero(mel.max(-1) > VOICED)[0]
    if not len(voiced):
        return 0, 0
    return int(voiced[0]), int(voiced[-1]) + 1


@lru_cache(maxsize=3)
def _speakers(split: str) -> tuple[list[tuple[str, int, int]], np.ndarray, np.ndarray]:
    """The split's speaker settings, and per setting and digit the recording index (S, 10)
    and its voiced length (S, 10)."""
    data = _audio_npz()
    keep = np.nonzero(audio_split(data["voice"]) == split)[0]

    def key(i: int) -> tuple[str, int, int]:
        return str(data["voice"][i]), int(data["speed"][i]), int(data["pitch"][i])

    keys = sorted({key(i) for i in keep})
    where = {k: s for s, k in enumerate(keys)}
    index = np.full((len(keys), 10), -1, dtype=np.int64)
    length = np.zeros((len(keys), 10), dtype=np.int64)
    for i in keep:
        s = where[key(i)]
        a, b = voiced_span(data["mel"][i].astype(np.float32))
        index[s, data["label"][i]], length[s, data["label"][i]] = i, b - a
    complete = (index >= 0).all(1)
    return [k for k, c in zip(keys, complete, strict=True) if c], index[complete], length[complete]


def layout_for(modalities, lengths: tuple[int, ...] = ()) -> StringsLayout:
    """The layout of clips for a run's ``modalities`` (frames from the ``video`` and ``audio``
    shapes, where it has them) saying one of ``lengths`` digits (default: the layout's)."""
    shapes = {m.name: tuple(m.shape) for m in modalities or ()}
    fields = {"lengths": tuple(lengths)} if lengths else {}
    if "video" in shapes and "audio" in shapes:
        audio, frames = shapes["audio"][0], shapes["video"][0]
        if audio % frames:
            raise ValueError(
                f"digit-strings: audio of {audio} frames is not a whole number of audio frames "
                f"per video frame ({frames} video frames): the clocks do not match"
            )
        fields |= {"audio_frames": audio, "hop": audio // frames}
    return StringsLayout(**fields)


def digit_strings_modalities(layout: StringsLayout | None = None) -> list[ModalityConfig]:
    """The modalities of ``digit-strings``: video (T, 1, 8, 8) in 4x4 patches and audio (L, 32)
    in 4-frame tokens on one clock, the caption and the label string (``digits-words``)."""
    layout = layout or StringsLayout()
    longest = max(layout.lengths)
    return [
        ModalityConfig(
            "video", "video", (layout.video_frames, 1, 8, 8), patch=4, clock="av",
            rate=1.0 / layout.hop,
        ),
        ModalityConfig(
            "audio", "sequence", (layout.audio_frames, 32), patch=4, codec="logmel",
            codec_args=mel_params().to_dict(), clock="av", rate=1.0 / 4,
        ),
        ModalityConfig("text", "text", (longest,), tokenizer="digits-words"),
        ModalityConfig("digits", "text", (longest,), tokenizer="digits-words"),
    ]  # fmt: skip


class DigitStringsDataset(Dataset):
    """Clips of spoken and shown digit strings (see the module docstring). ``size`` items a
    split (an epoch), each redrawn every epoch from ``(seed, epoch, index)``."""

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        layout: StringsLayout | None = None,
        size: int | None = None,
    ) -> None:
        self.split = _check_split(split)
        self.seed = int(seed)
        self.layout = layout or StringsLayout()
        self.epoch = 0
        self.images, self.labels = load_digit_images(split)  # (N, 1, 8, 8), (N,)
        self._by_digit = [np.nonzero(self.labels.numpy() == d)[0] for d in range(10)]
        self.speakers, self._recording, self._length = _speakers(split)
        self.size = int(size or len(self.labels))
        most = max(self.layout.lengths)
        worst = int((self._length.max(1) * most).min()) + (most - 1) * self.layout.pause[1]
        if worst > self.layout.audio_frames:  # some strings would fit no speaker
            raise ValueError(
                f"digit-strings: {most} words need up to {worst} frames with the fastest "
                f"{split} speaker; audio_frames is {self.layout.audio_frames}"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def _draw(self, index: int) -> tuple[list[int], int, list[int], list[int], np.random.Generator]:
        """(digits, speaker, pauses, lead-in, rng) of an item."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        lay = self.layout
        rng = np.random.default_rng([self.seed, self.epoch, index, 7])
        k = int(rng.choice(lay.lengths))
        digits = [int(d) for d in rng.integers(0, 10, size=k)]
        pauses = [int(p) for p in rng.integers(lay.pause[0], lay.pause[1] + 1, size=k - 1)]
        need = self._length[:, digits].sum(1) + sum(pauses)  # (S,)
        fits = np.nonzero(need <= lay.audio_frames)[0]
        speaker = int(fits[rng.integers(len(fits))])
        spare = lay.audio_frames - int(need[speaker])
        lead = int(rng.integers(0, min(lay.lead, spare) + 1))
        return digits, speaker, pauses, [lead], rng

    def segments(self, index: int) -> list[Segment]:
        """Per digit of item ``index`` (this epoch): its audio span and video frames."""
        digits, speaker, pauses, (lead,), _ = self._draw(index)
        spans, at = [], lead
        for i, d in enumerate(digits):
            n = int(self._length[speaker, d])
            spans.append((d, at, at + n))
            at += n + (pauses[i] if i < len(pauses) else 0)
        return self._frames(spans)

    def _frames(self, spans: list[tuple[int, int, int]]) -> list[Segment]:
        """Video frames per spoken span: digit k owns [onset_k, onset_{k+1}) (the last one its
        word), and a frame shows the digit owning most of its audio frames."""
        hop, total = self.layout.hop, self.layout.video_frames
        owner = np.full(self.layout.audio_frames, -1)
        for k, (_, start, end) in enumerate(spans):
            stop = spans[k + 1][1] if k + 1 < len(spans) else end
            owner[start:stop] = k
        shown = []
        for j in range(total):
            part = owner[j * hop : (j + 1) * hop]
            counts = np.bincount(part + 1, minlength=len(spans) + 1)  # [blank, digit 0, ...]
            shown.append(int(np.argmax(counts)) - 1)
        out = []
        for k, (d, start, end) in enumerate(spans):
            frames = [j for j in range(total) if shown[j] == k]
            first, last = (frames[0], frames[-1] + 1) if frames else (0, 0)
            out.append(Segment(d, start, end, first, last))
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if index < 0:
            index += len(self)
        digits, speaker, _, _, rng = self._draw(index)
        segments = self.segments(index)
        lay = self.layout
        data = _audio_npz()
        audio = torch.full((lay.audio_frames, 32), -1.0)
        video = torch.full((lay.video_frames, 1, 8, 8), -1.0)
        for seg in segments:
            mel = data["mel"][self._recording[speaker, seg.digit]].astype(np.float32)
            a, b = voiced_span(mel)
            audio[seg.start : seg.end] = torch.from_numpy(mel[a:b])
            choices = self._by_digit[seg.digit]
            img = self.images[int(choices[rng.integers(len(choices))])]
            pos = rng.integers(-1, 2, size=2)
            for j in range(seg.first, seg.last):
                video[j] = shift_image(img, int(pos[0]), int(pos[1]))
                pos = np.clip(pos + rng.integers(-1, 2, size=2), -1, 1)
        return {
            "video": video,
            "audio": audio,
            "text": " ".join(DIGIT_NAMES[d] for d in digits),
            "digits": " ".join(str(d) for d in digits),
        }


def shift_image(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(..., H, W) moved by (dy, dx) pixels; uncovered pixels are background (-1)."""
    out = torch.full_like(img, -1.0)
    h, w = img.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = img[..., ys, xs]
    return out
