"""Layout tasks on ``digit-layouts``, judged on real data.

* ``layout_to_image``: the layout given, the canvas made. ``boxes``: the share of asked boxes
  whose 8x8 crop the image judge reads as the asked digit; ``ink_outside``: the share of the
  canvas's ink ((x + 1) / 2, summed) that lies outside every asked box, averaged over samples
  (real canvases: 0).
* ``image_to_layout``: the canvas given, the layout made (detection). ``found``: the share of
  real boxes matched by a made box of the same digit with intersection over union >= 0.5;
  ``count``: the share of samples with as many made boxes as real ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydit.config import SampleConfig
from anydit.data.digit_layouts import BOXES, CANVAS, DIGIT, DigitLayoutsDataset
from anydit.eval.judges import get_judges
from anydit.sampling import sample

LAYOUT_TASKS = ("layout_to_image", "image_to_layout")


def _check_model(model) -> None:
    mods = model.modalities
    image, layout = mods.get("image"), mods.get("layout")
    if (
        image is None
        or layout is None
        or layout.kind != "layout"
        or tuple(image.shape) != (1, CANVAS, CANVAS)
        or tuple(layout.shape) != (BOXES, 5)
    ):
        raise ValueError(
            "digit-layouts tasks: expected a model with an 'image' (1, 24, 24) and a 'layout' "
            f"(kind layout, {BOXES} boxes), as data.source digit-layouts makes; got "
            f"{ {n: (m.kind, tuple(m.shape)) for n, m in mods.items()} }"
        )


def box_pixels(row: Tensor) -> tuple[int, int, int, int]:
    """A layout row's corners in canvas pixels, (x0, y0, x1, y1), rounded."""
    x0, y0, x1, y1 = (int(round(float(v) * CANVAS)) for v in row[:4])
    return x0, y0, x1, y1


def crops(canvas: Tensor, layout: Tensor) -> tuple[Tensor, Tensor]:
    """canvas (n, 1, H, W), layout (n, B, 5) -> the 8x8 crops of the used boxes (k, 1, 8, 8)
    (resized where a box is not 8x8) and their asked digits (k,)."""
    images, digits = [], []
    for c, rows in zip(canvas, layout, strict=True):
        for row in rows:
            if row[4] < 0:
                continue
            x0, y0, x1, y1 = box_pixels(row)
            crop = c[:, y0:y1, x0:x1]
            if crop.shape[-2:] != (DIGIT, DIGIT):
                crop = torch.nn.functional.interpolate(
                    crop[None], size=(DIGIT, DIGIT), mode="bilinear", align_corners=False
                )[0]
            images.append(crop)
            digits.append(int(row[4]))
    return torch.stack(images), torch.tensor(digits)


def ink_outside(canvas: Tensor, layout: Tensor) -> Tensor:
    """(n,) share of each canvas's ink outside the union of its used boxes."""
    ink = (canvas.clamp(-1, 1) + 1) / 2  # (n, 1, H, W)
    inside = torch.zeros_like(ink, dtype=torch.bool)
    for i, rows in enumerate(layout):
        for row in rows:
            if row[4] >= 0:
                x0, y0, x1, y1 = box_pixels(row)
                inside[i, :, y0:y1, x0:x1] = True
    total = ink.sum((1, 2, 3)).clamp(min=1e-6)
    return (ink * ~inside).sum((1, 2, 3)) / total


def iou(a: Tensor, b: Tensor) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    h = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = w * h
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


def detection(made: Tensor, real: Tensor, threshold: float = 0.5) -> tuple[float, float]:
    """(share of real boxes found, share of samples with the right box count): a real box is
    found by an unused made box of its digit with IoU >= ``threshold``."""
    found = total = right_count = 0
    for m_rows, r_rows in zip(made, real, strict=True):
        used = [r for r in m_rows if r[4] >= 0]
        want = [r for r in r_rows if r[4] >= 0]
        right_count += len(used) == len(want)
        for r in want:
            total += 1
            for k, m in enumerate(used):
                if int(m[4]) == int(r[4]) and iou(m[:4], r[:4]) >= threshold:
                    found += 1
                    used.pop(k)
                    break
    return found / max(total, 1), right_count / max(len(real), 1)


def evaluate_layouts(
    model,
    split: str = "test",
    n: int | None = None,
    config: SampleConfig | None = None,
    seed: int = 0,
    tasks: tuple[str, ...] = LAYOUT_TASKS,
    samples: dict | None = None,
) -> dict[str, float]:
    """Scores of ``tasks`` on the first ``n`` items of ``split`` (every item by default), with
    the same measures on the real canvases (``real_*``). ``samples`` receives what was made."""
    unknown = sorted(set(tasks) - set(LAYOUT_TASKS))
    if unknown:
        raise ValueError(f"digit-layouts tasks: unknown {unknown}; expected some of {LAYOUT_TASKS}")
    _check_model(model)
    data = DigitLayoutsDataset(split, seed=seed)
    n = len(data) if n is None else min(n, len(data))
    items = [data[i] for i in range(n)]
    canvas = torch.stack([it["image"] for it in items])  # (n, 1, 24, 24)
    layout = torch.stack([it["layout"] for it in items])  # (n, 3, 5)
    judge = get_judges()[0]

    def box_accuracy(images: Tensor) -> float:
        x, y = crops(images, layout)
        return float((judge.predict(x) == y.numpy()).mean())

    out = {
        "real_boxes": box_accuracy(canvas),
        "real_ink_outside": float(ink_outside(canvas, layout).mean()),
    }
    config = config or SampleConfig()
    if "layout_to_image" in tasks:
        got = sample(model, {"image": "generate", "layout": layout}, n=n, config=config, seed=seed)
        made = got["image"].detach().cpu()
        out["layout_to_image_boxes"] = box_accuracy(made)
        out["layout_to_image_ink_outside"] = float(ink_outside(made, layout).mean())
        if samples is not None:
            samples["layout_to_image"] = {"image": made, "layout": layout}
    if "image_to_layout" in tasks:
        got = sample(model, {"layout": "generate", "image": canvas}, n=n, config=config, seed=seed)
        made = got["layout"].detach().cpu()
        found, count = detection(made, layout)
        out |= {"image_to_layout_found": found, "image_to_layout_count": count}
        if samples is not None:
            samples["image_to_layout"] = {"image": canvas, "layout": made}
    out["count"] = float(n)
    return out


__all__ = ["LAYOUT_TASKS", "crops", "detection", "evaluate_layouts", "ink_outside", "iou"]
