"""The ``digits`` metrics: one set of numbers for the demo, ``anydit eval`` and the README.

Each task conditions the model on something (a label, a caption, a real held-out image or
recording) and asks a judge trained only on real data whether the output matches it: every
directed pair of image, label, text and audio (``SOURCE_to_TARGET``, twelve), and ``joint``
(image, audio and label sampled together). Images and speech are judged by classifiers fit on
the train split, labels are read directly, captions by ``parse_digit``.

Plus sample diversity against real data, distance to the nearest training image (memorisation)
and Fréchet distances in the judges' PCA feature spaces. Every task is one batched
``sample`` call with its own seed (``seed + task index``), so results are reproducible. The
given images and recordings come from one split: ``test`` for reported numbers, ``val`` (other
images, other unheard voices) for choosing sampler settings. On ``val`` every task draws other
seeds (``VAL_SEED_OFFSET``) and the real references (diversity, nearest-train distance) are the
val images, so tasks that are given only labels or nothing are not scored on the very samples
the test numbers use.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from anydit.config import SampleConfig
from anydit.data.digits import (
    DIGIT_NAMES,
    caption_templates,
    digits_modalities,
    format_caption,
    load_digit_audio,
    load_digit_images,
)
from anydit.eval.judges import (
    diversity,
    get_judges,
    nearest_train_distance,
    real_diversity,
    real_nearest_train_distance,
)
from anydit.model.dynamic import forward_flops, network_share, routers, width_counts
from anydit.sampling import sample
from anydit.sampling import settings as sampling_settings

__all__ = [
    "BARS",
    "TASKS",
    "TaskSampling",
    "conditional_task",
    "evaluate_digits",
    "override_tasks",
    "format_table",
    "frechet_distance",
    "parse_digit",
    "passes",
    "sample_task",
    "task_patterns",
]

MODALITIES = ("image", "label", "text", "audio")
# Every directed pair, grouped by target, then joint. A task's seed offset is its index here.
TASKS = (
    "label_to_image",
    "text_to_image",
    "audio_to_image",
    "label_to_audio",
    "text_to_audio",
    "image_to_audio",
    "image_to_label",
    "text_to_label",
    "audio_to_label",
    "label_to_text",
    "image_to_text",
    "audio_to_text",
    "joint",
)

# Metric -> (low, high), both inclusive: the bar a trained digits model must clear (test split:
# held-out images, voices never heard in training).
BARS: dict[str, tuple[float, float]] = {
    "label_to_image": (0.95, 1.0),
    "text_to_image": (0.95, 1.0),
    "audio_to_image": (0.93, 1.0),
    "image_to_label": (0.95, 1.0),
    "audio_to_label": (0.98, 1.0),
    "label_to_audio": (0.90, 1.0),
    "image_to_text": (0.80, 1.0),
    "image_to_audio": (0.85, 1.0),
    "audio_to_text": (0.80, 1.0),
    "joint": (0.90, 1.0),
    "diversity_ratio": (0.85, 1.15),
    "nearest_train_ratio": (1.0, math.inf),
}


@dataclass(frozen=True)
class TaskSampling:
    """Sampler settings of one task beyond the shared ``SampleConfig``.

    guidance: this task's weight (None: the shared ``guidance``, by source). steps: sampling
    steps (None: the shared count). interval: the guidance interval (None: the shared one).
    temperature: softmax temperature of discrete unmasking (None: the shared one). solver:
    the ODE solver of continuous targets (None: the shared one).
    via: modalities generated together with the target and then discarded, e.g.
    ``("label",)`` for image -> audio: the pair is sampled from p(audio, label | image), so the
    digit is decided once and the speech follows it.
    first: of the ``via`` modalities, those sampled to the end before the target moves
    (``SampleConfig.first``): p(label | image), then p(text | label, image) -- ancestral
    sampling through the digit, which is all that links image and caption in the data.
    """

    guidance: float | None = None
    steps: int | None = None
    interval: tuple[float, float] | None = None
    temperature: float | None = None
    solver: str | None = None
    via: tuple[str, ...] = ()
    first: tuple[str, ...] = ()


_WORD = re.compile(r"[a-z]+|[0-9]+")


def parse_digit(caption: str) -> int | None:
    """The digit a caption names, or None unless exactly one digit is named.

    Digit names ("seven") and single numerals ("7") count; a name or numeral repeated is
    still one digit; a multi-digit number ("17") makes the caption invalid.
    """
    found: set[int] = set()
    for word in _WORD.findall(caption.lower()):
        if word.isdigit():
            if len(word) != 1:
                return None
            found.add(int(word))
        elif word in DIGIT_NAMES:
            found.add(DIGIT_NAMES.index(word))
    return found.pop() if len(found) == 1 else None


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (D, D) by eigen-decomposition."""
    vals, vecs = np.linalg.eigh((c + c.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fit to features a (N, F) and b (M, F).

    ``|mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a^1/2 C_b C_a^1/2)^1/2)``; the last trace
    is computed from the eigenvalues of a symmetric matrix, so it is stable and real.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"frechet_distance: expected features (N, F) and (M, F) with N, M >= 2, "
            f"got {a.shape} and {b.shape}"
        )
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # (F, F)
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a  # (F, F) symmetric PSD
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    mean_term = float(np.sum((a.mean(0) - b.mean(0)) ** 2))
    return max(0.0, mean_term + float(np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross))


