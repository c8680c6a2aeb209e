"""An HTML gallery of an ``evaluate_digits`` run: pictures, sounds and the metrics table.

``write_gallery`` writes ``OUT/gallery/``: one PNG grid per task (rows are digits), the given
conditions (captions, real images, real recordings), a few WAV files per digit, and a plain
``index.html`` (no scripts) that shows them all with ``<audio controls>`` players.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from torch import Tensor

from anydit.data.digits import DIGIT_NAMES
from anydit.eval.metrics import TASKS, format_table
from anydit.modalities.logmel import logmel_image, write_logmel_wav
from anydit.modalities.pictures import display_scale, write_grid

__all__ = ["write_gallery"]

MAX_PER_DIGIT = 10  # columns of a grid
WAV_PER_DIGIT = 2

_TITLES = {
    **{t: t.replace("_to_", " → ") for t in TASKS if t != "joint"},
    "joint": "joint: image, audio and label together",
}

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 75em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; font-size: 90%; }
img { image-rendering: pixelated; margin: 0.3em 0.5em 0.3em 0; vertical-align: top; }
.bad { color: #b00; } .good { color: #080; }
figure { display: inline-block; margin: 0 1em 0 0; }
audio { height: 2em; }
"""


def _first(labels: Tensor | np.ndarray, k: int, m: int) -> list[int]:
    """Indices of the first ``m`` samples labelled ``k``."""
    return [int(i) for i in np.nonzero(np.asarray(labels).reshape(-1) == k)[0][:m]]


def _order(labels: Tensor | np.ndarray, per_digit: int) -> list[int]:
    """Indices of the first ``per_digit`` samples of each digit, digit-major."""
    return [i for k in range(len(DIGIT_NAMES)) for i in _first(labels, k, per_digit)]


def _columns(labels: Tensor | np.ndarray) -> int:
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=len(DIGIT_NAMES))
    return int(max(1, min(MAX_PER_DIGIT, counts.max())))


def _grid(path: Path, images: Tensor, nrow: int, target: int = 256) -> str:
    """Write a grid of (N, C, H, W) pictures; returns the file name."""
    write_grid(path, images, nrow=nrow, scale=display_scale(*images.shape[-2:], target=target))
    return path.name


def _spectrograms(path: Path, mels: Tensor, nrow: int) -> str:
    return _grid(path, logmel_image(mels), nrow, target=96)


