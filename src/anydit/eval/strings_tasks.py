"""The ``digit-strings`` tasks and their measures (judges: ``eval.strings``).

Each task samples ``n`` clips of the held-out split and scores what was generated, per time
segment of the real clip it is conditioned on:

* ``joint``: video, audio and caption together, nothing given: ``sync`` and ``onset_error``.
* ``video_to_audio`` (dubbing): the word said during each shown digit's time span.
* ``audio_to_video``: the digit most frames show where the real clip shows each word's digit.
* ``caption_to_av``: video and audio from the caption: the digits seen (runs of frames) and
  heard (voiced runs) in the caption's order (longest common subsequence over the longer of
  the two sequences); and their ``sync``.
* ``prediction``: the audio and the first digit's frames given, the other frames generated.
* ``interpolation``: the audio and the first and last digits' frames given.
* ``continuation``: the video and the first word's audio given (its whole 4-frame tokens:
  up to 3 last frames of the word are generated), the rest of the audio generated.

* ``streaming``: video and audio together, nothing given, ``STREAM_WINDOWS`` model windows
  long, made chunk by chunk (``sampling.stream``, half a window of context): ``sync`` and
  ``onset_error`` over the whole clip, and ``streaming_rtf``, the sampling wall time over the
  seconds of audio made (under 1: faster than real time).

For the three completions, the accuracy is over the filled-in segments only and ``_seam`` is
the share of clips whose first generated frame after the given ones (continuation: the first
generated word) is read as the digit that follows. Partial givens need a model with
``per_token_time``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from anydit.config import SampleConfig
from anydit.data.digit_strings import DigitStringsDataset, StringsLayout, layout_for
from anydit.data.digits import mel_params
from anydit.eval.strings import (
    heard_during,
    heard_in,
    read_frames,
    real_clips,
    runs,
    seen_in,
    segment_accuracy,
    sync,
    voiced_frames,
)
from anydit.sampling import Generate, sample
from anydit.sampling.stream import stream

STRING_TASKS = (
    "joint",
    "video_to_audio",
    "audio_to_video",
    "caption_to_av",
    "prediction",
    "interpolation",
    "continuation",
    "streaming",
)
STREAM_WINDOWS = 4  # streaming: clips this many model windows long
COMPLETIONS = ("prediction", "interpolation", "continuation")


def _layout_of(model, lengths: tuple[int, ...] = ()) -> StringsLayout:
    """The clip layout a model was built for, saying one of ``lengths`` digits; a clear error
    when it is not a digit-strings model."""
    mods = model.modalities
    missing = [n for n in ("video", "audio", "text") if n not in mods]
    if missing:
        raise ValueError(
            f"digit-strings tasks: the model has no modalities {missing}; expected video, audio "
            f"and text (got {sorted(mods)})"
        )
    return layout_for(model.modality_configs, lengths)


def _in_order(read: list[int], want: list[int]) -> float:
    """How well ``read`` spells ``want`` in order: their longest common subsequence over the
    longer of the two. A missing digit and an extra run (a word split in two, a run of frames
    broken by a misread) each cost one position, not every one after it; and a long run of
    random readings, which contains almost any 4 digits in order, scores low."""
    best = [0] * (len(want) + 1)
    for r in read:
        prev = 0
        for j, w in enumerate(want, 1):
            prev, best[j] = best[j], prev + 1 if r == w else max(best[j], best[j - 1])
    return best[-1] / max(len(want), len(read)) if want else 0.0


def _collapse(digits: list[int]) -> list[int]:
    """Repeated neighbours as one (two fours in a row show as one run of frames)."""
    return [d for k, d in enumerate(digits) if k == 0 or digits[k - 1] != d]


def _words(audio: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per clip, its voiced runs [start, end)."""
    voiced = voiced_frames(audio.float().numpy())  # (b, L)
    return [[(f, last) for _, f, last in runs(np.where(row, 1, -1))] for row in voiced]