def _check_model(model) -> None:
    text = model.modalities.get("text")
    tokenizer = text.cfg.tokenizer if text is not None else "digits-words"
    want = {
        c.name: c for c in digits_modalities(tokenizer if tokenizer == "bytes" else "digits-words")
    }
    for name, cfg in want.items():
        m = model.modalities.get(name)
        if m is None or m.cfg.kind != cfg.kind or tuple(m.shape) != tuple(cfg.shape):
            got = f"{m.cfg.kind} {tuple(m.shape)}" if m is not None else "nothing"
            raise ValueError(
                f"evaluate_digits needs the digits modalities; modality '{name}': expected "
                f"{cfg.kind} {tuple(cfg.shape)}, the model has {got}"
            )


def _real_per_class(x: Tensor, y: Tensor, labels: Tensor) -> Tensor:
    """For each wanted label, the next real item of that class, cycling: (N, *item)."""
    by_class = [torch.nonzero(y == k).flatten() for k in range(len(DIGIT_NAMES))]
    seen = [0] * len(by_class)
    picks = []
    for k in labels.tolist():
        picks.append(int(by_class[k][seen[k] % len(by_class[k])]))
        seen[k] += 1
    return x[torch.tensor(picks, dtype=torch.long)]


def _captions(labels: Tensor) -> list[str]:
    """A caption per label, cycling through the templates: deterministic."""
    templates = caption_templates()
    return [format_caption(templates[i % len(templates)], k) for i, k in enumerate(labels.tolist())]


