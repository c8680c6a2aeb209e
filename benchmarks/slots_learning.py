"""What lets a slots model learn to read its other slots: a short bare training loop on
``digit-edits`` (or a two-slot "invert" task), then in-context and editing on val.

    python benchmarks/slots_learning.py --edit none          # the slots alone
    python benchmarks/slots_learning.py --edit label         # the edit given 40%, generated 20%
    python benchmarks/slots_learning.py --edit condition     # a condition only, dropped 75%
    python benchmarks/slots_learning.py --task invert2 --steps 400

Each run: the demo's network (width 128, depth 4), AdamW at 1e-3 after 100 warm-up steps,
batch 128, bf16 autocast, no EMA, one process. Reported: the error of the last slot's
one-step estimate at t = 0.3 and 0.6 with the true given slots and with another item's (how
much the model reads them), and (digit-edits) the judge's accuracy, digit and form of the
target made in-context (slots 0-2 given) and by editing (slot 2 and the edit given).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=["edits", "invert2"], default="edits")
    ap.add_argument("--edit", choices=["none", "label", "condition"], default="none")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--patch", type=int, default=4)
    args = ap.parse_args()

    import anydit
    from anydit.data.digit_edits import EDITS, DigitEditsDataset, target_class
    from anydit.data.digits import load_digit_images
    from anydit.eval.edits import edit_judge
    from anydit.flow.objective import make_inputs, scored_counts, training_objective
    from anydit.sampling import Generate, sample

    torch.manual_seed(0)
    slots = 2 if args.task == "invert2" else 4
    mods = [
        anydit.ModalityConfig(
            "slots", "slots", (slots, 1, 8, 8), patch=args.patch, p_given=0.05, p_drop=0.0,
            p_partial=0.9,
        )
    ]  # fmt: skip
    label = args.task == "edits" and args.edit != "none"
    if label:
        rates = {"label": {"p_given": 0.4, "p_drop": 0.4}}
        rates["condition"] = {"p_drop": 0.75, "generate": False}
        mods.append(anydit.ModalityConfig("edit", "label", (), num_classes=4, **rates[args.edit]))
    cfg = anydit.preset("small", width=128, depth=4, heads=2, head_dim=64, per_token_time=True)
    model = anydit.MMDiT(mods, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    images, _ = load_digit_images("train")
    train = DigitEditsDataset("train")
    draw, noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(len(images), (128,), generator=draw)
        if args.task == "invert2":
            raw = {"slots": torch.stack([images[idx], -images[idx]], 1)}
        else:
            items = [train[int(i)] for i in idx]
            raw = {"slots": torch.stack([it["slots"] for it in items])}
            if label:
                raw["edit"] = torch.stack([it["edit"] for it in items])
        inp = make_inputs(model.modalities, raw, anydit.FlowConfig(), True, None, noise)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            preds = model(inp.tokens, inp.times)
        counts = scored_counts(model.modalities, [inp])
        loss = training_objective(model.modalities, preds, inp, counts).total
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    model.eval()
    m = model.modalities["slots"]
    if args.task == "invert2":
        x, _ = load_digit_images("val")
        val = torch.stack([x, -x], 1)
    else:
        data = DigitEditsDataset("val")
        val = torch.stack([data[i]["slots"] for i in range(len(data))])
        edits = torch.stack([data[i]["edit"] for i in range(len(data))])
    n, per = len(val), m.tokens_per_slot
    tok = m.tokenize(val)
    result: dict = {"args": vars(args), "train_seconds": time.perf_counter() - start}
    for t in (0.3, 0.6):
        errs = []
        for other in (False, True):
            given = tok.clone()
            if other:  # every given slot from another item
                given[:, :-per] = tok[torch.roll(torch.arange(n), 1), :-per]
            eps = torch.randn(tok.shape, generator=torch.Generator().manual_seed(5))
            xt, target = given.clone(), tok[:, -per:]
            xt[:, -per:] = t * target + (1 - t) * eps[:, -per:]
            times = torch.ones(n, tok.shape[1])
            times[:, -per:] = t
            tokens, clock = {"slots": xt}, {"slots": times}
            if label:  # the edit dropped
                tokens["edit"], clock["edit"] = torch.full((n, 1), 4), torch.zeros(n)
            with torch.no_grad():
                v = model(tokens, clock)["slots"][:, -per:]
            errs.append(float(((xt[:, -per:] + (1 - t) * v - target) ** 2).mean()))
        result[f"error_t{t}"] = {"true": errs[0], "other": errs[1]}
    if args.task == "edits":
        judge, want = edit_judge(), target_class(data.labels[:n], edits)
        tasks = {"in_context": ((0, 1, 2), {})}
        if label:
            tasks["editing"] = ((2,), {"edit": edits})
        for name, (given, extra) in tasks.items():
            role = Generate(known=val, mask=m.slot_mask(given, n))
            spec = {"slots": role, **extra}
            got = sample(model, spec, n=n, steps=16, seed=1, guidance=2.0)["slots"][:, 3]
            pred = torch.as_tensor(judge.predict(got))
            result[name] = {
                "accuracy": float((pred == want).float().mean()),
                "digit": float((pred // 4 == want // 4).float().mean()),
                "form": float((pred % 4 == want % 4).float().mean()),
            }
        result["edits"] = list(EDITS)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
