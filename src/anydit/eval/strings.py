"""Judges of ``digit-strings`` clips, per time segment: what is seen, what is heard, and whether
they agree in time.

* Frames: ``FrameJudge`` (sklearn digits at every one-pixel offset); a frame whose brightest
  pixel is under ``BLANK`` is blank.
* Words: ``WordJudge``, PCA + logistic regression on the train recordings cut to their speech
  frames (``voiced_frames``: mean over mel bands above ``SPEECH``) and centred on their
  loudness in a 32-frame window, so a word is read from the audio of any span it covers.
* Seen segments: runs of frames read as one digit (blank frames end a run). For each seen
  segment, the word said in its time span (``hop`` audio frames per video frame; the voiced
  run overlapping it most, whole: ``word_during``) is read: ``sync`` is the share of seen
  segments whose digit is heard there; ``onset_error`` the mean distance, in video frames,
  from the frame where a digit appears to its word's onset.

Every judge is fit on train data only; ``tests/test_strings_judges.py`` checks them on real
test clips and on clips whose audio belongs to another clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from torch import Tensor

from anydit.data.digits import load_digit_audio
from anydit.eval.judges import frame_judge

BLANK = -0.5  # a frame whose brightest pixel is below this shows no digit
WINDOW = 32  # audio frames a word is read from
CENTRE = 12  # the window frame a word's loudness centroid is put at
SPEECH = -0.9  # an audio frame is speech when its mean over mel bands is above this


def voiced_frames(mel: np.ndarray) -> np.ndarray:
    """(..., frames, mels) -> (..., frames) bool: the frames that carry speech. The mean over
    bands, not the loudest band: silence is -1 in every band, and a generated silence with
    small noise in each band (std 0.15) has a loudest band far above -1 but a mean near it."""
    return np.asarray(mel).mean(-1) > SPEECH


def speech_span(mel: np.ndarray) -> tuple[int, int]:
    """[start, end) of the speech frames (``voiced_frames``) of one (frames, mels) stretch."""
    voiced = np.nonzero(voiced_frames(mel))[0]
    return (int(voiced[0]), int(voiced[-1]) + 1) if len(voiced) else (0, 0)


def _window(mel: np.ndarray) -> np.ndarray:
    """(frames, mels) -> a (WINDOW, mels) window of its speech frames with their loudness
    centroid at frame ``CENTRE``, silence (-1) around. Centred, not left-aligned at the onset:
    a generated word's onset is blurred by a frame or two of murmur, which moves every frame of
    a left-aligned window (the judge then read 58% of the digits demo's generated words, 96%
    centred; ``docs/video.md``)."""
    a, b = speech_span(mel)
    out = np.full((WINDOW, mel.shape[1]), -1.0)
    if b <= a:
        return out
    loud = np.clip(mel[a:b].mean(-1) + 1, 0, None)  # (b - a,) loudness above silence
    centre = a + int(round(float((loud * np.arange(b - a)).sum() / max(loud.sum(), 1e-9))))
    src = np.arange(WINDOW) + centre - CENTRE  # (WINDOW,) source frame of each window frame
    inside = (src >= a) & (src < b)
    out[inside] = mel[src[inside]]
    return out


class WordJudge:
    """Reads the digit said in a stretch of log-mel audio (see the module docstring)."""

    def __init__(self) -> None:
        mel, label = load_digit_audio("train")
        x = np.stack([_window(m) for m in mel.numpy()]).reshape(len(mel), -1)
        pca = PCA(n_components=64, svd_solver="full")
        clf = LogisticRegression(C=1.0, max_iter=2000)
        self.pipeline = Pipeline([("pca", pca), ("clf", clf)]).fit(x, label.numpy())

    def predict(self, pieces: list[np.ndarray]) -> np.ndarray:
        """Digits (N,) of N stretches of audio, each (frames, mels)."""
        if not pieces:
            return np.zeros(0, dtype=np.int64)
        x = np.stack([_window(np.asarray(p, dtype=np.float64)) for p in pieces])
        return self.pipeline.predict(x.reshape(len(x), -1)).astype(np.int64)


@lru_cache(maxsize=1)
def word_judge() -> WordJudge:
    """A fitted ``WordJudge``, memoised in-process."""
    return WordJudge()


def read_frames(video: Tensor) -> np.ndarray:
    """(b, T, 1, 8, 8) -> (b, T) digits, -1 where the frame is blank."""
    b, t = video.shape[:2]
    flat = video.reshape(b * t, -1).clamp(-1, 1)
    digits = frame_judge().predict(flat)
    blank = (flat.max(1).values < BLANK).numpy()
    return np.where(blank, -1, digits).reshape(b, t)


def runs(row: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of equal non-blank values: [(digit, first, last)) in order."""
    out, start = [], 0
    for j in range(1, len(row) + 1):
        if j == len(row) or row[j] != row[start]:
            if row[start] >= 0:
                out.append((int(row[start]), start, j))
            start = j
    return out


@dataclass
class SyncReport:
    """``sync``: share of seen segments heard as the same digit; ``onset_error``: mean video
    frames between a digit's appearance and its word's onset; ``segments``: how many."""

    sync: float
    onset_error: float
    segments: int


