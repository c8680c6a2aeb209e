"""Layouts (a set of boxes with classes as one stream) and the digit-layouts tasks: tokens,
checks, values from text and files, the dataset's invariants, the judges, the demo."""

import json
from pathlib import Path

import pytest
import torch

import anydit
from anydit.cli import main
from anydit.data.digit_layouts import (
    CANVAS,
    DIGIT,
    DigitLayoutsDataset,
    digit_layouts_modalities,
    layout_corners,
    overlaps,
)
from anydit.data.digits import load_digit_images
from anydit.errors import ConfigError


def layout_model(boxes=3, classes=4, **kw):
    cfg = anydit.ModalityConfig("lay", "layout", (boxes, 5), num_classes=classes, **kw)
    return anydit.MMDiT([cfg], anydit.preset("debug"))


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_layout_tokens_carry_corners_and_class_and_round_trip():
    m = layout_model().modalities["lay"]
    x = boxes([0.1, 0.2, 0.5, 0.6, 2], [0.5, 0.0, 1.0, 0.25, 0], [0, 0, 0, 0, -1])[None]
    tokens = m.tokenize(x)
    assert tokens.shape == (1, 3, 4 + 4 + 1) and m.token_dim == 9
    torch.testing.assert_close(tokens[0, 0, :4], torch.tensor([-0.8, -0.6, 0.0, 0.2]))
    assert tokens[0, 0, 4:].tolist() == [-1, -1, 1, -1, -1]  # class 2 of 4
    assert tokens[0, 2, 4:].tolist() == [-1, -1, -1, -1, 1]  # empty: the last one-hot
    torch.testing.assert_close(m.detokenize(tokens), x)
    # made tokens: corners clamped and ordered, the class read by argmax
    noisy = tokens.clone()
    noisy[0, 0, 0], noisy[0, 0, 2] = 0.5, -0.7  # x0 and x1 swapped
    noisy[0, 1, 1] = -3.0
    back = m.detokenize(noisy)
    assert back[0, 0, 0] == pytest.approx(0.15) and back[0, 0, 2] == pytest.approx(0.75)
    assert back[0, 1, 1] == 0.0 and back[0, 0, 4] == 2 and back[0, 2, 4] == -1
    assert torch.equal(m.positions(), torch.zeros(3, 3))  # a set: one position for all


def test_the_boxes_are_a_set_for_the_model():
    model = layout_model().eval()
    x = boxes([0.1, 0.2, 0.5, 0.6, 2], [0.5, 0.0, 1.0, 0.25, 0], [0.3, 0.3, 0.4, 0.9, 1])[None]
    perm = [2, 0, 1]
    a = anydit.sample(model, {"lay": "generate"}, n=1, steps=2, seed=0)
    torch.manual_seed(0)
    tokens = model.modalities["lay"].tokenize(x)
    t = torch.full((1,), 0.5)
    out = model({"lay": tokens}, {"lay": t})["lay"]
    out_p = model({"lay": tokens[:, perm]}, {"lay": t})["lay"]
    torch.testing.assert_close(out[:, perm], out_p, atol=1e-5, rtol=1e-5)
    assert a["lay"].shape == (1, 3, 5)


def test_box_tokens_are_embedded_with_fourier_features_of_their_geometry():
    from anydit.model.embeddings import BoxEmbedding

    model = layout_model()
    embed = model.embed["lay"]
    assert isinstance(embed, BoxEmbedding)
    a = model.modalities["lay"].tokenize(boxes([0.1, 0.2, 0.3, 0.4, 1])[None])
    b = model.modalities["lay"].tokenize(boxes([0.5, 0.6, 0.9, 0.8, 1])[None])
    with torch.no_grad():  # not affine in the corners, as a linear embedding would be
        gap = embed((a + b) / 2) - (embed(a) + embed(b)) / 2
        assert gap.abs().max() > 1e-3
        torch.testing.assert_close(embed.fourier(a)[..., 0], torch.sin(torch.pi * a[..., 0]))
        # the class part reaches the embedding linearly, the geometry through the features
        c = a.clone()
        c[..., 4:] = -c[..., 4:].flip(-1)
        assert not torch.allclose(embed(a), embed(c))
        assert torch.equal(embed.fourier(a), embed.fourier(c))


