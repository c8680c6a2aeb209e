"""Editing and in-context tasks on ``digit-edits``, judged on real data.

* ``editing``: the source (slot 2) and the edit's class given, the target (slot 3) made; the
  example slots are made too (sampled, so marginalised out).
* ``in_context``: the example pair and the source (slots 0-2) given, the edit dropped: the
  example alone says what to do.

:class:`EditJudge` reads a target as ``digit * 4 + form`` (``FORMS``: plain, rotated,
inverted, thick): the image judge's pipeline fit on every train digit in each form. A made
target is right when the judge reads the intended digit *and* form. Style is kept when a made
target is closer (pixel MSE) to its intended target (the source under the edit) than to the
other images of that class under the same edit (``next`` has no intended image, so it is left
out of the style measures).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from anydit.config import SampleConfig
from anydit.data.digit_edits import (
    EDIT_FORM,
    EDITS,
    FORMS,
    DigitEditsDataset,
    form_of,
    target_class,
)
from anydit.data.digits import load_digit_images
from anydit.eval.judges import ImageJudge
from anydit.sampling import Generate, sample

EDIT_TASKS = ("editing", "in_context")


class EditJudge(ImageJudge):
    """Classifier of (digit, form) for images (N, 1, 8, 8): 40 classes, ``digit * 4 + form``."""

    def _data(self, split: str) -> tuple[Tensor, Tensor]:
        x, y = load_digit_images(split)
        xs = torch.cat([form_of(x, f) for f in range(len(FORMS))])
        ys = torch.cat([y * len(FORMS) + f for f in range(len(FORMS))])
        return xs, ys


@lru_cache(maxsize=1)
def edit_judge() -> EditJudge:
    """A fitted ``EditJudge``, memoised in-process."""
    return EditJudge().fit()


def _check_model(model) -> None:
    mods = model.modalities
    if "slots" not in mods or mods["slots"].kind != "slots" or "edit" not in mods:
        raise ValueError(
            "digit-edits tasks: expected a model with a 'slots' stream (kind slots, 4 slots of "
            f"1x8x8) and an 'edit' label, as data.source digit-edits makes; got {list(mods)}"
        )
    if mods["slots"].shape != (4, 1, 8, 8):
        raise ValueError(
            f"digit-edits tasks: modality 'slots' has shape {mods['slots'].shape}; expected "
            "(4, 1, 8, 8)"
        )
    if not model.cfg.per_token_time:
        raise ValueError(
            "digit-edits tasks give some slots of a generated stream, which needs a model built "
            "with per_token_time = true"
        )


def style_kept(made: Tensor, intended: Tensor, others: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """made, intended (n, 1, 8, 8) and others (n, k, 1, 8, 8): per sample the pixel MSE to the
    intended image, the mean MSE to the others, and whether the first is smaller."""
    to_intended = (made - intended).pow(2).mean((1, 2, 3))
    to_others = (made[:, None] - others).pow(2).mean((2, 3, 4)).mean(1)
    return to_intended, to_others, to_intended < to_others


def evaluate_edits(
    model,
    split: str = "test",
    n: int | None = None,
    config: SampleConfig | None = None,
    seed: int = 0,
    tasks: tuple[str, ...] = EDIT_TASKS,
    samples: dict | None = None,
    others: int = 16,
) -> dict[str, float]:
    """Scores of ``tasks`` on the first ``n`` items of ``split`` (every item by default): per
    task the accuracy over all edits and per edit, the style measures, and the judge's
    accuracy on the real targets (its ceiling). ``samples`` receives the made slots per task.
    ``others``: images of the target class each style comparison uses."""
    unknown = sorted(set(tasks) - set(EDIT_TASKS))
    if unknown:
        raise ValueError(f"digit-edits tasks: unknown {unknown}; expected some of {EDIT_TASKS}")
    _check_model(model)
    data = DigitEditsDataset(split, seed=seed)
    n = len(data) if n is None else min(n, len(data))
    items = [data[i] for i in range(n)]
    slots = torch.stack([it["slots"] for it in items])  # (n, 4, 1, 8, 8)
    edits = torch.stack([it["edit"] for it in items])  # (n,)
    digits = data.labels[:n]
    want = target_class(digits, edits)  # (n,)
    judge = edit_judge()
    real = judge.predict(slots[:, 3]) == want.numpy()
    out: dict[str, float] = {"real_accuracy": float(real.mean())}
    # Style: the other images of the intended class, under the same edit.
    rng = np.random.default_rng([seed, 5])
    by_digit = [np.nonzero(data.labels.numpy() == d)[0] for d in range(10)]
    pool = []
    for i in range(n):
        choices = [j for j in by_digit[int(digits[i])] if j != i]
        pool.append(rng.choice(choices, size=others, replace=len(choices) < others))
    other_images = data.images[torch.from_numpy(np.stack(pool))]  # (n, k, 1, 8, 8)
    forms = [EDIT_FORM[EDITS[int(e)]] for e in edits]
    other_images = torch.stack([form_of(other_images[i], forms[i]) for i in range(n)])
    styled = edits != EDITS.index("next")
    slot_mod = model.modalities["slots"]
    config = config or SampleConfig()
    for task in tasks:
        given = (2,) if task == "editing" else (0, 1, 2)
        role = Generate(known=slots, mask=slot_mod.slot_mask(given, n))
        spec = {"slots": role, "edit": edits if task == "editing" else "drop"}
        got = sample(model, spec, n=n, config=config, seed=seed + 1)["slots"].detach().cpu()
        if samples is not None:
            samples[task] = {"slots": got, "edit": edits}
        made = got[:, 3]
        right = judge.predict(made) == want.numpy()
        out[f"{task}_accuracy"] = float(right.mean())
        for e, name in enumerate(EDITS):
            sel = (edits == e).numpy()
            if sel.any():
                out[f"{task}_{name}"] = float(right[sel].mean())
        to_intended, to_others, kept = style_kept(made, slots[:, 3], other_images)
        out[f"{task}_style_kept"] = float(kept[styled].float().mean())
        out[f"{task}_mse_intended"] = float(to_intended[styled].mean())
        out[f"{task}_mse_others"] = float(to_others[styled].mean())
    out["count"] = float(n)
    return out
