"""``anydit serve``: a web page (Gradio) for every task of a trained model.

Thin like the CLI: the page's controls come from the checkpoint's modalities; pressing the
button builds a task from the roles and values, reads values with each modality's own readers,
calls ``anydit.sample`` with a ``SampleConfig`` and shows what came out. ``run_task`` is that
handler without the page (the tests call it directly).

Local by default (127.0.0.1), no share links, no analytics.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from torch import Tensor

from anydit.config import SampleConfig
from anydit.errors import EXPECTED_ERRORS
from anydit.modalities.pictures import display_scale, to_uint8_image, upscale
from anydit.sampling import sample, settings

ROLES = ("generate", "given", "drop")
AUDIO_PLAYERS = 4  # players per generated audio modality (the first samples)
SKETCH_MAX = 64  # images up to this side get a drawing canvas


class PageError(ValueError):
    """Bad input from the page: shown to the user as one line."""


# --- the handler ----------------------------------------------------------------------------
def ui_value(m, value: Any):
    """A value from the page -> what ``sample`` takes for modality ``m``.

    A file path (uploads) is read by the modality as on the command line; a drawing (an
    array, or Gradio's editor dict) is read as a PNG image fitted to the modality; strings are
    literals (a label name, a caption, ``0.5,1,2`` for a vector)."""
    if isinstance(value, dict):  # Gradio's image editor: the drawn picture
        value = value.get("composite")
    if value is None or (isinstance(value, str) and not value.strip() and m.kind != "text"):
        raise PageError(f"modality '{m.name}' is given but has no value")
    if isinstance(value, np.ndarray):
        return m.read_file(_png_bytes(value), ".png", "crop", None)
    if isinstance(value, str | os.PathLike) and Path(value).is_file():
        return m.read_value(str(value))
    if isinstance(value, int | float) and m.kind == "label":
        value = str(int(value))
    return m.read_inline(value) if isinstance(value, str) else value


def _png_bytes(image: np.ndarray) -> bytes:
    """A drawing (H, W) or (H, W, 3|4) uint8 -> PNG bytes; transparency over black."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3].astype(np.float32) * alpha).round().astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def build_task(model, roles: dict[str, str], values: dict[str, Any]) -> dict[str, Any]:
    """Roles from the page (name -> generate / given / drop) and values -> a task."""
    task: dict[str, Any] = {}
    for name, role in roles.items():
        if name not in model.modalities:
            raise PageError(f"unknown modality '{name}'; the model has {model.names}")
        if role not in ROLES:
            raise PageError(f"modality '{name}': role {role!r}, expected one of {ROLES}")
        if role == "given":
            task[name] = ui_value(model.modalities[name], values.get(name))
        else:
            task[name] = role
    return task


def run_task(
    model,
    roles: dict[str, str],
    values: dict[str, Any],
    config: SampleConfig,
    n: int = 4,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Tensor]:
    """What the page's button does: the samples of ``anydit.sample`` for this task."""
    task = build_task(model, roles, values)
    return sample(model, task, n=n, seed=seed, config=config, progress=progress)


# --- what the page shows --------------------------------------------------------------------
@dataclass
class Shown:
    """One modality's outputs on the page."""

    pictures: list | None = None  # PIL images (image, video strips, spectrograms)
    sounds: list | None = None  # (sample rate, int16 wave) per player
    label: dict | None = None  # class -> share of the samples
    text: str | None = None


def show(m, x: Tensor) -> Shown:
    """Raw samples (n, *shape) of modality ``m`` -> what the page shows."""
    kind = m.kind
    if kind == "image":
        pixels = m.codec.decode(x) if m.codec is not None else x if m.pixels else None
        if pixels is None:
            return Shown(text=_numbers(x))
        return Shown(pictures=_pictures(pixels))
    if kind in ("video", "slots") and x.shape[2] in (1, 3, 4):
        return Shown(pictures=[_strip(v) for v in x])
    if kind == "sequence" and m.cfg.codec == "logmel":
        from anydit.modalities.logmel import logmel_image, mel_to_wave

        sounds = []
        for i, mel in enumerate(x[:AUDIO_PLAYERS]):
            wave = mel_to_wave(mel, m.mel, iters=32, seed=i)
            wave = wave / max(float(wave.abs().max()), 1e-6) * 0.9
            sounds.append((m.mel.sample_rate, (wave.numpy() * 32767).astype(np.int16)))
        return Shown(pictures=_pictures(logmel_image(x) * 1.0, target=128), sounds=sounds)
    if kind == "label":
        names = [str(v) for v in m.decode(x)]
        return Shown(
            label={k: names.count(k) / len(names) for k in dict.fromkeys(names)},
            text="\n".join(names),
        )
    if kind == "text":
        return Shown(text="\n".join(m.decode(x)))
    if kind == "layout":
        return Shown(text="\n".join(json.dumps(boxes) for boxes in m.decode(x)))
    return Shown(text=_numbers(x))


def _numbers(x: Tensor) -> str:
    return "\n".join(np.array2string(v.numpy(), precision=3, max_line_width=120) for v in x)


def _pictures(images: Tensor, target: int = 192) -> list:
    scale = display_scale(*images.shape[-2:], target=target, cap=32)
    return [PILImage.fromarray(upscale(to_uint8_image(img), scale)) for img in images]


def _strip(video: Tensor) -> PILImage.Image:
    from anydit.modalities.pictures import image_grid

    scale = display_scale(*video.shape[-2:], target=96)
    return PILImage.fromarray(image_grid(video, nrow=len(video), scale=scale))


# --- the page -------------------------------------------------------------------------------
def default_roles(model) -> dict[str, str]:
    """A first task: an image (else the first generable modality) generated from a given
    label if there is one; the rest dropped."""
    out = {n: "drop" for n in model.names}
    labels = [n for n, m in model.modalities.items() if m.kind == "label"]
    order = ("image", "video", "slots", "sequence", "vector", "layout", "text", "label")
    targets = sorted(model.outputs, key=lambda n: order.index(model.modalities[n].kind))
    targets = [n for n in targets if n not in labels] or targets
    out[targets[0]] = "generate"
    if labels and labels[0] != targets[0]:
        out[labels[0]] = "given"
    return out


def build_app(model, defaults: SampleConfig, title: str = "anydit"):
    """The Gradio page for ``model``."""
    import gradio as gr

    roles0 = default_roles(model)
    role_boxes, inputs, outputs = {}, {}, {}
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(
            f"# {title}\nChoose a role for each modality: **generate** it, **given** (your "
            "value), or **drop** it (marginalised out). Then press *Generate*."
        )
        for name, m in model.modalities.items():
            with gr.Group():
                can = ["generate", "given", "drop"] if m.cfg.generate else ["given", "drop"]
                role_boxes[name] = gr.Radio(
                    can, value=roles0[name], label=f"{name} ({m.kind}, {tuple(m.shape)})",
                    elem_id=f"role-{name}",
                )  # fmt: skip
                given = roles0[name] == "given"
                inputs[name] = _input(gr, m, given)
                outputs[name] = _output(gr, m, roles0[name] == "generate")
        with gr.Accordion("Sampling settings", open=False):
            with gr.Row():
                steps = gr.Number(defaults.steps, label="steps", precision=0, elem_id="steps")
                solver = gr.Dropdown(
                    ["euler", "heun", "midpoint", "jump"], value=defaults.solver, label="solver"
                )
                unmasking = gr.Dropdown(
                    ["random", "confidence"], value=defaults.unmasking, label="unmasking"
                )
            with gr.Row():
                guidance = gr.Textbox(
                    _guidance_text(defaults.guidance), label="guidance (W, or NAME=W,...)",
                    elem_id="guidance",
                )  # fmt: skip
                low = gr.Number(defaults.guidance_interval[0], label="guide from t =")
                high = gr.Number(defaults.guidance_interval[1], label="to t =")
                shift = gr.Number(defaults.shift, label="shift (empty: trained)")
            with gr.Row():
                cache = gr.Dropdown(
                    ["none", "first_block", "taylor", "taylor_attention", "region"],
                    value=defaults.cache or "none", label="cache (reuse blocks across steps)",
                )  # fmt: skip
                threshold = gr.Number(defaults.cache_threshold, label="first_block threshold")
                interval = gr.Number(
                    defaults.cache_interval, label="taylor / region interval", precision=0
                )
                ratio = gr.Number(defaults.cache_ratio, label="region: share computed")
                kv_reuse = gr.Checkbox(defaults.kv_reuse, label="reuse still tokens' keys, values")
            with gr.Row():
                seed = gr.Number(0, label="seed", precision=0, elem_id="seed")
                n = gr.Number(4, label="samples", precision=0, elem_id="n")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown("", elem_id="status")
        download = gr.File(label="samples.npz", elem_id="download")

        names = list(model.modalities)
        role_list = [role_boxes[k] for k in names]
        input_list = [c for k in names for c in inputs[k]]
        output_list = [c for k in names for c in outputs[k]]
        widths = [len(inputs[k]) for k in names]

        def on_role(role, *_, name=None):
            return [gr.update(visible=role == "given") for _ in inputs[name]] + [
                gr.update(visible=role == "generate") for _ in outputs[name]
            ]

        for name in names:
            role_boxes[name].change(
                lambda role, name=name: on_role(role, name=name),
                inputs=role_boxes[name],
                outputs=inputs[name] + outputs[name],
                api_visibility="private",
            )

        def generate(*args, progress=gr.Progress()):  # noqa: B008 - how Gradio asks for a bar
            roles = dict(zip(names, args[: len(names)], strict=True))
            rest = list(args[len(names) :])
            values = {}
            for k, width in zip(names, widths, strict=True):
                given = [v for v in rest[:width] if v is not None and not _blank(v)]
                values[k] = given[0] if given else None
                rest = rest[width:]
            (s_steps, s_solver, s_unmask, s_guid, s_low, s_high, s_shift, s_cache, s_threshold,
             s_interval, s_ratio, s_kv, s_seed, s_n) = rest  # fmt: skip
            try:
                config = settings(
                    defaults,
                    steps=_int(s_steps, "steps"),
                    solver=s_solver,
                    unmasking=s_unmask,
                    guidance=_guidance(s_guid),
                    guidance_interval=(s_low, s_high),
                    shift=s_shift if s_shift not in (None, "") else None,
                    cache="" if s_cache in (None, "none") else s_cache,
                    cache_threshold=s_threshold,
                    cache_interval=_int(s_interval, "taylor / region interval"),
                    cache_ratio=s_ratio,
                    kv_reuse=bool(s_kv),
                )
                count = _int(s_n, "samples")
                if count is None or count < 1:
                    raise PageError(f"samples: expected an integer >= 1, got {s_n!r}")
                samples = run_task(
                    model, roles, values, config, count, _int(s_seed, "seed") or 0,
                    progress=lambda f: progress(f, desc="sampling"),
                )  # fmt: skip
                npz = _write_npz(model, samples)
            except (*EXPECTED_ERRORS, PageError) as err:
                return [_clear(c) for c in output_list] + [f"**error:** {err}", None]
            shown = []
            for k in names:
                if roles[k] == "generate":
                    shown += _fill(outputs[k], show(model.modalities[k], samples[k]))
                else:
                    shown += [_clear(c) for c in outputs[k]]
            done = f"generated {', '.join(k for k in names if roles[k] == 'generate')}"
            return shown + [done, str(npz)]

        button.click(
            generate,
            inputs=role_list
            + input_list
            + [steps, solver, unmasking, guidance, low, high, shift, cache, threshold, interval]
            + [ratio, kv_reuse]
            + [seed, n],
            outputs=output_list + [status, download],
            api_name="generate",
        )
    return app


def _blank(v) -> bool:
    if isinstance(v, dict):
        comp = v.get("composite")
        return comp is None or (isinstance(comp, np.ndarray) and not comp.any())
    return isinstance(v, str) and not v.strip()


def _int(value, what: str) -> int | None:
    if value in (None, ""):
        return None
    if float(value) != int(float(value)):
        raise PageError(f"{what}: expected an integer, got {value!r}")
    return int(float(value))


def _guidance(text) -> float | dict[str, float]:
    text = str(text).strip() if text is not None else "1"
    try:
        if "=" not in text:
            return float(text or 1)
        return {k.strip(): float(v) for k, v in (item.split("=", 1) for item in text.split(","))}
    except ValueError:
        raise PageError(f"guidance: expected a number or NAME=W pairs, got {text!r}") from None


def _guidance_text(g) -> str:
    return ",".join(f"{k}={v:g}" for k, v in g.items()) if isinstance(g, dict) else f"{g:g}"


def _write_npz(model, samples) -> Path:
    from anydit.modalities.outputs import save_npz

    folder = Path(tempfile.mkdtemp(prefix="anydit-serve-"))
    path = folder / "samples.npz"
    save_npz(
        path,
        {
            k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in samples.items()
        },
    )
    return path


def _input(gr, m, visible: bool) -> list:
    """The page's inputs for a given value of modality ``m``."""
    label = f"{m.name}: your value"
    if m.kind == "image" and m.extensions != (".npy",):
        parts = [
            gr.Image(
                type="filepath",
                label=f"{label} (an image file)",
                visible=visible,
                elem_id=f"in-{m.name}",
            )
        ]
        if max(m.shape[1:]) <= SKETCH_MAX and m.shape[0] in (1, 3):
            black = np.zeros((256, 256, 3), np.uint8)
            parts.append(
                gr.Sketchpad(
                    value={"background": black, "layers": [], "composite": black},
                    label=f"{m.name}: or draw it", visible=visible, canvas_size=(256, 256),
                    brush=gr.Brush(colors=["#ffffff"], default_size=28), type="numpy",
                    image_mode="RGB", elem_id=f"draw-{m.name}",
                )
            )  # fmt: skip
        return parts
    if m.kind == "sequence" and m.cfg.codec == "logmel":
        return [
            gr.Audio(
                sources=["upload", "microphone"],
                type="filepath",
                label=label,
                visible=visible,
                elem_id=f"in-{m.name}",
            )
        ]
    if m.kind == "label":
        choices = list(m.cfg.classes) or [str(i) for i in range(m.cfg.num_classes)]
        return [
            gr.Dropdown(
                choices, value=choices[0], label=label, visible=visible, elem_id=f"in-{m.name}"
            )
        ]
    if m.kind in ("text", "vector"):
        hint = "a caption" if m.kind == "text" else "numbers: 0.5, 1, 2"
        return [gr.Textbox(label=f"{label} ({hint})", visible=visible, elem_id=f"in-{m.name}")]
    return [
        gr.File(
            label=f"{label} (a .npy file)",
            file_types=[".npy"],
            visible=visible,
            elem_id=f"in-{m.name}",
        )
    ]


def _output(gr, m, visible: bool) -> list:
    """The page's outputs for modality ``m`` generated: pictures (and players) where the
    kind has them, a label's shares, and the values as text where nothing else shows them."""
    label = f"{m.name}: generated"
    pictures = (m.kind == "image" and (m.pixels or m.cfg.codec == "vae")) or (
        m.kind in ("video", "slots") and m.shape[1] in (1, 3, 4)
    )
    sounds = m.kind == "sequence" and m.cfg.codec == "logmel"
    out = []
    if pictures or sounds:
        out.append(gr.Gallery(label=label, visible=visible, columns=4, elem_id=f"out-{m.name}"))
    if sounds:
        for i in range(AUDIO_PLAYERS):
            player = f"out-{m.name}-{i}"
            out.append(
                gr.Audio(label=f"{m.name} {i}", visible=visible, type="numpy", elem_id=player)
            )
    if m.kind == "label":
        out.append(
            gr.Label(
                label=f"{label} (share of the samples)", visible=visible, elem_id=f"out-{m.name}"
            )
        )
    if not (pictures or sounds):
        out.append(
            gr.Textbox(
                label=f"{label} (values)", visible=visible, lines=2, elem_id=f"text-{m.name}"
            )
        )
    return out


def _fill(components: list, shown: Shown) -> list:
    """Values for one modality's output components, in their order."""
    import gradio as gr

    values = []
    sounds = list(shown.sounds or [])
    for c in components:
        if isinstance(c, gr.Gallery):
            values.append(shown.pictures or [])
        elif isinstance(c, gr.Audio):
            values.append(sounds.pop(0) if sounds else None)
        elif isinstance(c, gr.Label):
            values.append(shown.label)
        else:
            values.append(shown.text or "")
    return values


def _clear(component):
    import gradio as gr

    return [] if isinstance(component, gr.Gallery) else None


# --- starting it ----------------------------------------------------------------------------
def check_port(host: str, port: int) -> None:
    """Fail now, with the port named, if it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as err:
            raise OSError(
                f"port {port} on {host} is not free ({err.strerror}); pass --port"
            ) from None


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Load ``checkpoint`` and serve its page; returns the running app when ``block`` is false."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from anydit.model import load_model
    from anydit.run_config import model_file, run_sampling

    path = model_file(checkpoint)
    model = load_model(path)
    check_port(host, port)
    app = build_app(
        model, run_sampling(checkpoint), title=f"anydit: {path.parent.name or path.name}"
    )
    app.queue()
    app.launch(
        server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
        quiet=True, show_error=False,
    )  # fmt: skip
    return app
