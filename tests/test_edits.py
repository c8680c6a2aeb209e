"""Slots (several images in one stream) and the digit-edits tasks: tokens, positions, whole-slot
training roles, the dataset's invariants, the judge, the tasks and the demo end to end."""

import json

import pytest
import torch
import yaml

import anydit
from anydit.cli import main
from anydit.data.digit_edits import (
    EDITS,
    DigitEditsDataset,
    digit_edits_modalities,
    invert,
    rotate,
    target_class,
    thicken,
)
from anydit.data.digits import load_digit_images
from anydit.errors import ConfigError
from anydit.flow import make_inputs


def slots_modality(slots=3, patch=2, **kw):
    return anydit.ModalityConfig("s", "slots", (slots, 1, 8, 8), patch=patch, **kw)


def test_slots_tokens_round_trip_and_carry_the_slot_on_the_time_axis():
    (m,) = anydit.MMDiT([slots_modality()], anydit.preset("debug")).modalities.values()
    x = torch.randn(2, 3, 1, 8, 8)
    tokens = m.tokenize(x)
    assert tokens.shape == (2, 3 * 16, 4) and m.num_tokens == 48
    torch.testing.assert_close(m.detokenize(tokens), x)
    # token j of slot k is the patch of that slot alone
    torch.testing.assert_close(tokens[:, 16:32], m.tokenize(x[:, [1, 1, 1]])[:, 16:32])
    pos = m.positions()
    assert pos[:, 0].tolist() == [float(k) for k in range(3) for _ in range(16)]
    assert torch.equal(pos[:16, 1:], pos[16:32, 1:])  # each slot keeps its own pixel grid
    assert m.time_shift == 1.0 and m.loss_weight == 1.0  # not a clip: no sqrt(S), no S
    from anydit.serve import show

    strips = show(m, x.clamp(-1, 1)).pictures  # the page shows each sample's slots in a row
    assert len(strips) == 2 and strips[0].width > 2 * strips[0].height


def test_slots_options_and_masks_are_checked():
    with pytest.raises(ConfigError, match="clock: does not apply to kind 'slots'"):
        slots_modality(clock="av")
    with pytest.raises(ConfigError, match=r"shape \(H\): expected a multiple of 3"):
        slots_modality(patch=3)
    m = anydit.MMDiT([slots_modality()], anydit.preset("debug")).modalities["s"]
    mask = m.slot_mask((0, 2), n=2)
    assert mask.shape == (2, 3, 1, 8, 8) and mask[:, [0, 2]].all() and not mask[:, 1].any()
    with pytest.raises(ValueError, match=r"slots \[3\] out of range; it has 3 slots"):
        m.slot_mask((3,))
    with pytest.raises(ValueError, match=r"'s' \(slots\): expected shape \(3, 1, 8, 8\)"):
        m.prepare(torch.zeros(4, 1, 8, 8))  # more slots than declared