def _figure(src: str, caption: str) -> str:
    return (
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


class _Sounds:
    """Writes WAVs (Griffin-Lim) into the gallery; the same log-mel is written only once."""

    def __init__(self, out: Path, params, iters: int) -> None:
        self.out, self.params, self.iters = out, params, iters
        self.written: dict[bytes, str] = {}

    def wav(self, stem: str, mel: Tensor, seed: int) -> str:
        """The file name of a WAV of ``mel`` (L, mels)."""
        key = mel.detach().cpu().float().numpy().tobytes()
        if key not in self.written:
            write_logmel_wav(self.out / f"{stem}.wav", mel, self.params, self.iters, seed)
            self.written[key] = f"{stem}.wav"
        return self.written[key]

    def players(self, stem: str, mels: Tensor, labels, per_digit: int) -> str:
        """WAVs for ``per_digit`` samples of each digit; an HTML table of players."""
        rows = []
        for k in range(len(DIGIT_NAMES)):
            cells = []
            for j, i in enumerate(_first(labels, k, per_digit)):
                src = html.escape(self.wav(f"{stem}_{DIGIT_NAMES[k]}_{j}", mels[i], seed=i))
                cells.append(f'<td><audio controls preload="none" src="{src}"></audio></td>')
            if cells:
                rows.append(f"<tr><th>{DIGIT_NAMES[k]}</th>{''.join(cells)}</tr>")
        return f"<table>{''.join(rows)}</table>" if rows else ""


def _printable(text: str) -> str:
    """Escape for HTML, showing control characters as a middle dot."""
    return html.escape("".join(c if c.isprintable() else "·" for c in text))


def _text_table(labels, texts: list[str], predicted, per_digit: int) -> str:
    """Strings laid out like the grids, one row per digit; judged-wrong ones in red."""
    rows = []
    for k in range(len(DIGIT_NAMES)):
        cells = []
        for i in _first(labels, k, per_digit):
            ok = predicted is None or int(predicted[i]) == k
            cells.append(f'<td class="{"good" if ok else "bad"}">{_printable(texts[i])}</td>')
        if cells:
            rows.append(f"<tr><th>{DIGIT_NAMES[k]}</th>{''.join(cells)}</tr>")
    return f"<table>{''.join(rows)}</table>"


def _names(ids) -> list[str]:
    return [DIGIT_NAMES[int(i)] if 0 <= int(i) < len(DIGIT_NAMES) else "?" for i in ids]


class _Section:
    """One task's layout: which samples are shown, in what order, and where files go."""

    def __init__(
        self, out: Path, model, name: str, result: dict, sounds: _Sounds, per_digit: int
    ) -> None:
        self.out, self.model, self.name, self.result = out, model, name, result
        self.sounds, self.wav_per_digit = sounds, per_digit
        self.labels = np.asarray(result["labels"]).reshape(-1)  # (N,)
        self.nrow = _columns(self.labels)
        self.order = _order(self.labels, self.nrow)

    def pictures(self, stem: str, x: Tensor, what: str, audio: bool = False) -> str:
        """A grid of the shown samples of images (N, 1, H, W) or log-mels (N, L, mels)."""
        if not self.order:
            return ""
        path = self.out / f"{self.name}{stem}.png"
        src = (
            _spectrograms(path, x[self.order], self.nrow)
            if audio
            else _grid(path, x[self.order], self.nrow)
        )
        return _figure(src, what)

    def players(self, stem: str, mels: Tensor, per_digit: int) -> str:
        return self.sounds.players(f"{self.name}{stem}", mels, self.labels, per_digit)

    def texts(self, title: str, texts: list[str], judged: bool) -> str:
        predicted = self.result["predicted"] if judged else None
        table = _text_table(self.labels, texts, predicted, self.nrow)
        return f"<h3>{html.escape(title)}</h3>{table}"

    def given(self) -> list[str]:
        """The conditions: real images, real recordings (pictures and players), captions."""
        given, parts = self.result["given"], []
        if "image" in given:
            parts.append(self.pictures("_given", given["image"], "given: real test images"))
        if "audio" in given:
            what = "given: real test recordings (log-mel)"
            parts.append(self.pictures("_given", given["audio"], what, audio=True))
            parts.append("<h3>given recordings</h3>" + self.players("_given", given["audio"], 1))
        if "text" in given:
            parts.append(self.texts("given captions", list(given["text"]), judged=False))
        if "label" in given:
            parts.append(f"<p>Given labels: one row per digit, {self.nrow} samples each.</p>")
        return parts

    def generated(self) -> list[str]:
        """The outputs: image grids, spectrograms and players, labels, captions."""
        generated, parts = self.result["generated"], []
        if "image" in generated:
            parts.append(self.pictures("", generated["image"], "generated images"))
        if "audio" in generated:
            mels, stem = generated["audio"], "_audio" if "image" in generated else ""
            parts.append(self.pictures(stem, mels, "generated audio (log-mel)", audio=True))
            per_digit = 1 if self.name == "joint" else self.wav_per_digit
            parts.append("<h3>generated audio</h3>" + self.players("", mels, per_digit))
        if "label" in generated and self.name != "joint":
            parts.append(self.texts("generated labels", _names(generated["label"]), judged=True))
        if "text" in generated:
            decoded = self.model.modalities["text"].decode(generated["text"])
            parts.append(self.texts("generated captions", decoded, judged=True))
        if self.name == "joint":
            parts.append(_joint_table(self.result, self.order))
        return parts


def _task_section(section: _Section, accuracy: float | None) -> str:
    """The HTML section of one task, writing its pictures and sounds."""
    name = section.name
    parts = [f'<h2 id="{name}">{html.escape(_TITLES.get(name, name))}</h2>']
    if accuracy is not None:
        by = "the generated label" if name == "joint" else "the given digit"
        parts.append(f"<p>Judged correct: {100 * accuracy:.1f}%. Ordered by {by}.</p>")
    return "\n".join(parts + section.given() + section.generated())


def _joint_table(result: dict, order: list[int]) -> str:
    """Generated label vs. what the judges read in the generated image and audio."""
    labels = np.asarray(result["labels"]).reshape(-1)
    image, audio = result["predicted"], result["predicted_audio"]
    rows = ["<tr><th>#</th><th>label</th><th>image judge</th><th>audio judge</th></tr>"]
    for i in order:
        ok = labels[i] == image[i] == audio[i]
        cells = "".join(f"<td>{v}</td>" for v in [i, *_names([labels[i], image[i], audio[i]])])
        rows.append(f'<tr class="{"good" if ok else "bad"}">{cells}</tr>')
    return "<h3>agreement</h3><table>" + "".join(rows) + "</table>"


def _metrics_html(metrics: dict) -> str:
    """The Markdown table of ``format_table`` as an HTML table."""
    lines = format_table(metrics).splitlines()
    rows = []
    for j, line in enumerate(lines):
        if j == 1:
            continue  # the Markdown alignment row
        cells = [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]
        tag = "th" if j == 0 else "td"
        rows.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


REGION = {"cache": "region", "cache_ratio": 0.5, "cache_interval": 8}  # the gallery's RAS


def token_maps(computed: Tensor, grid: tuple[int, int], patch: int) -> Tensor:
    """Pictures of which image tokens were computed: (r, tokens) bool over a token ``grid``
    (rows, columns) -> (r, 1, rows x patch, columns x patch) in [-1, 1]: light grey (0.4)
    computed, dark (-0.8) kept; the grid's white lines stay visible between them."""
    maps = computed.float().reshape(-1, 1, *grid) * 1.2 - 0.8
    return maps.repeat_interleave(patch, -2).repeat_interleave(patch, -1)


def _region_section(out: Path, model, config) -> str:
    """Label -> image with region-adaptive sampling (``REGION``): per digit, which image tokens
    each evaluation computed, then the sample."""
    import dataclasses

    import torch

    from anydit.sampling import sample

    m = model.modalities["image"]
    _, height, width = m.cfg.shape
    grid = (height // m.cfg.patch, width // m.cfg.patch)
    stats: dict = {}
    guidance = config.guidance  # a dict is per task source: the label's here
    guidance = guidance.get("label", 1.0) if isinstance(guidance, dict) else guidance
    config = dataclasses.replace(config, guidance=guidance, **REGION)
    labels = torch.arange(len(DIGIT_NAMES))
    task = {"image": "generate", "label": labels}
    images = sample(model, task, n=len(labels), seed=0, config=config, stats=stats)["image"]
    trace = [e["image"][: len(labels)] for e in stats["computed"]]  # the conditional rows
    maps = torch.stack([token_maps(e, grid, m.cfg.patch) for e in trace], 1)  # (10, E, 1, h, w)
    tiles = torch.cat([maps, images[:, None].clamp(-1, 1)], 1).flatten(0, 1)
    name = _grid(out / "region.png", tiles, nrow=len(trace) + 1, target=64)
    share = stats["tokens_computed"] / stats["tokens"]
    return (
        "<h2 id='region'>region-adaptive sampling: which image tokens are computed</h2>\n"
        f"<p>label → image, {config.steps} steps of {config.solver}, <code>cache: region</code>, "
        f"ratio {REGION['cache_ratio']}, every token on the first two evaluations and on one "
        f"in {REGION['cache_interval']} after: per digit (rows), each evaluation's image tokens "
        "(light computed, dark carried from their last computation), then the sample. All "
        f"streams together: {100 * share:.0f}% of the token-evaluations computed.</p>\n"
        + _figure(name, "tokens computed per evaluation, then the sample")
    )


def write_gallery(
    out_dir: str | Path,
    model,
    results: dict,
    metrics: dict,
    wav_per_digit: int = WAV_PER_DIGIT,
    griffin_lim_iters: int = 32,
    region=None,
) -> Path:
    """Write ``out_dir/gallery/``: per-task grids, WAVs and ``index.html``.

    Args:
        results: what ``evaluate_digits`` returned (its ``samples`` are used).
        metrics: the metrics to show (``results`` without ``samples`` is fine).
        wav_per_digit: WAVs per digit of generated audio (the joint task and the given real
            recordings get one per digit).
        griffin_lim_iters: phase-recovery iterations per WAV (fewer is faster and rougher).
        region: a ``SampleConfig``: add a section on region-adaptive sampling (label -> image
            with ``REGION``'s settings on top of it: which tokens each evaluation computed).

    Returns:
        The path of ``index.html``.
    """
    out = Path(out_dir) / "gallery"
    out.mkdir(parents=True, exist_ok=True)
    samples = results.get("samples", {})
    sounds = _Sounds(out, model.modalities["audio"].mel, griffin_lim_iters)
    sections = [
        _task_section(
            _Section(out, model, name, samples[name], sounds, wav_per_digit), metrics.get(name)
        )
        for name in TASKS
        if name in samples
    ]
    if region is not None and {"image", "label"} <= set(model.modalities):
        sections.append(_region_section(out, model, region))
    toc = " · ".join(f'<a href="#{n}">{html.escape(_TITLES[n])}</a>' for n in TASKS if n in samples)
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>anydit digits gallery</title>"
        f"<style>{_STYLE}</style></head><body>\n<h1>digits: samples and metrics</h1>\n"
        f"{_metrics_html({k: v for k, v in metrics.items() if k != 'samples'})}\n<p>{toc}</p>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