def evaluate_strings(
    model,
    n: int = 100,
    config: SampleConfig | None = None,
    split: str = "test",
    seed: int = 0,
    tasks: tuple[str, ...] = STRING_TASKS,
    samples: dict | None = None,
    lengths: tuple[int, ...] = (),
    unnamed: str = "drop",
) -> dict[str, float]:
    """Scores of ``tasks`` on ``n`` clips of ``split`` (see the module docstring): a flat dict
    ``{task_measure: value}``. ``samples``, a dict, receives per task what was sampled (every
    stream, given ones too) and ``"real"`` the real clips, for galleries. ``lengths``: digits
    a clip says (the run's ``data.strings_lengths``; default the layout's). ``unnamed``: what
    becomes of the streams a task neither gives nor scores (the label string; the caption but
    in ``joint`` and ``caption_to_av``): ``"drop"`` them, or ``"generate"`` them alongside and
    discard them (streaming always drops them). ``config.isolation`` applies to the tasks that
    generate two token streams or more (joint, caption -> AV, streaming), the others sample
    without it."""
    if unnamed not in ("drop", "generate"):
        raise ValueError(f"digit-strings tasks: unnamed must be drop|generate, got {unnamed!r}")
    unknown = sorted(set(tasks) - set(STRING_TASKS))
    if unknown:
        raise ValueError(f"digit-strings tasks: unknown {unknown}; expected some of {STRING_TASKS}")
    layout = _layout_of(model, lengths)
    if set(tasks) & set(COMPLETIONS) and min(layout.lengths) < 2:
        raise ValueError(
            "digit-strings tasks: prediction, interpolation and continuation fill in the digits "
            f"after the first, so they need clips of 2 or more digits (lengths {layout.lengths})"
        )
    if set(tasks) & {*COMPLETIONS, "streaming"} and not model.cfg.per_token_time:
        raise ValueError(
            "digit-strings tasks: prediction, interpolation, continuation and streaming give "
            "part of a stream, which needs a model built with per_token_time = true"
        )
    hop = layout.hop
    data = DigitStringsDataset(split, seed=seed, layout=layout, size=n)
    video, audio, segments = real_clips(data, n)
    captions = [data[i]["text"] for i in range(n)]
    want = [[s.digit for s in row] for row in segments]
    shown = [[(s.first, s.last) for s in row] for row in segments]
    config = config or SampleConfig()
    out: dict[str, float] = {}

    def draw(task: dict, name: str) -> dict[str, torch.Tensor]:
        if unnamed == "generate":
            task = {**dict.fromkeys(model.modalities, "generate"), **task}
        got = sample(model, task, n=n, config=_for_task(model, task, config), seed=seed + 1)
        got = {k: v.detach().cpu() for k, v in got.items()}  # the judges read numpy
        if samples is not None:
            samples[name] = got
        return got

    if samples is not None:
        samples["real"] = {"video": video, "audio": audio}

    if "joint" in tasks:
        got = draw({"video": "generate", "audio": "generate", "text": "generate"}, "joint")
        report = sync(got["video"], got["audio"], hop)
        out |= {"joint_sync": report.sync, "joint_onset_error": report.onset_error}
    if "video_to_audio" in tasks:
        got = draw({"video": video, "audio": "generate"}, "video_to_audio")
        spans = [[(f * hop, last * hop) for f, last in row] for row in shown]
        out["video_to_audio"] = segment_accuracy(heard_during(got["audio"], spans), want)
    if "audio_to_video" in tasks:
        got = draw({"audio": audio, "video": "generate"}, "audio_to_video")
        out["audio_to_video"] = segment_accuracy(seen_in(got["video"], shown), want)
    if "caption_to_av" in tasks:
        got = draw({"text": captions, "video": "generate", "audio": "generate"}, "caption_to_av")
        seen = [[d for d, _, _ in runs(row)] for row in read_frames(got["video"])]
        words = _words(got["audio"])
        heard = heard_in(got["audio"], words)
        out["caption_to_video"] = float(
            np.mean([_in_order(s, _collapse(w)) for s, w in zip(seen, want, strict=True)])
        )
        out["caption_to_audio"] = float(
            np.mean([_in_order(list(h), w) for h, w in zip(heard, want, strict=True)])
        )
        out["caption_to_av_sync"] = sync(got["video"], got["audio"], hop).sync
    for task in (t for t in COMPLETIONS if t in tasks):
        out |= _completion(task, draw, video, audio, segments, want, hop)
    if "streaming" in tasks:
        start = time.perf_counter()
        roles = {"video": "generate", "audio": "generate"}
        got = stream(model, roles, STREAM_WINDOWS, 0.5, n=n, seed=seed + 1, config=config)
        seconds = time.perf_counter() - start
        if samples is not None:
            samples["streaming"] = {k: v.detach().cpu() for k, v in got.items()}
        report = sync(got["video"].cpu(), got["audio"].cpu(), hop)
        mel = mel_params()
        made = n * got["audio"].shape[1] * mel.hop / mel.sample_rate  # seconds of audio
        out |= {
            "streaming_sync": report.sync,
            "streaming_onset_error": report.onset_error,
            "streaming_rtf": seconds / made,
        }
    return out


def _for_task(model, task: dict, config: SampleConfig) -> SampleConfig:
    """``config`` for one task: its isolation only where the task generates two token streams
    or more (it cuts generated streams apart), 1 elsewhere."""
    made = [
        k
        for k, r in task.items()
        if isinstance(r, Generate) or (isinstance(r, str) and r == "generate")
    ]
    moving = [k for k in made if k in model.streams]
    if config.isolation == 1.0 or len(moving) >= 2:
        return config
    return dataclasses.replace(config, isolation=1.0)


def _completion(task, draw, video, audio, segments, want, hop) -> dict[str, float]:
    """A completion task: what is given, what is filled, read per filled segment."""
    known = torch.zeros_like(video if task != "continuation" else audio, dtype=torch.bool)
    filled = []  # per clip, indices of the segments generated
    for i, row in enumerate(segments):
        keep = [0] if task != "interpolation" else [0, len(row) - 1]
        for k in keep:
            s = row[k]
            if task == "continuation":
                known[i, : s.end] = True  # the first word and the silence before it
            else:
                known[i, s.first : s.last] = True
        filled.append([k for k in range(len(row)) if k not in keep])
    if task == "continuation":
        roles = {"video": video, "audio": Generate(known=audio, mask=known)}
        got = draw(roles, task)["audio"]
        read = heard_in(got, [[(s.start, s.end) for s in row] for row in segments])
        seam = [r[1] == w[1] for r, w in zip(read, want, strict=True)]  # the next word
    else:
        roles = {"audio": audio, "video": Generate(known=video, mask=known)}
        got = draw(roles, task)["video"]
        read = seen_in(got, [[(s.first, s.last) for s in row] for row in segments])
        frames = read_frames(got)  # the first frame after the given ones shows the next digit
        seam = [frames[i, row[0].last] == row[1].digit for i, row in enumerate(segments)]
    acc = segment_accuracy(
        [r[f] for r, f in zip(read, filled, strict=True)],
        [[w[k] for k in f] for w, f in zip(want, filled, strict=True)],
    )
    return {task: acc, f"{task}_seam": float(np.mean(seam))}