def sync(video: Tensor, audio: Tensor, hop: int) -> SyncReport:
    """Agreement of clips' video (b, T, 1, 8, 8) and audio (b, T * hop, mels) in time."""
    if audio.shape[1] != video.shape[1] * hop:
        raise ValueError(
            f"sync: audio of {audio.shape[1]} frames does not span {video.shape[1]} video "
            f"frames of {hop} audio frames each"
        )
    seen = read_frames(video)
    pieces, digits, errors = [], [], []
    mel = audio.float().numpy()
    for i in range(len(seen)):
        voiced = voiced_frames(mel[i])  # (L,)
        for digit, first, last in runs(seen[i]):
            onset, word = word_during(mel[i], voiced, first * hop, last * hop)
            digits.append(digit)
            pieces.append(word)
            # nothing said while the digit is shown: off by the whole time it is shown
            errors.append(float(last - first) if onset is None else abs(onset / hop - first))
    heard = word_judge().predict([p for p in pieces if p is not None])
    it = iter(heard)
    agree = [p is not None and next(it) == d for p, d in zip(pieces, digits, strict=True)]
    n = len(digits)
    return SyncReport(
        sync=float(np.mean(agree)) if n else 0.0,
        onset_error=float(np.mean(errors)) if n else float("nan"),
        segments=n,
    )


def word_onset(voiced: np.ndarray, at: int, high: int) -> int | None:
    """The onset of the word said in audio frames [at, high): of the voiced runs overlapping
    them, the one overlapping most (a word ending just after ``at`` is the one before); None
    if nothing is voiced there."""
    best, onset, j = 0, None, 0
    while j < len(voiced):
        if not voiced[j]:
            j += 1
            continue
        k = j
        while k < len(voiced) and voiced[k]:
            k += 1
        overlap = min(k, high) - max(j, at)
        if overlap > best:
            best, onset = overlap, j
        j = k
    return onset


def word_during(
    mel: np.ndarray, voiced: np.ndarray, at: int, high: int
) -> tuple[int | None, np.ndarray | None]:
    """(onset, frames) of the word said in audio frames [at, high) of one clip's (L, mels)
    ``mel`` (``voiced``: its speech frames): the voiced run overlapping them most, whole from
    its onset to its end; (None, None) if nothing is voiced there."""
    onset = word_onset(voiced, at, high)
    if onset is None:
        return None, None
    end = onset
    while end < len(voiced) and voiced[end]:
        end += 1
    return onset, mel[onset:end]


def heard_in(audio: Tensor, spans: list[list[tuple[int, int]]]) -> list[np.ndarray]:
    """Per clip, the digits read from the audio (b, L, mels) in the given [start, end) audio
    spans (each cut to its voiced frames; an unvoiced span reads as -1)."""
    mel = audio.float().numpy()
    out = []
    for i, row in enumerate(spans):
        pieces = [mel[i, s:e] for s, e in row]
        voiced = [speech_span(p) for p in pieces]
        said = [p[a:b] for p, (a, b) in zip(pieces, voiced, strict=True) if b > a]
        read = iter(word_judge().predict(said))
        out.append(np.array([next(read) if b > a else -1 for a, b in voiced]))
    return out


def heard_during(audio: Tensor, spans: list[list[tuple[int, int]]]) -> list[np.ndarray]:
    """Per clip, the word said during each [start, end) audio span: the voiced run overlapping
    it most (``word_onset``), read whole from its onset; -1 where nothing is voiced. What a
    shown digit's time span hears, whatever part of the span the word starts in."""
    mel = audio.float().numpy()
    out = []
    for i, row in enumerate(spans):
        voiced = voiced_frames(mel[i])  # (L,)
        words = [word_during(mel[i], voiced, s, e)[1] for s, e in row]
        read = iter(word_judge().predict([w for w in words if w is not None]))
        out.append(np.array([-1 if w is None else next(read) for w in words]))
    return out


def seen_in(video: Tensor, spans: list[list[tuple[int, int]]]) -> list[np.ndarray]:
    """Per clip, the digit most frames show in each [first, last) span of video frames
    (b, T, 1, 8, 8); -1 where they are all blank."""
    read = read_frames(video)
    out = []
    for i, row in enumerate(spans):
        digits = []
        for first, last in row:
            shown = read[i, first:last]
            shown = shown[shown >= 0]
            digits.append(int(np.bincount(shown).argmax()) if len(shown) else -1)
        out.append(np.array(digits))
    return out


def segment_accuracy(read: list[np.ndarray], want: list[list[int]]) -> float:
    """Share of segments read as wanted."""
    pairs = [(r, w) for rs, ws in zip(read, want, strict=True) for r, w in zip(rs, ws, strict=True)]
    return float(np.mean([r == w for r, w in pairs])) if pairs else 0.0


def real_clips(dataset, n: int) -> tuple[Tensor, Tensor, list]:
    """The first n clips of a ``DigitStringsDataset``: video, audio and their segments."""
    items = [dataset[i] for i in range(n)]
    video = torch.stack([it["video"] for it in items])
    audio = torch.stack([it["audio"] for it in items])
    return video, audio, [dataset.segments(i) for i in range(n)]
