"""The digits metrics and gallery: keys and ranges on a tiny model, the logic on fakes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import anydit
from anydit.data.digits import digits_modalities, load_digit_images
from anydit.eval import metrics as metrics_module
from anydit.eval.gallery import write_gallery
from anydit.eval.metrics import (
    BARS,
    TASKS,
    evaluate_digits,
    format_table,
    frechet_distance,
    parse_digit,
    passes,
)

ACCURACIES = (*TASKS, "joint_image_label", "joint_audio_label")
ACCURACIES += ("judge_image_real_acc", "judge_audio_real_acc")
OTHERS = (
    "diversity_generated",
    "diversity_real",
    "diversity_ratio",
    "nearest_train_generated",
    "nearest_train_real",
    "nearest_train_ratio",
    "fid_image",
    "fid_audio",
)


@pytest.fixture(scope="module")
def model() -> anydit.MMDiT:
    torch.manual_seed(0)
    return anydit.MMDiT(digits_modalities(), anydit.preset("debug"))


@pytest.fixture(scope="module")
def results(model: anydit.MMDiT) -> dict:
    return evaluate_digits(model, n_per_class=2, steps=2)


def test_every_metric_is_present_and_in_range(results: dict) -> None:
    assert set(results) == {*ACCURACIES, *OTHERS, "samples"}
    for key in ACCURACIES:
        assert 0.0 <= results[key] <= 1.0, key
    for key in OTHERS:
        assert isinstance(results[key], float) and math.isfinite(results[key]), key
    assert results["fid_image"] >= 0 and results["fid_audio"] >= 0
    s = results["samples"]
    assert s["label_to_image"]["generated"]["image"].shape == (20, 1, 8, 8)
    assert s["label_to_audio"]["generated"]["audio"].shape == (20, 32, 32)
    assert s["text_to_image"]["given"]["text"][0] == "zero"  # first template, digit 0
    assert set(s["joint"]["generated"]) == {"image", "audio", "label"}


def test_same_seed_same_numbers(model: anydit.MMDiT, results: dict) -> None:
    again = evaluate_digits(model, n_per_class=2, steps=2, tasks=["label_to_image", "joint"])
    assert again["label_to_image"] == results["label_to_image"]
    assert again["fid_image"] == results["fid_image"]
    assert again["joint"] == results["joint"]


def _fake_sampler(shift: int, calls: list):
    """A 'generator' that returns real test images of (given label + shift) % 10."""
    images, labels = load_digit_images("test")

    def fake(model, task, n, **kw):
        calls.append((task, n, kw))
        wanted = (torch.as_tensor(task["label"]) + shift) % 10
        picks = [int(torch.nonzero(labels == k)[j % 36]) for j, k in enumerate(wanted.tolist())]
        return {"image": images[picks], "label": torch.as_tensor(task["label"])}

    return fake


def test_label_to_image_with_a_perfect_and_a_wrong_generator(
    model: anydit.MMDiT, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list = []
    monkeypatch.setattr(metrics_module, "sample", _fake_sampler(0, calls))
    good = evaluate_digits(model, n_per_class=5, tasks=["label_to_image"], seed=3)
    assert good["label_to_image"] >= 0.9
    assert 0.8 <= good["diversity_ratio"] <= 1.2  # real images are as diverse as real images
    assert len(calls) == 1 and calls[0][1] == 50 and calls[0][2]["seed"] == 3  # one batch
    monkeypatch.setattr(metrics_module, "sample", _fake_sampler(1, calls))
    bad = evaluate_digits(model, n_per_class=5, tasks=["label_to_image"])
    assert bad["label_to_image"] <= 0.1


@pytest.mark.parametrize(
    ("caption", "digit"),
    [
        ("the digit 7", 7),
        ("a handwritten seven", 7),
        ("an image of an eight", 8),
        ("SEVEN 7", 7),
        ("seven or 8", None),
        ("the number 17", None),
        ("someone", None),
        ("", None),
    ],
)
def test_parse_digit(caption: str, digit: int | None) -> None:
    assert parse_digit(caption) == digit


def test_frechet_distance() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(8.0, rel=1e-6)  # |shift|^2
    # b = 2a: mean term |mu|^2, and tr(C) + tr(4C) - 2 tr(2C) = tr(C)
    want = np.sum(a.mean(0) ** 2) + np.trace(np.cov(a, rowvar=False))
    assert frechet_distance(a, 2.0 * a) == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="features"):
        frechet_distance(a, a[:, :4])


def test_format_table_marks_pass_and_fail() -> None:
    m = {"label_to_image": 0.95, "joint": 0.5, "diversity_ratio": 1.0, "fid_image": 3.0}
    assert passes(m) == {"label_to_image": True, "joint": False, "diversity_ratio": True}
    table = format_table(m)
    assert re.search(r"label -> image \| 95\.0% \| >= 95% \| PASS", table)
    assert re.search(r"joint .*\| 50\.0% \| >= 90% \| FAIL", table)
    assert "FID image" in table and "text -> image" not in table
    assert set(BARS) <= set(TASKS) | {"diversity_ratio", "nearest_train_ratio"}
    assert len(TASKS) == 13  # every directed pair of four modalities, and joint
    assert passes({"nearest_train_ratio": 1.2}) == {"nearest_train_ratio": True}
    assert passes({"diversity_ratio": float("nan")}) == {"diversity_ratio": False}


def test_gallery_references_existing_files(
    tmp_path: Path, model: anydit.MMDiT, results: dict
) -> None:
    metrics = {k: v for k, v in results.items() if k != "samples"}
    region = anydit.SampleConfig(steps=10, guidance={"label": 2.0})
    index = write_gallery(tmp_path, model, results, metrics, wav_per_digit=1, griffin_lim_iters=2,
                          region=region)  # fmt: skip
    assert index == tmp_path / "gallery" / "index.html"
    page = index.read_text()
    refs = re.findall(r'src="([^"]+)"', page)
    assert refs and all((index.parent / r).is_file() for r in refs)
    for task in TASKS:
        assert f'id="{task}"' in page
    assert (index.parent / "label_to_image.png").is_file()
    assert (index.parent / "label_to_audio.png").is_file()
    wavs = {r for r in refs if r.endswith(".wav")}
    assert len(wavs) >= 20  # label -> audio, joint, and the given recordings (written once)
    assert not any(w.startswith("audio_to_label_given") for w in wavs)  # same as audio_to_image
    assert "<audio controls" in page and "FAIL" in page
    assert "id='region'" in page and (index.parent / "region.png").is_file()


def test_token_maps_show_computed_tokens_light_over_their_patches() -> None:
    from anydit.eval.gallery import token_maps

    computed = torch.tensor([[True, False, False, True]])  # a 2 x 2 token grid
    maps = token_maps(computed, (2, 2), patch=3)
    assert maps.shape == (1, 1, 6, 6)
    light, dark = torch.tensor(0.4), torch.tensor(-0.8)
    assert torch.allclose(maps[0, 0, :3, :3], light) and torch.allclose(maps[0, 0, :3, 3:], dark)
    assert torch.allclose(maps[0, 0, 3:, 3:], light) and torch.allclose(maps[0, 0, 3:, :3], dark)


def test_guidance_per_task_source() -> None:
    """A dict guides only the tasks whose given modality (or "joint") it names."""
    from conftest import randomize

    torch.manual_seed(0)
    model = anydit.MMDiT(digits_modalities(), anydit.preset("debug"))
    randomize(model, std=0.2)  # zero-initialised outputs would ignore guidance
    tasks = ("label_to_image", "text_to_image")
    kw = {"n_per_class": 1, "steps": 2, "tasks": tasks}
    plain = evaluate_digits(model, **kw)["samples"]
    label_only = evaluate_digits(model, guidance={"label": 3.0}, **kw)["samples"]
    both = evaluate_digits(model, guidance=3.0, **kw)["samples"]
    image = {
        k: {t: s[t]["generated"]["image"] for t in tasks}
        for k, s in [("plain", plain), ("label", label_only), ("both", both)]
    }
    assert not torch.allclose(image["label"]["label_to_image"], image["plain"]["label_to_image"])
    torch.testing.assert_close(image["label"]["label_to_image"], image["both"]["label_to_image"])
    torch.testing.assert_close(image["label"]["text_to_image"], image["plain"]["text_to_image"])
    with pytest.raises(ValueError, match=r"guidance names \['lable'\]"):
        evaluate_digits(model, guidance={"lable": 2.0}, **kw)


def test_per_task_settings_reach_the_sampler_and_are_checked(monkeypatch) -> None:
    """Each ``TaskSampling`` field reaches ``sample`` for its task only; ``via`` adds generated
    modalities that are then discarded; the split chooses the given data and the seeds."""
    import anydit.eval.metrics as metrics
    from anydit.eval.metrics import TaskSampling

    calls = []
    real = metrics.sample

    def recording(model, task, **kw):
        calls.append((dict(task), kw))
        return real(model, task, **kw)

    monkeypatch.setattr(metrics, "sample", recording)
    torch.manual_seed(0)
    model = anydit.MMDiT(digits_modalities(), anydit.preset("debug"))
    setting = TaskSampling(guidance=2.0, steps=3, interval=(0.1, 0.9), temperature=0.5)
    per_task = {
        "image_to_audio": TaskSampling(via=("label",), solver="heun", steps=2, first=("label",)),
        "image_to_label": setting,
    }
    tasks = ("image_to_audio", "image_to_label", "audio_to_label")
    out = evaluate_digits(model, n_per_class=1, steps=2, tasks=tasks, per_task=per_task)
    (t_audio, kw_audio), (t_label, kw_label), (t_plain, kw_plain) = calls
    assert t_audio["label"] == "generate" and t_audio["audio"] == "generate"
    assert kw_audio["solver"] == "heun" and kw_audio["steps"] == 2
    assert kw_audio["first"] == ("label",) and kw_label["first"] == ()
    assert set(out["samples"]["image_to_audio"]["generated"]) == {"audio"}  # label discarded
    assert kw_label["guidance"] == 2.0 and kw_label["steps"] == 3
    assert kw_label["guidance_interval"] == (0.1, 0.9) and kw_label["temperature"] == 0.5
    assert t_plain["label"] == "generate" and torch.is_tensor(t_plain["audio"])
    assert kw_plain["steps"] is None and kw_plain["solver"] is None  # the shared settings
    assert kw_plain["seed"] == TASKS.index("audio_to_label")
    # val: other given images, other seeds
    calls.clear()
    evaluate_digits(model, n_per_class=1, steps=2, tasks=("image_to_label",), split="val")
    ((t_val, kw_val),) = calls
    assert kw_val["seed"] == 1000 + TASKS.index("image_to_label")
    assert not torch.equal(t_val["image"], t_label["image"])
    for bad, match in [
        ({"joint": TaskSampling(via=("text",))}, "cannot be sampled along"),
        ({"image_to_label": TaskSampling(via=("image",))}, "cannot be sampled along"),
        ({"image_to_lable": TaskSampling()}, "unknown tasks"),
    ]:
        with pytest.raises(ValueError, match=match):
            evaluate_digits(model, n_per_class=1, tasks=("image_to_label",), per_task=bad)
    with pytest.raises(ValueError, match="split must be"):
        evaluate_digits(model, n_per_class=1, tasks=("image_to_label",), split="train")


def test_per_task_settings_are_checked_before_anything_runs(monkeypatch) -> None:
    import anydit.eval.metrics as metrics
    from anydit.eval.metrics import TaskSampling, override_tasks

    monkeypatch.setattr(metrics, "_Run", None)  # nothing may start before the checks
    model = anydit.MMDiT(digits_modalities(), anydit.preset("debug"))
    for per_task, match in [
        ({"image_to_label": TaskSampling(via="text")}, r"via: expected a tuple"),
        ({"image_to_label": TaskSampling(steps=0)}, r"per_task\['image_to_label'\].*steps"),
        ({"label_to_image": TaskSampling(solver="rk9")}, r"per_task\['label_to_image'\]"),
        ({"joint": TaskSampling(via=("text",))}, r"joint samples every modality"),
        ({"image_to_text": TaskSampling(first=("label",))}, r"first: expected a tuple of its via"),
        ({"image_to_text": TaskSampling(via=("label",), first="label")}, r"first: expected a"),
    ]:
        with pytest.raises(ValueError, match=match):
            evaluate_digits(model, n_per_class=1, per_task=per_task)
    # joint may have its own steps or guidance (no `via`): accepted, reaches the sampler
    with pytest.raises(TypeError):  # _Run is None: the checks passed, the run would start
        evaluate_digits(model, n_per_class=1, per_task={"joint": TaskSampling(steps=4)})
    tasks = {"a": TaskSampling(guidance=2.0, steps=3, via=("label",), solver="heun")}
    out = override_tasks(tasks, guidance=1.0, steps=None, interval=None)
    assert out["a"] == TaskSampling(steps=3, via=("label",), solver="heun")