def _share(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float:
    return float((np.asarray(a) == np.asarray(b)).mean())


def sample_task(
    model,
    name: str,
    task: dict,
    n: int,
    source: str,
    config: SampleConfig,
    per_task: dict[str, TaskSampling],
    seed: int,
) -> dict[str, Tensor]:
    """One task's samples with seed ``seed + TASKS.index(name)``. Guidance: the task's own
    weight if it has one, else the weight for ``source`` (what is given, or "joint") when
    ``config.guidance`` is a dict, else the one float."""
    setting = per_task.get(name, TaskSampling())
    w = config.guidance
    w = w.get(source, 1.0) if isinstance(w, dict) else w
    w = w if setting.guidance is None else setting.guidance
    out = sample(
        model,
        task,
        n=n,
        seed=seed + TASKS.index(name),
        config=config,
        guidance=w,
        steps=setting.steps,
        guidance_interval=setting.interval,
        temperature=setting.temperature,
        solver=setting.solver,
        first=setting.first,
    )
    return {k: v.detach().cpu() for k, v in out.items()}


def conditional_task(
    model,
    name: str,
    given: dict,
    labels: Tensor,
    config: SampleConfig,
    per_task: dict[str, TaskSampling],
    seed: int,
    judges=None,
) -> dict:
    """Task ``name`` (``SOURCE_to_TARGET``): sample the target given ``{source: value}`` (and
    any ``via`` modalities, then discarded) for N items whose digits are ``labels`` (N,), and
    read the digit of each output (image and speech by the judges, labels directly, captions
    by ``parse_digit``). Returns ``labels``, ``given``, ``generated`` and ``predicted`` (N,)."""
    (source,) = given
    target = name.split("_to_")[1]
    via = per_task.get(name, TaskSampling()).via
    task = {target: "generate", **{v: "generate" for v in via}, **given}
    x = sample_task(model, name, task, len(labels), source, config, per_task, seed)[target]
    judge_image, judge_audio = judges or get_judges()
    if target == "image":
        pred = judge_image.predict(x)
    elif target == "audio":
        pred = judge_audio.predict(x)
    elif target == "label":
        pred = x.numpy()
    else:
        texts = model.modalities["text"].decode(x)
        pred = np.array([-1 if (d := parse_digit(s)) is None else d for s in texts])
    return {
        "labels": labels,
        "given": given,
        "generated": {target: x},
        "predicted": np.asarray(pred, dtype=np.int64),
    }


class _Run:
    """Shared state of one evaluation: sampler settings, judges, real data, the given labels."""

    def __init__(
        self,
        model,
        n_per_class: int,
        config: SampleConfig,
        seed: int,
        split: str,
        per_task: dict[str, TaskSampling],
    ) -> None:
        self.model, self.config, self.per_task, self.split = model, config, per_task, split
        self.seed = seed + (VAL_SEED_OFFSET if split == "val" else 0)
        self.judge_image, self.judge_audio = get_judges()
        self.labels = torch.arange(len(DIGIT_NAMES)).repeat_interleave(n_per_class)  # (N,)
        images, image_labels = load_digit_images(split)  # test: (360, 1, 8, 8), (360,)
        audio, audio_labels = load_digit_audio(split)  # test: (150, 32, 32), (150,)
        self.real_images, self.real_audio = images, audio
        self.given_images = _real_per_class(images, image_labels, self.labels)  # (N, 1, 8, 8)
        self.given_audio = _real_per_class(audio, audio_labels, self.labels)  # (N, 32, 32)

    def sample(self, name: str, task: dict, n: int, source: str) -> dict[str, Tensor]:
        """One task's samples (see ``sample_task``)."""
        return sample_task(self.model, name, task, n, source, self.config, self.per_task, self.seed)

    def conditional(self, name: str, given: dict) -> dict:
        """Sample ``target`` given ``given``; judge it against ``self.labels``."""
        judges = (self.judge_image, self.judge_audio)
        return conditional_task(
            self.model, name, given, self.labels, self.config, self.per_task, self.seed, judges
        )

    def joint(self) -> dict:
        """Image, audio and label sampled together (text dropped)."""
        n = len(self.labels)
        task = {"image": "generate", "audio": "generate", "label": "generate", "text": "drop"}
        out = self.sample("joint", task, n, "joint")
        return {
            "labels": out["label"],
            "given": {},
            "generated": out,
            "predicted": self.judge_image.predict(out["image"]),
            "predicted_audio": self.judge_audio.predict(out["audio"]),
        }


def _run_task(run: _Run, name: str) -> dict:
    if name == "joint":
        return run.joint()
    source = name.split("_to_")[0]
    value = {
        "label": run.labels,
        "text": _captions(run.labels),
        "image": run.given_images,
        "audio": run.given_audio,
    }[source]
    return run.conditional(name, {source: value})


def _task_metrics(name: str, result: dict) -> dict[str, float]:
    if name != "joint":
        return {name: _share(result["predicted"], result["labels"])}
    image, audio = result["predicted"], result["predicted_audio"]
    label = result["labels"].numpy()
    return {
        "joint": float(((image == label) & (audio == label)).mean()),
        "joint_image_label": _share(image, label),
        "joint_audio_label": _share(audio, label),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(b) else float("nan")


def _image_statistics(run: _Run, images: Tensor, labels: Tensor) -> dict[str, float]:
    """Diversity, memorisation and FID of images generated for ``labels``."""
    div, div_real = diversity(images, labels)["mean"], real_diversity(run.split)["mean"]
    near, near_real = nearest_train_distance(images), real_nearest_train_distance(run.split)
    features = run.judge_image.features
    return {
        "diversity_generated": div,
        "diversity_real": div_real,
        "diversity_ratio": _ratio(div, div_real),
        "nearest_train_generated": near,
        "nearest_train_real": near_real,
        "nearest_train_ratio": _ratio(near, near_real),
        "fid_image": frechet_distance(features(images), features(run.real_images)),
    }


def _audio_statistics(run: _Run, audio: Tensor) -> dict[str, float]:
    features = run.judge_audio.features
    return {"fid_audio": frechet_distance(features(audio), features(run.real_audio))}


def _check_setting(name: str, setting: TaskSampling, config: SampleConfig) -> None:
    """Refuse a task's settings before anything runs, naming the task."""
    where = f"evaluate_digits: per_task[{name!r}]"
    if not isinstance(setting, TaskSampling):
        raise ValueError(f"{where}: expected a TaskSampling, got {type(setting).__name__}")
    via = setting.via
    if not isinstance(via, tuple) or not all(isinstance(v, str) for v in via):
        raise ValueError(f"{where}.via: expected a tuple of modality names, got {via!r}")
    ends = name.split("_to_") if name != "joint" else list(MODALITIES)
    bad = [v for v in via if v not in MODALITIES or v in ends]
    if bad:
        what = "joint samples every modality already" if name == "joint" else "not in the task"
        raise ValueError(
            f"{where}.via: {bad} cannot be sampled along ({what}; choose from "
            f"{[m for m in MODALITIES if m not in ends]})"
        )
    first = setting.first
    if not isinstance(first, tuple) or any(f not in via for f in first):
        raise ValueError(
            f"{where}.first: expected a tuple of its via modalities {list(via)}, got "
            f"{setting.first!r}"
        )
    try:
        sampling_settings(
            config,
            steps=setting.steps,
            guidance_interval=setting.interval,
            temperature=setting.temperature,
            solver=setting.solver,
            guidance=setting.guidance,
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def override_tasks(per_task: dict[str, TaskSampling], **shared) -> dict[str, TaskSampling]:
    """``per_task`` with the fields named in ``shared`` (``guidance``, ``steps``, ``interval``,
    ``temperature``, ``solver``) cleared wherever ``shared`` gives a value, so a setting given
    for every task (``--guidance``, ``--steps`` ...) wins over a task's own; ``via`` stays."""
    given = {k: None for k, v in shared.items() if v is not None}
    return {name: replace(s, **given) for name, s in per_task.items()}


EVAL_SAMPLING = SampleConfig(unmasking="confidence")  # captions come out spelled right
SOURCES = ("label", "text", "image", "audio", "joint")
VAL_SEED_OFFSET = 1000  # val draws seeds seed + 1000 + task index


def evaluate_digits(
    model,
    n_per_class: int = 20,
    config: SampleConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    tasks: tuple[str, ...] | list[str] = TASKS,
    split: str = "test",
    per_task: dict[str, TaskSampling] | None = None,
    **settings,
) -> dict:
    """Evaluate a model over the digits modalities (image, label, text, audio).

    Args:
        n_per_class: samples per digit and task (``joint`` draws ``10 * n_per_class``).
        config: the sampler settings (default ``EVAL_SAMPLING``: confidence-ordered unmasking);
            ``settings`` (steps=..., guidance=..., any ``SampleConfig`` field) replace fields
            of it. ``joint`` has nothing given, so there guidance pulls each generated modality
            towards agreement with the others. ``guidance`` may be a dict {source: w} with
            sources "label", "text", "image", "audio" (the given modality of a task) and
            "joint"; a source it does not name is not guided.
        seed: task ``i`` of ``TASKS`` samples with seed ``seed + i`` (``val``: plus
            ``VAL_SEED_OFFSET``).
        tasks: a subset of ``TASKS`` to run (image statistics need ``label_to_image``,
            ``fid_audio`` needs ``label_to_audio``).
        split: where the given images and recordings come from: "test" (the reported numbers)
            or "val" (for choosing settings).
        per_task: {task: ``TaskSampling``}: a task's own guidance, steps or ``via``
            modalities, over the shared settings.

    Returns:
        A flat dict of floats: one accuracy in [0, 1] per task, ``joint_image_label``,
        ``joint_audio_label``, diversity / nearest-train values and ratios, ``fid_image``,
        ``fid_audio``, ``judge_image_real_acc``, ``judge_audio_real_acc`` (the judges on the
        split's real data); plus ``samples`` (not a metric): per task
        ``{"labels", "given", "generated", "predicted"}``.
    """
    config = sampling_settings(config or EVAL_SAMPLING, **settings)
    per_task = dict(per_task or {})
    unknown = [t for t in [*tasks, *per_task] if t not in TASKS]
    if unknown:
        raise ValueError(f"evaluate_digits: unknown tasks {unknown}; expected some of {TASKS}")
    if split not in ("val", "test"):
        raise ValueError(f"evaluate_digits: split must be 'val' or 'test', got {split!r}")
    for name, setting in per_task.items():
        _check_setting(name, setting, config)
    if not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(
            f"evaluate_digits: n_per_class must be an integer >= 1, got {n_per_class!r}"
        )
    _check_model(model)
    if isinstance(config.guidance, dict):
        bad = sorted(set(config.guidance) - set(SOURCES))
        if bad:
            raise ValueError(
                f"evaluate_digits: guidance names {bad}; expected some of {', '.join(SOURCES)}"
            )
    run = _Run(model, n_per_class, config, seed, split, per_task)
    metrics: dict = {
        "judge_image_real_acc": run.judge_image.accuracy_on_real(split),
        "judge_audio_real_acc": run.judge_audio.accuracy_on_real(split),
    }
    samples: dict[str, dict] = {}
    # timestep-dynamic width: what each task's sampling cost, against one forward's FLOPs
    split = forward_flops(model) if routers(model) else None
    width_counts(model, reset=True)
    counted = [0, 0]
    for name in tqdm(list(tasks), desc="evaluate", disable=not progress):
        samples[name] = _run_task(run, name)
        metrics.update(_task_metrics(name, samples[name]))
        if split is not None:
            ran, dense = width_counts(model, reset=True)
            counted = [counted[0] + ran, counted[1] + dense]
            metrics[f"flops_share/{name}"] = network_share(model, ran, dense, split)
    if split is not None:
        metrics["mlp_share"] = counted[0] / counted[1]
        metrics["flops_share"] = network_share(model, *counted, split)
    if "label_to_image" in samples:
        s = samples["label_to_image"]
        metrics.update(_image_statistics(run, s["generated"]["image"], s["labels"]))
    if "label_to_audio" in samples:
        metrics.update(_audio_statistics(run, samples["label_to_audio"]["generated"]["audio"]))
    metrics["samples"] = samples
    return metrics


def passes(metrics: dict) -> dict[str, bool]:
    """For each bar in ``BARS`` whose metric is present: whether the metric clears it."""
    out = {}
    for key, (low, high) in BARS.items():
        value = metrics.get(key)
        if value is not None:
            out[key] = math.isfinite(value) and low <= value <= high
    return out


_ROWS = (
    *((t, t.replace("_to_", " -> ")) for t in TASKS if t != "joint"),
    ("joint", "joint (image = audio = label)"),
    ("joint_image_label", "joint: image = label"),
    ("joint_audio_label", "joint: audio = label"),
)
_OTHER_ROWS = (
    ("diversity_ratio", "diversity / real"),
    ("nearest_train_ratio", "nearest-train distance / real"),
    ("fid_image", "FID image (judge features)"),
    ("fid_audio", "FID audio (judge features)"),
    ("judge_image_real_acc", "image judge on the real given data"),
    ("judge_audio_real_acc", "audio judge on the real given data"),
    ("mlp_share", "dynamic width: MLP multiply-adds run, share of dense"),
    ("flops_share", "dynamic width: sampling FLOPs, share of the dense network's"),
)
_PERCENT = {k for k, _ in _ROWS} | {
    "judge_image_real_acc",
    "judge_audio_real_acc",
    "mlp_share",
    "flops_share",
}


def _cell(key: str, value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.1f}%" if key in _PERCENT else f"{value:.3f}"


def _bar(key: str) -> str:
    if key not in BARS:
        return ""
    low, high = BARS[key]
    if key in _PERCENT:
        return f">= {100 * low:.0f}%"
    return f">= {low:g}" if math.isinf(high) else f"{low:g} - {high:g}"


def format_table(metrics: dict) -> str:
    """A Markdown table of the metrics present: value, bar and PASS/FAIL where a bar exists."""
    ok = passes(metrics)
    lines = ["| metric | value | bar | |", "|---|---:|---|---|"]
    for key, title in _ROWS + _OTHER_ROWS:
        if key not in metrics:
            continue
        mark = ("PASS" if ok[key] else "FAIL") if key in ok else ""
        lines.append(f"| {title} | {_cell(key, metrics[key])} | {_bar(key)} | {mark} |")
    return "\n".join(lines)


def task_patterns(per_task: dict[str, TaskSampling] | None = None) -> list[str]:
    """The role pattern of each of ``TASKS`` as ``anydit prune --task`` reads it
    (``"image -> label text"``: the source given, the target and its ``via`` generated, the rest
    dropped)."""
    per_task = {} if per_task is None else per_task
    out = []
    for name in TASKS:
        if name == "joint":
            out.append("-> image audio label")
            continue
        source, target = name.split("_to_")
        via = per_task.get(name, TaskSampling()).via
        out.append(f"{source} -> {' '.join((target, *via))}")
    return out