def test_bad_layouts_get_a_message_naming_the_box():
    m = layout_model().modalities["lay"]
    with pytest.raises(ValueError, match=r"sample 0, box 1 .* lies outside the canvas"):
        m.prepare(boxes([0, 0, 0.5, 0.5, 1], [0.5, 0.5, 1.2, 1.0, 0], [0, 0, 0, 0, -1]))
    with pytest.raises(ValueError, match="box 0 .*expected x0 <= x1 and y0 <= y1"):
        m.prepare(boxes([0.6, 0, 0.5, 0.5, 1], [0, 0, 0, 0, -1], [0, 0, 0, 0, -1]))
    with pytest.raises(ValueError, match="box 2: class 4 out of range"):
        m.prepare(boxes([0, 0, 1, 1, 1], [0, 0, 0, 0, -1], [0, 0, 1, 1, 4]))
    with pytest.raises(ValueError, match="4 boxes, more than the 3 declared"):
        m.read_inline("0,0,1,1,1; 0,0,1,1,1; 0,0,1,1,1; 0,0,1,1,1")
    with pytest.raises(ValueError, match="box 1 '0,0,1': expected x0,y0,x1,y1,class"):
        m.read_inline("0,0,1,1,1; 0,0,1")
    with pytest.raises(ConfigError, match=r"shape: expected \(N, 5\)"):
        anydit.ModalityConfig("lay", "layout", (3, 4), num_classes=2)
    with pytest.raises(ConfigError, match="num_classes: expected an integer >= 1"):
        anydit.ModalityConfig("lay", "layout", (3, 5))
    # an empty row may hold anything in its corners: it is not a box
    assert m.prepare(boxes([0, 0, 1, 1, 1], [5, -3, 0, 0, -1], [0, 0, 0, 0, -1])).shape == (
        1,
        3,
        5,
    )


def test_layouts_from_text_and_json_files(tmp_path):
    cfg = anydit.ModalityConfig("lay", "layout", (3, 5), classes=("cat", "dog", "owl"))
    assert cfg.num_classes == 3  # from the names
    m = anydit.MMDiT([cfg], anydit.preset("debug")).modalities["lay"]
    got = m.read_inline("0,0,0.5,0.5,dog; 0.5,0.5,1,1,2")
    assert got.tolist() == [[0, 0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1, 2], [0, 0, 0, 0, -1]]
    with pytest.raises(ValueError, match="unknown box class 'fox'"):
        m.read_inline("0,0,1,1,fox")
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps([[0, 0, 0.25, 0.25, 0]]))
    assert m.read_file(path, ".json", "exact", None)[0].tolist() == [0, 0, 0.25, 0.25, 0]
    assert m.decode(got[None]) == [
        [{"box": [0, 0, 0.5, 0.5], "class": "dog"}, {"box": [0.5, 0.5, 1, 1], "class": "owl"}]
    ]
    from anydit.serve import show

    assert '"class": "dog"' in show(m, got[None]).text  # the page shows the boxes
    (written,) = m.write(tmp_path, "out", got[None])
    first = Path(written).read_text().splitlines()[0]
    assert json.loads(first)["boxes"][1]["class"] == "owl"


