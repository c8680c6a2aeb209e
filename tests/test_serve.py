"""``anydit serve``: the page's handler for every task of the demo's modalities, the running
server through ``gradio_client``, and the page in a real browser (Debian's Chromium driven by
Playwright)."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import time

import numpy as np
import pytest
import torch
from conftest import perturb
from PIL import Image

import anydit
from anydit.cli import main
from anydit.data.digits import digits_modalities, load_digit_audio, load_digit_images

gr = pytest.importorskip("gradio")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from anydit.serve import PageError, run_task, show  # noqa: E402

CONFIG = anydit.SampleConfig(steps=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A (random) model over the digits modalities, saved, and given values as files."""
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model = anydit.MMDiT(digits_modalities(), anydit.preset("debug", depth=1))
    perturb(model, seed=1, std=0.1)
    anydit.save_model(model, root / "model.safetensors")
    pixels = ((load_digit_images("test")[0][0, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
    Image.fromarray(pixels).save(root / "seven.png")
    from anydit.data.digits import mel_params
    from anydit.modalities.logmel import mel_to_wave, write_wav

    write_wav(
        root / "word.wav", mel_to_wave(load_digit_audio("test")[0][0], mel_params(), 4), 16000
    )
    values = {
        "label": "seven",
        "text": "a handwritten seven",
        "image": str(root / "seven.png"),
        "audio": str(root / "word.wav"),
    }
    return model, root, values


def _expected(model, roles, values, n=2, seed=3, config=CONFIG):
    """The same task written directly for ``anydit.sample``, values read independently."""
    from anydit.modalities.logmel import read_logmel

    raw = {
        "label": 7,
        "text": values["text"],
        "image": torch.from_numpy(np.asarray(Image.open(values["image"]), np.float32))[None] / 127.5
        - 1.0,
        "audio": read_logmel(values["audio"], model.modalities["audio"].mel, (32, 32)),
    }
    task = {k: raw[k] if r == "given" else r for k, r in roles.items()}
    return anydit.sample(model, task, n=n, seed=seed, config=config)


def test_every_role_combination_samples_what_sample_does(demo):
    model, _, values = demo
    names = model.names
    combos = [
        dict(zip(names, roles, strict=True))
        for roles in itertools.product(("generate", "given", "drop"), repeat=len(names))
        if "generate" in roles
    ]
    assert len(combos) == 65
    for roles in combos:
        got = run_task(model, roles, values, CONFIG, n=2, seed=3)
        want = _expected(model, roles, values)
        assert set(got) == set(want), roles
        for k in want:
            assert torch.equal(got[k], want[k]), (roles, k)
        for k, role in roles.items():  # and each output can be shown
            if role == "generate":
                shown = show(model.modalities[k], got[k])
                assert shown.pictures or shown.text or shown.label, (roles, k)


def test_the_page_samples_what_the_cli_writes(demo, tmp_path):
    model, root, values = demo
    roles = {"image": "generate", "label": "given", "audio": "drop", "text": "drop"}
    got = run_task(model, roles, values, CONFIG, n=3, seed=5)
    args = ["sample", "--checkpoint", str(root / "model.safetensors"), "--generate", "image"]
    args += ["--given", "label=seven", "-n", "3", "--steps", "2", "--seed", "5"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    with np.load(tmp_path / "samples.npz") as npz:
        np.testing.assert_array_equal(npz["image"], got["image"].numpy())


def test_what_each_kind_shows(demo):
    model, _, values = demo
    roles = {n: "generate" for n in model.names}
    out = run_task(model, roles, values, CONFIG, n=3)
    image, audio = (
        show(model.modalities["image"], out["image"]),
        show(model.modalities["audio"], out["audio"]),
    )
    assert len(image.pictures) == 3 and image.pictures[0].size == (192, 192)  # 8x8, upscaled
    assert len(audio.pictures) == 3 and len(audio.sounds) == 3 and audio.sounds[0][0] == 16000
    label = show(model.modalities["label"], out["label"])
    assert sum(label.label.values()) == pytest.approx(1.0)
    assert label.text.splitlines() == [
        str(v) for v in model.modalities["label"].decode(out["label"])
    ]
    assert show(model.modalities["text"], out["text"]).text.count("\n") == 2


def test_bad_input_is_one_line(demo, tmp_path):
    model, root, values = demo
    with pytest.raises(PageError, match="modality 'image' is given but has no value"):
        run_task(model, {"label": "generate", "image": "given"}, {}, CONFIG)
    wide = tmp_path / "wide.png"
    Image.new("L", (9, 8)).save(wide)
    with pytest.raises(ValueError, match="expected 8x8 pixels \\(H x W\\), found 8x9"):
        run_task(model, {"label": "generate", "image": "given"}, {"image": str(wide)}, CONFIG)
    with pytest.raises(ValueError, match="unknown label 'eleven'"):
        run_task(model, {"image": "generate", "label": "given"}, {"label": "eleven"}, CONFIG)
    with pytest.raises(ValueError, match="task generates nothing"):
        run_task(model, {"image": "drop", "label": "given"}, values, CONFIG)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo):
    from anydit.serve import serve

    _, root, _ = demo
    port = _free_port()
    app = serve(root / "model.safetensors", port=port, block=False)
    yield f"http://127.0.0.1:{port}/", port
    app.close()


@pytest.mark.slow
def test_the_server_through_gradio_client(demo, server):
    from gradio_client import Client, handle_file

    model, _, values = demo
    url, port = server
    client = Client(url, verbose=False)
    settings = [2, "euler", "random", "1", 0.0, 1.0, None, "none", 0.05, 3, 0.5, False, 3, 2]
    # ... cache, threshold, interval, region share, kv reuse, seed, n
    names = model.names  # audio, image, label, text
    inputs = {"audio": None, "image": None, "draw": None, "label": "seven", "text": ""}

    def call(roles, **given):
        args = [roles[n] for n in names]
        vals = {**inputs, **given}
        args += [vals["audio"], vals["image"], vals["draw"], vals["label"], vals["text"]]
        return client.predict(*args, *settings, api_name="/generate")

    image, audio = handle_file(values["image"]), handle_file(values["audio"])
    gen, giv, drop = "generate", "given", "drop"
    for roles, given in [
        ({"audio": drop, "image": gen, "label": giv, "text": drop}, {}),
        ({"audio": drop, "image": giv, "label": gen, "text": drop}, {"image": image}),
        ({"audio": giv, "image": gen, "label": drop, "text": drop}, {"audio": audio}),
        ({"audio": gen, "image": gen, "label": gen, "text": drop}, {}),
    ]:
        result = call(roles, **given)
        status, npz = result[-2], result[-1]
        assert status.startswith("generated"), status
        task_values = {**values}
        want = _expected(model, roles, task_values, n=2, seed=3)
        with np.load(npz) as got:
            for k in want:
                if roles[k] == "generate":
                    np.testing.assert_array_equal(
                        got[k],
                        want[k].float().numpy() if want[k].is_floating_point() else want[k].numpy(),
                    )
    # key-value reuse from the page: the sampler's result with that setting, not without it
    roles = {"audio": drop, "image": gen, "label": giv, "text": drop}
    reuse = [*settings[:7], "none", 0.05, 3, 0.5, True, *settings[-2:]]
    args = [roles[n] for n in names] + [None, None, None, "seven", ""]
    npz = client.predict(*args, *reuse, api_name="/generate")[-1]
    want = _expected(model, roles, values, config=anydit.SampleConfig(steps=2, kv_reuse=True))
    plain = _expected(model, roles, values)
    with np.load(npz) as got:
        np.testing.assert_array_equal(got["image"], want["image"].numpy())
        assert not np.array_equal(got["image"], plain["image"].numpy())
    bad = call({"audio": "drop", "image": "given", "label": "generate", "text": "drop"})
    assert bad[-2] == "**error:** modality 'image' is given but has no value"
    # the server keeps serving after an error
    assert call({"audio": "drop", "image": "generate", "label": "given", "text": "drop"})[
        -2
    ].startswith("generated")


def test_a_taken_port_and_a_bad_checkpoint_are_one_line(demo, tmp_path, capsys):
    _, root, _ = demo
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["serve", "--checkpoint", str(root / "model.safetensors"), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and f"port {port} on 127.0.0.1 is not free" in err and "Traceback" not in err
    assert main(["serve", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(
    _chromium() is None, reason="no chromium on this machine (apt install chromium)"
)
def test_the_page_in_a_real_browser(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    url, _ = server
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--no-first-run", "--disable-sync"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=flags)
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        t0 = time.perf_counter()
        page.goto(url, wait_until="networkidle")
        # label -> image is the first task the page offers: choose the label, press Generate
        assert page.locator("#role-image input[value=generate]").is_checked()
        assert page.locator("#role-label input[value=given]").is_checked()
        page.locator("#in-label input").fill("three")
        page.keyboard.press("Enter")
        page.click("#generate")
        page.wait_for_function(
            "document.querySelector('#status').innerText.includes('generated image')",
            timeout=120_000,
        )
        assert page.locator("#out-image img").count() == 4  # four samples
        page.screenshot(path=str(tmp_path / "label_to_image.png"), full_page=True)
        # a wrong input: the error is shown on the page as one line, no traceback
        page.locator("#role-image input[value=given]").check()
        page.locator("#role-label input[value=generate]").check()
        page.click("#generate")
        page.wait_for_function(
            "document.querySelector('#status').innerText.includes('error')", timeout=60_000
        )
        text = page.inner_text("#status")
        assert text == "error: modality 'image' is given but has no value", text
        assert "Traceback" not in page.content()
        browser.close()
    print(f"browser test: {time.perf_counter() - t0:.1f} s; screenshot {tmp_path}")
    assert (tmp_path / "label_to_image.png").stat().st_size > 10_000