def test_training_gives_whole_slots_and_leaves_one_to_make():
    mods = [slots_modality(slots=4, p_given=0, p_drop=0, p_partial=1.0)]
    model = anydit.MMDiT(mods, anydit.preset("debug", per_token_time=True))
    x = torch.randn(512, 4, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    inp = make_inputs(model.modalities, {"s": x}, anydit.FlowConfig(), True, None, gen)
    known = (inp.times["s"] == 1).reshape(512, 4, 16)  # (b, slot, token)
    assert (known.all(2) | ~known.any(2)).all()  # a slot is given whole or not at all
    per_slot = known.all(2)
    assert not per_slot.all(1).any()  # never every slot
    assert per_slot.any(1).float().mean() > 0.5  # most samples give some
    counts = per_slot.sum(1)
    assert set(counts.tolist()) == {0, 1, 2, 3}
    scored = inp.scored["s"].reshape(512, 4, 16)
    assert torch.equal(scored.all(2), ~per_slot)  # the loss is on the slots being made
    clean = model.modalities["s"].tokenize(x).reshape(512, 4, 16, -1)
    torch.testing.assert_close(inp.tokens["s"].reshape(512, 4, 16, -1)[per_slot], clean[per_slot])


def test_edits_on_known_images():
    x = torch.full((1, 3, 3), -1.0)
    x[0, 0, 0] = 1.0
    assert rotate(x)[0, 0, 2] == 1.0 and rotate(x).sum() == x.sum()  # top-left -> top-right
    assert torch.equal(invert(invert(x)), x) and invert(x)[0, 0, 0] == -1.0
    thick = thicken(x)
    assert thick[0, 0, 0] == 1.0 and thick[0, 0, 1] == -1.0  # ink grows up and left only
    y = torch.full((1, 3, 3), -1.0)
    y[0, 1, 1] = 0.5
    assert thicken(y)[0, :2, :2].eq(0.5).all() and thicken(y)[0, 2].eq(-1).all()


def test_items_are_edits_of_real_digits_and_a_function_of_seed_epoch_index():
    data = DigitEditsDataset("test", seed=3)
    images, labels = load_digit_images("test")
    seen = set()
    for i in range(60):
        item = data[i]
        slots, e = item["slots"], int(item["edit"])
        seen.add(e)
        assert slots.shape == (4, 1, 8, 8) and torch.equal(slots[2], images[i])
        ex = int((images == slots[0]).flatten(1).all(1).nonzero()[0])
        assert labels[ex] != labels[i]  # the example is another digit
        for src, tgt, digit in ((slots[0], slots[1], labels[ex]), (slots[2], slots[3], labels[i])):
            if EDITS[e] == "next":
                match = (images == tgt).flatten(1).all(1).nonzero()[:, 0]
                assert int(labels[match[0]]) == (int(digit) + 1) % 10
            else:
                fn = {"rotate": rotate, "invert": invert, "thicken": thicken}[EDITS[e]]
                assert torch.equal(tgt, fn(src))
    assert seen == set(range(4))
    again = DigitEditsDataset("test", seed=3)[5]
    assert torch.equal(again["slots"], data[5]["slots"])
    data.set_epoch(1)
    assert any(not torch.equal(data[i]["slots"], again["slots"]) for i in [5])
    assert target_class(9, EDITS.index("next")) == 0 * 4 + 0
    assert target_class(2, EDITS.index("invert")) == 2 * 4 + 2


def test_edit_weights_set_how_often_each_edit_is_drawn_in_training_only():
    from anydit.config import DataConfig
    from anydit.data.sources import build_dataset

    def counts(data):
        return torch.bincount(
            torch.stack([data[i]["edit"] for i in range(min(400, len(data)))]), minlength=4
        )

    equal = counts(DigitEditsDataset("train", seed=1))
    assert equal.min() > 70  # about 100 each
    only_next = counts(DigitEditsDataset("train", seed=1, edit_weights=(0, 0, 0, 1)))
    assert only_next.tolist() == [0, 0, 0, 400]
    heavy = counts(DigitEditsDataset("train", seed=1, edit_weights=(1, 1, 1, 3)))
    assert heavy[3] > 170 and heavy[:3].max() < 100  # next about half the draws
    cfg = DataConfig(source="digit-edits", seed=1, edit_weights=[1, 1, 1, 3])
    assert cfg.edit_weights == (1.0, 1.0, 1.0, 3.0)
    assert torch.equal(counts(build_dataset(cfg, "train")), heavy)
    assert torch.equal(counts(build_dataset(cfg, "test")), counts(DigitEditsDataset("test", 1)))
    with pytest.raises(ValueError, match="edit_weights"):
        DigitEditsDataset("train", edit_weights=(1, 1, 1))
    for bad in ([1, 1, 1], [0, 0, 0, 0], [1, -1, 1, 1], "abcd"):
        with pytest.raises(ConfigError, match="data.edit_weights"):
            DataConfig(source="digit-edits", edit_weights=bad)
    with pytest.raises(ConfigError, match="data.edit_weights"):
        DataConfig(source="digits", edit_weights=[1, 1, 1, 1])


def test_the_judge_reads_digit_and_form_of_real_targets():
    from anydit.eval.edits import edit_judge

    judge = edit_judge()
    assert judge.accuracy_on_real("val") > 0.95  # 40 classes: digit x form
    images, labels = load_digit_images("val")
    assert (judge.predict(rotate(images)) == (labels * 4 + 1).numpy()).mean() > 0.9


def test_a_run_trains_on_digit_edits_and_the_tasks_are_scored(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data: {source: digit-edits}\nmodel: {preset: debug, per_token_time: true}\n"
        "train: {steps: 2, batch_size: 4, checkpoint_every: 2, tensorboard: false}\n"
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    model = anydit.load_model(tmp_path / "run" / "model.safetensors")
    assert model.modalities["slots"].kind == "slots" and model.modalities["edit"].num_tokens == 1
    from anydit.eval.edits import evaluate_edits

    samples: dict = {}
    got = evaluate_edits(model, "val", 6, anydit.SampleConfig(steps=2), samples=samples)
    assert got["count"] == 6 and 0 <= got["editing_accuracy"] <= 1
    assert {"in_context_rotate", "editing_style_kept", "real_accuracy"} <= set(got)
    for task in ("editing", "in_context"):
        made, real = samples[task]["slots"], DigitEditsDataset("val")
        given = (2,) if task == "editing" else (0, 1, 2)
        for i in range(6):  # the given slots come back as they were given
            torch.testing.assert_close(made[i, list(given)], real[i]["slots"][list(given)])
    mods = [
        anydit.ModalityConfig(**{**m.__dict__, "p_partial": 0}) for m in digit_edits_modalities()
    ]
    plain = anydit.MMDiT(mods, anydit.preset("debug"))
    with pytest.raises(ValueError, match="needs a model built with per_token_time"):
        evaluate_edits(plain, "val", 2)
    other = anydit.MMDiT([slots_modality()], anydit.preset("debug", per_token_time=True))
    with pytest.raises(ValueError, match="expected a model with a 'slots' stream"):
        evaluate_edits(other, "val", 2)


def test_the_digit_edits_demo_trains_judges_and_writes_a_gallery(tmp_path, capsys):
    from anydit.demo_conditioning import DEMOS, run_task_demo

    small = ["model.preset=debug", "model.width=32", "model.depth=1", "model.heads=2"]
    small += ["model.head_dim=16", "train.steps=2", "train.batch_size=8"]
    small += ["train.tensorboard=false"]
    metrics = run_task_demo(
        "digit-edits", tmp_path / "d", overrides=small, processes=1, items=4, progress=False
    )
    saved = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert saved["train_steps"] == 2 and saved["editing_accuracy"] == metrics["editing_accuracy"]
    # the recipe's data draws `next` in half the training items; a --set replaces them
    trained = yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())
    assert trained["data"]["edit_weights"] == [1, 1, 1, 3]
    again = ["data.edit_weights=[1,1,1,1]"]
    assert DEMOS["digit-edits"]().config(again).data.edit_weights == (1, 1, 1, 1)
    assert DEMOS["digit-layouts"]().config().data.edit_weights == ()
    page = (tmp_path / "d" / "gallery" / "index.html").read_text()
    assert "editing_0.png" in page and "in_context_3.png" in page
    assert main(["demo", "digit-edits", "--guidance", "2", "--out", str(tmp_path / "e")]) == 2
    assert "--guidance and --guidance-interval are the digits demo's" in capsys.readouterr().err
