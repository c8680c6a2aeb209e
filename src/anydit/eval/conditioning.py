"""Measures of conditioning beyond paired streams on the digits: a control branch
(``model.control``) and reference sharing (``sampling.reference``). The image judge reads the
digit; pixel error against the source image, next to the error against the other images of its
class, says whether a digit's own strokes (its style) were kept, not just its class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anydit.data.controls import make_control
from anydit.data.digits import load_digit_images
from anydit.eval.judges import get_judges
from anydit.model.control import ControlBranch, controlled
from anydit.sampling import sample
from anydit.sampling.reference import shared_reference


def evaluate_control(
    model,
    branch: ControlBranch,
    control: str,
    split: str = "test",
    strengths: tuple[float, ...] = (1.0,),
    steps: int = 16,
    seed: int = 0,
    limit: int | None = None,
    guidance: float = 1.0,
    samples: dict | None = None,
) -> dict:
    """Per strength (with ``guidance`` on the control, ``controlled``): ``accuracy`` (the judge
    reads the source digit in the generated image), ``mse`` (mean squared pixel error against
    the source image, pixels in [-1, 1]) and
    ``mse_same_class`` (against the other images of the source's class, averaged: the error
    a right digit in another hand would have). Baselines: the judge on the real images and
    on the control maps themselves (for ``lowres``, the blocky upscale), and the control map's
    own pixel error. Every other modality is dropped: the control alone steers. ``samples``,
    when given, receives the pictures of a gallery: ``source`` and ``map`` (N, C, H, W), and
    per strength ``made`` (a dict strength -> (N, C, H, W))."""
    stream = branch.cfg.stream
    images, labels = load_digit_images(split)  # (N, 1, 8, 8), (N,)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    maps = make_control(control, images)
    comparable = maps.shape == images.shape and control.startswith("lowres")  # pixels vs pixels
    judge, _ = get_judges()
    device = next(model.parameters()).device
    task = {n: "drop" for n in model.modalities} | {stream: "generate"}
    out = {
        "control": control,
        "split": split,
        "count": len(labels),
        "steps": steps,
        "guidance": guidance,
        "real_accuracy": float((torch.from_numpy(judge.predict(images)) == labels).float().mean()),
        "map_accuracy": float((torch.from_numpy(judge.predict(maps)) == labels).float().mean())
        if comparable
        else None,
        "map_mse": float(F.mse_loss(maps, images)) if comparable else None,
        "strengths": {},
    }
    if samples is not None:
        samples |= {"source": images, "map": maps, "made": {}}
    for strength in strengths:
        with controlled(model, branch, maps.to(device), strength, guidance):
            got = sample(model, task, n=len(labels), steps=steps, seed=seed)[stream].cpu()
        got = got.float().clamp(-1, 1)
        if samples is not None:
            samples["made"][str(strength)] = got
        read = torch.from_numpy(judge.predict(got))
        out["strengths"][str(strength)] = {
            "accuracy": float((read == labels).float().mean()),
            "mse": float(F.mse_loss(got, images)),
            "mse_same_class": _same_class_error(got, images, labels),
        }
    return out


def _same_class_error(got, images, labels) -> float:
    """Mean over samples of the squared pixel error to the other images of the source's
    class (the source itself left out)."""
    total = 0.0
    for i in range(len(labels)):
        others = images[(labels == labels[i]) & (torch.arange(len(labels)) != i)]
        total += float((others - got[i]).pow(2).mean())
    return total / len(labels)


def evaluate_reference(
    model,
    split: str = "test",
    weights: tuple[float, ...] = (0.0, 1.0),
    steps: int = 16,
    guidance: float = 1.5,
    seed: int = 0,
    limit: int | None = None,
    time: float = 1.0,
) -> dict:
    """label -> image with each held-out image as the shared reference of its own sample
    (``shared_reference`` at ``time``): per weight, ``accuracy`` (the judge reads the asked
    label), ``mse`` to the reference and ``mse_same_class``; and ``other_accuracy``, the
    judge reading the asked label when the reference is an image of the next digit (the label
    must still win over the reference's class), with ``other_mse`` to that reference."""
    images, labels = load_digit_images(split)  # (N, 1, 8, 8), (N,)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    judge, _ = get_judges()
    device = next(model.parameters()).device
    # the reference of the "other" rows: an image of the next digit (the whole split, cycled)
    pool, pool_labels = load_digit_images(split)
    by_class = [torch.nonzero(pool_labels == d).flatten() for d in range(10)]
    nxt = [by_class[(int(y) + 1) % 10] for y in labels]
    others = pool[torch.stack([ids[i % len(ids)] for i, ids in enumerate(nxt)])]
    task = {n: "drop" for n in model.modalities} | {"image": "generate", "label": labels}
    kw = {"steps": steps, "guidance": guidance, "guidance_interval": (0.3, 1.0), "seed": seed}
    out = {"split": split, "count": len(labels), "steps": steps, "guidance": guidance}
    out["time"] = time
    out["weights"] = {}
    for w in weights:
        row = {}
        for name, refs in (("own", images), ("other", others)):
            with shared_reference(model, "image", refs.to(device), w, time=time):
                got = sample(model, task, n=len(labels), **kw)["image"].cpu().float().clamp(-1, 1)
            read = torch.from_numpy(judge.predict(got))
            prefix = "" if name == "own" else "other_"
            row[prefix + "accuracy"] = float((read == labels).float().mean())
            row[prefix + "mse"] = float(F.mse_loss(got, refs))
            if name == "own":
                row["mse_same_class"] = _same_class_error(got, images, labels)
        out["weights"][str(w)] = row
    return out
