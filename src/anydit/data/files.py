"""Human files in and out, per modality: PNG images, WAV audio, JSON lines, raw ``.npz``.

Reading turns a command-line value (``--given NAME=VALUE``) into something ``Modality.prepare``
accepts; writing turns sampled raw tensors back into files people can look at or listen to.

Image pixels map linearly between ``[-1, 1]`` floats and ``0..255`` bytes. Log-mel sequences
(``codec="logmel"``) are read from WAV/FLAC and written as WAV (Griffin-Lim) plus a spectrogram
picture (mel bands vertical, low frequencies at the bottom, time left to right).
"""

from __future__ import annotations

import dataclasses
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from anydit.data.audio import MelParams, log_mel, mel_to_wave, read_wav, write_wav

__all__ = [
    "FILE_EXTENSIONS",
    "codec_params",
    "display_scale",
    "image_grid",
    "logmel_image",
    "read_value",
    "to_uint8_image",
    "write_grid",
    "write_logmel_wav",
    "write_outputs",
    "write_png",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
TEXT_EXTENSIONS = (".txt",)
FILE_EXTENSIONS = (".npy", *IMAGE_EXTENSIONS, *AUDIO_EXTENSIONS, *TEXT_EXTENSIONS)
_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
GRID_MAX = 100  # at most this many samples in a ``NAME_grid.png``
WAV_PEAK = 0.9


# --- reading -------------------------------------------------------------------------------
def _extensions_for(cfg) -> tuple[str, ...]:
    """File extensions that a modality of this config can read."""
    ext: tuple[str, ...] = (".npy",)
    if cfg.kind == "image":
        ext += IMAGE_EXTENSIONS
    if cfg.kind == "sequence" and cfg.codec == "logmel":
        ext += AUDIO_EXTENSIONS
    if cfg.kind in ("text", "label"):
        ext += TEXT_EXTENSIONS
    return ext


def _looks_like_path(text: str, kind: str) -> bool:
    """A known file extension, or (outside free text) a path separator, or an existing file."""
    if Path(text).suffix.lower() in FILE_EXTENSIONS:
        return True
    if kind != "text" and ("/" in text or "\\" in text):
        return True
    return kind != "text" and Path(text).suffix != "" and Path(text).is_file()


def read_value(modality, text: str, n: int | None = None) -> Tensor | str:
    """Turn a command-line value into something ``modality.prepare`` accepts.

    Files (by extension): ``.npy`` (one value or ``n`` values; checked against the modality),
    images ``.png/.jpg/.jpeg/.webp`` -> (C, H, W) in [-1, 1], audio ``.wav/.flac/.ogg`` for a
    log-mel sequence -> (L, mels), ``.txt`` for text or label -> its stripped content.
    Literals: label -> the class name or id string, text -> the string, vector ->
    comma-separated floats (D,).

    Raises:
        FileNotFoundError: the value looks like a path but the file does not exist.
        ValueError: unreadable file, wrong size, an extension that does not fit the
            modality's kind, or a literal the kind cannot take.
    """
    cfg = modality.cfg
    where = f"modality '{cfg.name}' ({cfg.kind})"
    if _looks_like_path(text, cfg.kind):
        return _read_file(modality, Path(text), n)
    if cfg.kind in ("label", "text"):
        return text
    if cfg.kind == "vector":
        return _parse_vector(text, where)
    raise ValueError(f"{where}: expected a file ({', '.join(_extensions_for(cfg))}), got {text!r}")


def _read_file(modality, path: Path, n: int | None) -> Tensor | str:
    cfg = modality.cfg
    where = f"modality '{cfg.name}'"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: file '{path}' for modality '{cfg.name}' does not exist")
    ext = path.suffix.lower()
    allowed = _extensions_for(cfg)
    if ext not in allowed:
        codec = f", codec '{cfg.codec}'" if cfg.codec else ""
        raise ValueError(
            f"file '{path}': a '{ext or '(no extension)'}' file does not fit modality "
            f"'{cfg.name}' of kind '{cfg.kind}'{codec}; expected one of {', '.join(allowed)}"
        )
    if ext == ".npy":
        return _read_npy(modality, path, n)
    if ext in IMAGE_EXTENSIONS:
        return read_image_for(cfg, path)
    if ext in AUDIO_EXTENSIONS:
        return read_logmel(path, codec_params(cfg), cfg.shape, cfg.name)
    return _read_text(path, cfg.name)


def _read_npy(modality, path: Path, n: int | None) -> Tensor:
    """A ``.npy`` array, checked by ``modality.prepare`` (errors then name the file)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(
            f"file '{path}' for modality '{modality.cfg.name}': not a readable .npy array ({err})"
        ) from err
    x = torch.from_numpy(np.ascontiguousarray(arr))
    try:
        modality.prepare(x, n)
    except ValueError as err:
        raise ValueError(f"file '{path}': {err}") from err
    return x


def _read_text(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as err:
        raise ValueError(
            f"file '{path}' for modality '{name}': expected UTF-8 text ({err})"
        ) from err


def _parse_vector(text: str, where: str) -> Tensor:
    """``"0.5, -1, 2"`` -> float32 (D,)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{where}: expected comma-separated numbers, got {text!r}") from None
    return torch.tensor(values, dtype=torch.float32)


IMAGE_FITS = ("exact", "crop", "stretch")


def read_image(
    path: str | Path, shape: tuple[int, ...], name: str = "image", fit: str = "exact"
) -> Tensor:
    """Read an image file as float32 (C, H, W) in [-1, 1] for a modality of ``shape``.

    The file is converted to C channels (grey, RGB or RGBA). ``fit`` says what to do when its
    size is not (H, W): ``exact`` refuses it, ``crop`` scales the shorter side to fit and
    centre-crops the rest (the usual training preprocessing), ``stretch`` resizes to (H, W).

    Raises:
        ValueError: unreadable file, unsupported channel count, or (``exact``) another size.
    """
    c, h, w = shape
    if fit not in IMAGE_FITS:
        raise ValueError(f"image fit: expected one of {IMAGE_FITS}, got {fit!r}")
    if c not in _PIL_MODES:
        raise ValueError(
            f"file '{path}': modality '{name}' has {c} channels; image files need 1, 3 or 4"
        )
    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert(_PIL_MODES[c])
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(
            f"cannot read image file '{path}' for modality '{name}': expected a PNG/JPEG/WebP "
            f"image of {h}x{w} pixels (H x W) ({err})"
        ) from err
    if (img.height, img.width) != (h, w):
        if fit == "exact":
            raise ValueError(
                f"image file '{path}' for modality '{name}': expected {h}x{w} pixels (H x W), "
                f"found {img.height}x{img.width}"
            )
        if fit == "crop":
            scale = max(h / img.height, w / img.width)
            size = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
            img = img.resize(size, Image.Resampling.BICUBIC)
            left, top = (img.width - w) // 2, (img.height - h) // 2
            img = img.crop((left, top, left + w, top + h))
        else:
            img = img.resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32).reshape(h, w, c)  # (H, W, C)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1).contiguous()  # (C, H, W)


