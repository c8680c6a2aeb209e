"""Playable clips for galleries: a video's frames as an animated GIF (Pillow) and its audio as
a WAV (Griffin-Lim from the log-mel), with an HTML cell that shows them side by side."""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image as PILImage
from torch import Tensor

from anydit.modalities.logmel import MelParams, write_logmel_wav
from anydit.modalities.pictures import display_scale, image_grid


def write_gif(path: str | Path, video: Tensor, fps: float) -> str:
    """Frames (T, C, H, W) in [-1, 1] as an animated GIF looping at ``fps`` frames a second,
    upscaled to about 128 pixels (nearest). Pillow stores repeated frames once with their
    durations added, so the clip keeps its timing. Returns the path."""
    scale = display_scale(*video.shape[-2:], target=128, cap=16)
    frames = [PILImage.fromarray(image_grid(f[None], nrow=1, scale=scale, pad=0)) for f in video]
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0
    )
    return str(path)


def write_clip(
    out: Path, stem: str, video: Tensor, fps: float, audio: Tensor | None, mel: MelParams | None
) -> str:
    """``stem``.gif (and ``stem``.wav for ``audio`` (L, mels) with its ``mel`` parameters) in
    ``out``; returns an HTML cell with the GIF and an audio player."""
    gif = Path(write_gif(out / f"{stem}.gif", video, fps)).name
    cell = f'<img src="{html.escape(gif)}" alt="{html.escape(stem)}">'
    if audio is not None and mel is not None:
        write_logmel_wav(out / f"{stem}.wav", audio, mel)
        cell += f'<br><audio controls preload="none" src="{html.escape(stem)}.wav"></audio>'
    return f"<td>{cell}</td>"