def test_layout_items_place_real_digits_in_their_boxes():
    data = DigitLayoutsDataset("test", seed=1)
    images, labels = load_digit_images("test")
    counts = set()
    for i in range(40):
        item = data[i]
        canvas, rows = item["image"], item["layout"]
        used = rows[rows[:, 4] >= 0]
        counts.add(len(used))
        inside = torch.zeros(CANVAS, CANVAS, dtype=torch.bool)
        corners = []
        for row in used:
            x0, y0, x1, y1 = (int(round(float(v) * CANVAS)) for v in row[:4])
            assert (x1 - x0, y1 - y0) == (DIGIT, DIGIT)
            crop = canvas[:, y0:y1, x0:x1]
            match = (images == crop).flatten(1).all(1).nonzero()[:, 0]
            assert len(match) and int(labels[match[0]]) == int(row[4])
            inside[y0:y1, x0:x1] = True
            corners.append((y0, x0))
        assert (canvas[0][~inside] == -1).all()  # nothing outside the boxes
        assert all(not overlaps(a, b) for k, a in enumerate(corners) for b in corners[k + 1 :])
        assert corners == sorted(corners)  # rows in reading order
    assert counts == {2, 3}
    again = DigitLayoutsDataset("test", seed=1)[7]
    assert torch.equal(again["image"], data[7]["image"])
    data.set_epoch(1)
    assert not torch.equal(again["image"], data[7]["image"])
    assert len(layout_corners()) == 81


def test_the_judges_on_real_canvases_and_known_layouts():
    from anydit.eval.layouts import detection, ink_outside, iou

    data = DigitLayoutsDataset("val")
    canvas = torch.stack([data[i]["image"] for i in range(4)])
    layout = torch.stack([data[i]["layout"] for i in range(4)])
    assert ink_outside(canvas, layout).max() == 0
    moved = layout.clone()
    moved[:, :, [0, 2]] = (moved[:, :, [0, 2]] + 2 / CANVAS).clamp(max=1)
    assert (ink_outside(canvas, moved) > 0).any()
    assert detection(layout, layout) == (1.0, 1.0)
    wrong = layout.clone()
    wrong[:, 0, 4] = (wrong[:, 0, 4] + 1) % 10
    found, count = detection(wrong, layout)
    assert count == 1.0 and found < 1.0
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert iou(a, a) == 1.0 and iou(a, torch.tensor([0.5, 0.0, 1.5, 1.0])) == pytest.approx(1 / 3)


def test_a_run_trains_on_digit_layouts_and_the_demo_writes_a_gallery(tmp_path):
    from anydit.demo_conditioning import run_task_demo
    from anydit.eval.layouts import evaluate_layouts

    small = ["model.preset=debug", "model.width=32", "model.depth=1", "model.heads=2"]
    small += ["model.head_dim=16", "train.steps=2", "train.batch_size=8"]
    small += ["train.tensorboard=false"]
    metrics = run_task_demo(
        "digit-layouts", tmp_path / "d", overrides=small, processes=1, items=4, progress=False
    )
    assert metrics["real_boxes"] > 0.5 and metrics["real_ink_outside"] == 0
    assert 0 <= metrics["layout_to_image_boxes"] <= 1 and "image_to_layout_found" in metrics
    page = (tmp_path / "d" / "gallery" / "index.html").read_text()
    assert "layout_to_image_0.png" in page and "image_to_layout_3.png" in page
    model = anydit.load_model(tmp_path / "d" / "model.safetensors")
    assert [m.kind for m in model.modalities.values()] == ["image", "layout"]
    other = anydit.MMDiT(digit_layouts_modalities()[:1], anydit.preset("debug"))
    with pytest.raises(ValueError, match="expected a model with an 'image' .* and a 'layout'"):
        evaluate_layouts(other, "val", 2)
    out = tmp_path / "s"
    code = main(
        ["sample", "--checkpoint", str(tmp_path / "d"), "--generate", "image",
         "--given", "layout=0,0,0.333,0.333,seven; 0.5,0.5,0.833,0.833,1", "-n", "2",
         "--steps", "2", "--out", str(out)]
    )  # fmt: skip
    assert code == 0 and list(out.glob("*.png"))
