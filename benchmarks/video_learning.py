"""Why the video kind learns slowly: label <-> video on moving digits, one factor at a time.

Data: clips of T frames of one sklearn digit (1 x 8 x 8) drifting by at most one pixel per frame
(a random walk of offsets in [-1, 1]^2, uncovered pixels background), paired with its label.
Every variant trains the demo's network (width 128, depth 4, 2 heads of 64) for the same number
of steps at the same batch and lr, with an EMA, and is judged on clips of the test digits:

* label -> video: each generated frame read by a judge fit on shifted real digits (the demo's
  PCA + SVC, trained on every train digit at all nine one-pixel offsets); ``frames`` = share
  of frames read as the label, ``clips`` = share of clips whose every frame is.
* video -> label: the label sampled from a real test clip.
* consistent: share of generated clips whose frames are all read as one digit.

Variants (``--variants``, comma separated):

* image: one 8x8 frame as an image modality (16 tokens): the reference.
* centred: ``image`` without offsets (the demo's data).
* frame1: a one-frame video (16 tokens).
* video: T frames, 2x2 patches (16 T tokens): the slow case.
* static: T copies of one frame (no motion).
* tube: T frames, tokens of all T frames x 2 x 2 (``patch_t = T``: 16 tokens).
* shiftS: ``video`` with the timestep shift S (more training time near noise, SD3 5.3.2).
* auto: ``video`` with the kind's default shift (sqrt(T / patch_t)).
* fixed: ``video`` with the kind's defaults, shift sqrt(T / patch_t) and loss weight
  T / patch_t; ``video`` and the others have shift 1 and loss weight 1.
* notime: ``video`` without the time axis in rotary positions (frames told apart only by
  content).
* pooled: ``video`` with ``model.pooled_cond`` (every stream's mean token in every adaLN
  input: a clip-wide summary each frame sees).
* partial: ``video`` with per-token times, a third of the generated clips having a random
  share of their tokens given (frames learn from each other, as in prediction).
* lossT: ``video`` with the loss weight T (the label's share of the loss as with one frame).

    python benchmarks/video_learning.py --steps 1500 --variants image,frame1,video,shift2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import anydit
from anydit.config import ModalityConfig
from anydit.data.digit_strings import shift_image
from anydit.data.digits import load_digit_images
from anydit.eval.judges import frame_judge
from anydit.flow import training_loss
from anydit.train.ema import ema_decay, ema_update, make_ema
from anydit.train.optim import make_optimizer


def make_clips(
    images: torch.Tensor, frames: int, motion: bool, seed: int, centred: bool = False
) -> torch.Tensor:
    """(N, 1, 8, 8) digits -> (N, T, 1, 8, 8) clips: a random walk of one-pixel offsets (none
    with ``centred``)."""
    if centred:
        return images[:, None].expand(-1, frames, -1, -1, -1).clone()
    rng = np.random.default_rng(seed)
    clips = []
    for img in images:
        pos = rng.integers(-1, 2, size=2)
        seq = []
        for _ in range(frames):
            seq.append(shift_image(img, int(pos[0]), int(pos[1])))
            if motion:
                pos = np.clip(pos + rng.integers(-1, 2, size=2), -1, 1)
        clips.append(torch.stack(seq))
    return torch.stack(clips)


def judge(frames: torch.Tensor) -> np.ndarray:
    """(..., 1, 8, 8) -> digits (...), read by ``eval.judges.FrameJudge``."""
    lead = frames.shape[:-3]
    return frame_judge().predict(frames.reshape(-1, 64).clamp(-1, 1)).reshape(lead)


def variant(name: str, frames: int, patch: int) -> tuple[ModalityConfig, int, bool]:
    """(the visual modality, its frames, motion) of a variant."""
    video = dict(kind="video", shape=(frames, 1, 8, 8), patch=patch, shift=1.0, loss_weight=1.0)
    if name in ("image", "centred"):
        return ModalityConfig("x", "image", (1, 8, 8), patch=patch), 1, False
    if name == "frame1":
        return ModalityConfig("x", **{**video, "shape": (1, 1, 8, 8)}), 1, False
    if name == "video":
        return ModalityConfig("x", **video), frames, True
    if name == "static":
        return ModalityConfig("x", **video), frames, False
    if name == "tube":
        return ModalityConfig("x", **video, patch_t=frames), frames, True
    if name.startswith("shift"):
        return ModalityConfig("x", **{**video, "shift": float(name[5:])}), frames, True
    if name == "auto":  # the video kind's default shift
        return ModalityConfig("x", **{**video, "shift": None}), frames, True
    if name in ("notime", "pooled"):
        return ModalityConfig("x", **video), frames, True
    if name == "partial":  # a third of the clips train with random tokens given
        return ModalityConfig("x", **video, p_partial=0.3), frames, True
    if name.startswith("loss"):
        return ModalityConfig("x", **{**video, "loss_weight": float(name[4:])}), frames, True
    if name == "fixed":  # the video kind's defaults: shift sqrt(T), loss weight T
        return ModalityConfig("x", **{**video, "shift": None, "loss_weight": None}), frames, True
    raise SystemExit(f"unknown variant {name!r}")


def run(name: str, args) -> dict:
    torch.manual_seed(args.seed)
    visual, frames, motion = variant(name, args.frames, args.patch)
    label = ModalityConfig("label", "label", num_classes=10)
    cfg = anydit.preset(
        "small", width=128, depth=4, heads=2, head_dim=64, pooled_cond=name == "pooled",
        per_token_time=name.startswith("partial"),
    )  # fmt: skip
    model = anydit.MMDiT([visual, label], cfg)
    if name == "notime":  # rotary positions without the time axis
        rope = model.rope.clone()
        positions = torch.cat([m.positions() for m in model.modalities.values()])
        moving = positions[:, 0] != 0
        from anydit.model.rotary import axis_pairs

        time_pairs = axis_pairs(cfg.head_dim)[0]
        rope[moving, :time_pairs] = torch.tensor([1.0, 0.0])
        model.rope.copy_(rope)
    ema = make_ema(model)
    opt = make_optimizer(model.parameters(), args.lr)
    warm = 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (args.steps - warm)))
        ),
    )
    x, y = load_digit_images("train")
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(len(y), (args.batch,), generator=gen)
        clips = make_clips(x[idx], frames, motion, args.seed * 100_003 + step, name == "centred")
        batch = {"x": clips[:, 0] if visual.kind == "image" else clips, "label": y[idx]}
        loss = training_loss(model, batch, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, model, ema_decay(step, 0.995))
    train_s = time.perf_counter() - start
    ema.eval()
    # label -> video: 20 per class
    labels = torch.arange(10).repeat_interleave(args.per_class)
    out = anydit.sample(
        ema, {"x": "generate", "label": labels}, n=len(labels), steps=32, seed=1,
        guidance=1.5, guidance_interval=(0.3, 1.0),
    )  # fmt: skip
    gen_clips = out["x"] if visual.kind == "video" else out["x"][:, None]  # (n, T, 1, 8, 8)
    read = judge(gen_clips)  # (n, T)
    want = labels.numpy()[:, None]
    wide = anydit.sample(  # the same with guidance at every step
        ema, {"x": "generate", "label": labels}, n=len(labels), steps=32, seed=1, guidance=1.5
    )["x"]
    read_wide = judge(wide if visual.kind == "video" else wide[:, None])
    # video -> label on test clips
    tx, ty = load_digit_images("test")
    pick = torch.cat([torch.nonzero(ty == d)[: args.per_class, 0] for d in range(10)])
    test_clips = make_clips(tx[pick], frames, motion, 12345, name == "centred")
    given = test_clips[:, 0] if visual.kind == "image" else test_clips
    got = anydit.sample(
        ema, {"x": given, "label": "generate"}, n=len(pick), steps=1, seed=2,
        guidance=2.5, guidance_interval=(0.0, 1.0),
    )  # fmt: skip
    real_read = judge(test_clips)
    return {
        "variant": name,
        "tokens": model.modalities["x"].num_tokens,
        "steps": args.steps,
        "train_s": round(train_s, 1),
        "label_to_video_frames": round(100 * float((read == want).mean()), 1),
        "label_to_video_clips": round(100 * float((read == want).all(1).mean()), 1),
        "consistent": round(100 * float((read == read[:, :1]).all(1).mean()), 1),
        "clips_guided_throughout": round(100 * float((read_wide == want).all(1).mean()), 1),
        "video_to_label": round(100 * float((got["label"] == ty[pick]).float().mean()), 1),
        "judge_on_real": round(100 * float((real_read == ty[pick].numpy()[:, None]).mean()), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="image,frame1,video,static,tube,shift2,notime")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--patch", type=int, default=2, help="pixels per patch side")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/video_learning.json")
    args = p.parse_args()
    rows = []
    for name in args.variants.split(","):
        rows.append(run(name, args))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