def read_image_for(cfg, path: str | Path, fit: str = "exact") -> Tensor:
    """An image file as the value of image modality ``cfg``: pixels (C, H, W) in [-1, 1], or
    for ``codec: vae`` the latents (C, h, w) of the file read at the autoencoder's size."""
    if cfg.codec != "vae":
        return read_image(path, tuple(cfg.shape), cfg.name, fit)
    from anydit.data.vae import codec_at

    codec = codec_at(cfg.codec_path)
    pixels = read_image(path, codec.pixel_shape(cfg.shape, cfg.name), cfg.name, fit)
    return codec.encode(pixels[None])[0]


def codec_params(cfg) -> MelParams:
    """The ``MelParams`` of a ``codec="logmel"`` modality config (its ``codec_args``)."""
    fields = {f.name: type(f.default) for f in dataclasses.fields(MelParams)}
    unknown = sorted(set(cfg.codec_args) - set(fields))
    if unknown:
        raise ValueError(
            f"modality '{cfg.name}': unknown codec_args {unknown}; expected some of {list(fields)}"
        )
    return MelParams(**{k: fields[k](v) for k, v in cfg.codec_args.items()})


def resample(wave: Tensor, rate_in: int, rate_out: int) -> Tensor:
    """Band-limited resampling of ``wave (S,)`` by zero-padding or truncating its spectrum."""
    if rate_in == rate_out:
        return wave
    length = max(1, round(wave.shape[-1] * rate_out / rate_in))
    spec = torch.fft.rfft(wave.double())  # (S // 2 + 1,)
    out = torch.zeros(length // 2 + 1, dtype=spec.dtype)
    keep = min(len(out), len(spec))
    out[:keep] = spec[:keep]
    return (torch.fft.irfft(out, n=length) * (length / wave.shape[-1])).float()


def fit_length(wave: Tensor, length: int) -> Tensor:
    """Pad with zeros or crop ``wave (S,)``, centred, to ``length`` samples."""
    extra = wave.shape[-1] - length
    if extra >= 0:
        start = extra // 2
        return wave[start : start + length]
    before = -extra // 2
    return torch.nn.functional.pad(wave, (before, -extra - before))


def read_logmel(
    path: str | Path, params: MelParams, shape: tuple[int, ...], name: str = "audio"
) -> Tensor:
    """Read an audio file as a normalised log-mel (L, mels) for a sequence of ``shape``.

    The waveform is mixed to mono, resampled to ``params.sample_rate``, padded or cropped
    (centred) to ``L * hop`` samples.
    """
    frames, mels = shape
    if mels != params.n_mels:
        raise ValueError(
            f"modality '{name}': shape {tuple(shape)} has {mels} channels but its codec_args "
            f"have n_mels = {params.n_mels}"
        )
    wave, rate = read_wav(path)  # (S,)
    if wave.numel() == 0:
        raise ValueError(f"audio file '{path}' for modality '{name}' holds no samples")
    wave = fit_length(resample(wave, rate, params.sample_rate), params.n_samples(frames))
    return log_mel(wave, params)  # (L, mels)


# --- pictures -----------------------------------------------------------------------------
def to_uint8_image(x: Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) in [-1, 1] -> uint8 (H, W) for one channel, else (H, W, C)."""
    arr = x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in _PIL_MODES:
        raise ValueError(f"expected an image (C, H, W) with C in 1, 3, 4, got shape {arr.shape}")
    u8 = np.rint((np.clip(arr, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)  # (C, H, W)
    return u8[0] if u8.shape[0] == 1 else np.ascontiguousarray(u8.transpose(1, 2, 0))


def _upscale(u8: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (H, W) or (H, W, C) by an integer ``scale``."""
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    return u8.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else u8


def display_scale(height: int, width: int, target: int = 256, cap: int = 8) -> int:
    """An integer upscale factor that makes small pictures visible (8 for <= 32 px)."""
    return max(1, min(cap, target // max(height, width)))


def write_png(path: str | Path, x: Tensor | np.ndarray, scale: int = 1) -> None:
    """Write an image (C, H, W) in [-1, 1] as PNG, upscaled ``scale`` times (nearest)."""
    Image.fromarray(_upscale(to_uint8_image(x), scale)).save(path, format="PNG")


def image_grid(
    images: Tensor | np.ndarray, nrow: int, scale: int = 1, pad: int = 1, pad_value: int = 255
) -> np.ndarray:
    """Tile images (N, C, H, W) in [-1, 1], ``nrow`` per row, into one uint8 picture.

    Returns (H', W') for one channel, else (H', W', C); ``pad`` pixels of ``pad_value`` sit
    between and around the (upscaled) images.
    """
    if len(images) == 0:
        raise ValueError("image_grid: got no images")
    tiles = [_upscale(to_uint8_image(img), scale) for img in images]
    h, w = tiles[0].shape[:2]
    cols = max(1, min(nrow, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    grid = np.full(
        (rows * (h + pad) + pad, cols * (w + pad) + pad, *tiles[0].shape[2:]),
        pad_value,
        dtype=np.uint8,
    )
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = tile
    return grid


def write_grid(
    path: str | Path, images: Tensor | np.ndarray, nrow: int, scale: int = 1, pad: int = 1
) -> None:
    """Write :func:`image_grid` as PNG."""
    Image.fromarray(image_grid(images, nrow, scale, pad)).save(path, format="PNG")


def logmel_image(mel: Tensor) -> Tensor:
    """Log-mels (..., L, mels) -> pictures (..., 1, mels, L): mels vertical, low at the bottom."""
    return mel.transpose(-1, -2).flip(-2).unsqueeze(-3)


# --- sound ---------------------------------------------------------------------------------
def write_logmel_wav(
    path: str | Path, mel: Tensor, params: MelParams, iters: int = 32, seed: int = 0
) -> None:
    """Invert a log-mel (L, mels) with Griffin-Lim and write it as WAV, peak at 0.9."""
    wave = mel_to_wave(mel, params, iters=iters, seed=seed)  # (L * hop,)
    peak = float(wave.abs().max())
    if peak > 0:
        wave = wave * (WAV_PEAK / peak)
    write_wav(path, wave, params.sample_rate)


# --- outputs of a sampling run ---------------------------------------------------------------
def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but takes any key (a modality may be called ``file``)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def _to_numpy(x: Tensor) -> np.ndarray:
    x = x.detach().cpu()
    if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x.numpy()


def _write_images(out: Path, stem: str, x: Tensor) -> list[str]:
    """Per-sample PNGs and a grid of images (N, C, H, W)."""
    scale = display_scale(*x.shape[-2:])
    paths = []
    for i, img in enumerate(x):
        paths.append(str(out / f"{stem}_{i:05d}.png"))
        write_png(paths[-1], img, scale)
    paths.append(str(out / f"{stem}_grid.png"))
    shown = x[:GRID_MAX]
    write_grid(paths[-1], shown, nrow=min(len(shown), 10), scale=scale)
    return paths


def _write_video(out: Path, stem: str, x: Tensor) -> list[str]:
    """One PNG strip of frames per sample of a video (N, T, C, H, W)."""
    scale = display_scale(*x.shape[-2:], target=128)
    paths = []
    for i, video in enumerate(x):
        paths.append(str(out / f"{stem}_{i:05d}.png"))
        Image.fromarray(image_grid(video, nrow=len(video), scale=scale)).save(paths[-1])
    return paths


def _write_logmels(out: Path, stem: str, x: Tensor, params: MelParams) -> list[str]:
    """Per-sample WAVs and a spectrogram grid of log-mels (N, L, mels)."""
    paths = []
    for i, mel in enumerate(x):
        paths.append(str(out / f"{stem}_{i:05d}.wav"))
        write_logmel_wav(paths[-1], mel, params, seed=i)
    pictures = logmel_image(x[:GRID_MAX])  # (N, 1, mels, L)
    paths.append(str(out / f"{stem}_grid.png"))
    scale = display_scale(*pictures.shape[-2:], target=128)
    write_grid(paths[-1], pictures, nrow=min(len(pictures), 10), scale=scale)
    return paths


def _write_jsonl(path: Path, rows: list[dict]) -> list[str]:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return [str(path)]


def _write_modality(out: Path, stem: str, m, x: Tensor) -> list[str]:
    """The human files of one modality (none for vectors and raw sequences)."""
    kind = m.cfg.kind
    if kind == "image" and m.cfg.codec == "vae":
        from anydit.data.vae import codec_at

        return _write_images(out, stem, codec_at(m.cfg.codec_path).decode(x))
    if kind == "image" and x.shape[1] in _PIL_MODES:
        return _write_images(out, stem, x)
    if kind == "video" and x.shape[2] in _PIL_MODES:
        return _write_video(out, stem, x)
    if kind == "sequence" and m.cfg.codec == "logmel":
        return _write_logmels(out, stem, x, codec_params(m.cfg))
    if kind == "label":
        ids, names = x.reshape(-1).tolist(), m.decode(x)
        pairs = enumerate(zip(ids, names, strict=True))
        rows = [{"index": i, "id": k, "name": str(v)} for i, (k, v) in pairs]
        return _write_jsonl(out / f"{stem}.jsonl", rows)
    if kind == "text":
        rows = [{"index": i, "text": s} for i, s in enumerate(m.decode(x))]
        return _write_jsonl(out / f"{stem}.jsonl", rows)
    return []


def write_outputs(
    out_dir: str | Path, model, samples: dict[str, Tensor], prefix: str = ""
) -> dict[str, list[str]]:
    """Write the results of ``anydit.sample`` as files people can open.

    image -> ``NAME_00000.png`` per sample (upscaled; 8x for images up to 32 px) and
    ``NAME_grid.png``; log-mel sequence -> ``NAME_00000.wav`` per sample and a spectrogram
    ``NAME_grid.png``; label -> ``NAME.jsonl`` (index, id, name); text -> ``NAME.jsonl``
    (index, text); vectors and other sequences -> only the arrays. Always ``samples.npz``
    with every modality as a raw (N, *shape) array. Every file name starts with ``prefix``.

    Returns:
        {modality: [paths]} and ``"samples.npz": [path]``.

    Raises:
        ValueError: a sample names a modality the model does not have.
        OSError: the folder cannot be created or written (the message names it).
    """
    unknown = sorted(set(samples) - set(model.modalities))
    if unknown:
        raise ValueError(f"samples name unknown modalities {unknown}; the model has {model.names}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        npz = out / f"{prefix}samples.npz"
        _save_npz(npz, {k: _to_numpy(v) for k, v in samples.items()})
        written = {
            name: _write_modality(out, f"{prefix}{name}", model.modalities[name], x.detach().cpu())
            for name, x in samples.items()
        }
    except OSError as err:
        raise type(err)(f"cannot write outputs to folder '{out}': {err.strerror or err}") from err
    written["samples.npz"] = [str(npz)]
    return written
