"""The log-mel codec: audio <-> normalised log-mel frames, inversion (Griffin-Lim), WAV files.

Conventions (shared by ``scripts/build_digits_audio.py`` and the ``digits`` dataset):

* mel scale: HTK (``mel = 2595 * log10(1 + f / 700)``), triangular filters with unit peak
  (no area normalisation);
* STFT: periodic Hann window of length ``n_fft``, ``center=True`` with zero padding, magnitudes
  divided by the window sum so a full-scale sine has magnitude ~0.5; power = magnitude ** 2;
* framing: a waveform of ``S`` samples gives ``S // hop`` frames, frame ``t`` centred on sample
  ``t * hop`` (the trailing frame centred on the very last sample boundary is dropped);
* normalisation: ``v = clamp(log10(mel_power + 1e-10), log_min, log_max)`` mapped linearly to
  ``[-1, 1]`` (``log_min -> -1`` = silence, ``log_max -> 1``);
* layout: ``(..., frames, n_mels)``, i.e. (L, C).
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

__all__ = [
    "MelParams",
    "fit_length",
    "hz_to_mel",
    "log_mel",
    "logmel_image",
    "mel_filterbank",
    "params_from_args",
    "mel_to_hz",
    "mel_to_wave",
    "read_logmel",
    "read_wav",
    "resample",
    "write_logmel_wav",
    "write_wav",
]

_EPS = 1e-10
MIN_RATE, MAX_RATE = 1_000, 768_000  # sample rates of files that are read
MIN_MAX_SECONDS = 60.0  # a file may be this long whatever the modality's length
WAV_PEAK = 0.9


@dataclass(frozen=True)
class MelParams:
    """STFT / mel / normalisation parameters of a log-mel representation."""

    sample_rate: int = 16_000
    n_fft: int = 1024
    hop: int = 400
    n_mels: int = 32
    fmin: float = 20.0
    fmax: float = 8_000.0
    log_min: float = -7.0
    log_max: float = -1.0

    @classmethod
    def from_npz(cls, source: str | Path | np.lib.npyio.NpzFile) -> MelParams:
        """Read the scalar parameter keys from an ``.npz`` file (path or opened archive)."""
        if isinstance(source, (str, Path)):
            with np.load(source) as data:
                return cls.from_npz(data)
        return cls(
            sample_rate=int(source["sample_rate"]),
            n_fft=int(source["n_fft"]),
            hop=int(source["hop"]),
            n_mels=int(source["n_mels"]),
            fmin=float(source["fmin"]),
            fmax=float(source["fmax"]),
            log_min=float(source["log_min"]),
            log_max=float(source["log_max"]),
        )

    def to_dict(self) -> dict[str, int | float]:
        """The parameters as a plain dict (the scalar keys stored in the ``.npz``)."""
        return asdict(self)

    def n_samples(self, n_frames: int) -> int:
        """Number of waveform samples that yields ``n_frames`` frames."""
        return n_frames * self.hop


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
) -> torch.Tensor:
    """Triangular HTK-mel filterbank with unit peaks, shape ``(n_mels, n_fft // 2 + 1)``."""
    if not 0.0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2, got {fmin=}, {fmax=}")
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    lo, hi = hz_to_mel(torch.tensor(float(fmin))), hz_to_mel(torch.tensor(float(fmax)))
    edges = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64))
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1)
    up = (freqs[None] - left) / (centre - left)  # (M, F)
    down = (right - freqs[None]) / (right - centre)  # (M, F)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(torch.float32)


def _window(params: MelParams, device: torch.device | None = None) -> torch.Tensor:
    return torch.hann_window(params.n_fft, periodic=True, dtype=torch.float32, device=device)


def _stft(wave: torch.Tensor, params: MelParams, n_frames: int) -> torch.Tensor:
    """Complex STFT ``(B, samples) -> (B, n_fft // 2 + 1, n_frames)``, scaled by 1 / sum(window)."""
    window = _window(params, wave.device)
    spec = torch.stft(
        wave,
        n_fft=params.n_fft,
        hop_length=params.hop,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    return spec[..., :n_frames] / window.sum()


def _istft(spec: torch.Tensor, params: MelParams, length: int) -> torch.Tensor:
    """Inverse of :func:`_stft` for ``(F, frames)`` -> ``(length,)``."""
    window = _window(params, spec.device)
    return torch.istft(
        spec * window.sum(),
        n_fft=params.n_fft,
        hop_length=params.hop,
        window=window,
        center=True,
        length=length,
    )


@lru_cache(maxsize=8)
def _inverse_filterbank(params: MelParams) -> torch.Tensor:
    """Pseudo-inverse of the filterbank (F, n_mels), computed once per parameter set."""
    fb = mel_filterbank(params.sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax)
    return torch.linalg.pinv(fb)


def log_mel(wave: torch.Tensor, params: MelParams) -> torch.Tensor:
    """Normalised log-mel of ``wave (..., samples)`` -> ``(..., samples // hop, n_mels)``.

    Values lie in ``[-1, 1]``; see the module docstring for the exact definition.
    """
    if wave.shape[-1] < params.hop:
        raise ValueError(f"need at least hop={params.hop} samples, got {wave.shape[-1]}")
    lead = wave.shape[:-1]
    n_frames = wave.shape[-1] // params.hop
    flat = wave.reshape(-1, wave.shape[-1]).to(torch.float32)  # (B, S)
    power = _stft(flat, params, n_frames).abs().pow(2)  # (B, F, T)
    fb = mel_filterbank(params.sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax)
    mel = torch.einsum("mf,bft->btm", fb.to(flat.device), power)  # (B, T, M)
    logv = torch.log10(mel + _EPS).clamp(params.log_min, params.log_max)
    norm = 2.0 * (logv - params.log_min) / (params.log_max - params.log_min) - 1.0
    return norm.reshape(*lead, n_frames, params.n_mels)


def mel_to_wave(
    mel: torch.Tensor, params: MelParams, iters: int = 32, seed: int = 0
) -> torch.Tensor:
    """Invert a normalised log-mel ``(frames, n_mels)`` to a waveform ``(frames * hop,)``.

    Undoes the normalisation, maps mel power back to linear power with the filterbank's
    pseudo-inverse (clamped at 0) and recovers a phase with fast Griffin-Lim (momentum 0.99,
    random initial phase from ``seed``). Values outside ``[-1, 1]`` are clamped first.
    """
    if mel.ndim != 2 or mel.shape[1] != params.n_mels:
        raise ValueError(f"expected mel of shape (frames, {params.n_mels}), got {tuple(mel.shape)}")
    mel = mel.detach().to(torch.float32).cpu().clamp(-1.0, 1.0)
    n_frames = mel.shape[0]
    length = params.n_samples(n_frames)
    logv = (mel + 1.0) * 0.5 * (params.log_max - params.log_min) + params.log_min  # (T, M)
    mel_power = (10.0**logv - _EPS).clamp(min=0.0)  # (T, M)
    power = (_inverse_filterbank(params) @ mel_power.T).clamp(min=0.0)  # (F, T)
    magnitude = power.sqrt()

    gen = torch.Generator().manual_seed(seed)
    angles = torch.rand(magnitude.shape, generator=gen) * (2.0 * math.pi)
    phase = torch.polar(torch.ones_like(magnitude), angles)  # (F, T) complex, unit modulus
    previous = torch.zeros_like(phase)
    momentum = 0.99
    for _ in range(iters):
        wave = _istft(magnitude * phase, params, length)  # (S,)
        rebuilt = _stft(wave[None], params, n_frames)[0]  # (F, T)
        accelerated = rebuilt - (momentum / (1.0 + momentum)) * previous
        phase = accelerated / accelerated.abs().clamp(min=1e-16)
        previous = rebuilt
    return _istft(magnitude * phase, params, length)


def write_wav(path: str | Path, wave: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write a mono waveform ``(samples,)`` in ``[-1, 1]`` as 16-bit PCM (clipping outside)."""
    data = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    data = np.clip(data.astype(np.float32).reshape(-1), -1.0, 1.0)
    sf.write(str(path), data, int(sample_rate), subtype="PCM_16")


def read_wav(
    source: str | Path | bytes, max_seconds: float | None = None
) -> tuple[torch.Tensor, int]:
    """Read an audio file (a path or its bytes) as a float32 mono waveform ``(samples,)``
    (channels averaged). The declared rate and length are checked before decoding: rates
    outside [1 kHz, 768 kHz] and files longer than ``max_seconds`` are refused.

    Raises:
        ValueError: a missing, unreadable, too long or oddly sampled file.
    """
    name = "(member)" if isinstance(source, bytes) else repr(str(source))
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        info = sf.info(handle)
        if not MIN_RATE <= info.samplerate <= MAX_RATE:
            raise ValueError(
                f"audio file {name}: sample rate {info.samplerate} Hz is outside "
                f"[{MIN_RATE}, {MAX_RATE}] Hz"
            )
        if max_seconds is not None and info.frames > max_seconds * info.samplerate:
            raise ValueError(
                f"audio file {name} is too large: {info.frames / info.samplerate:.1f} s, at "
                f"most {max_seconds:g} s for this modality"
            )
        if isinstance(handle, io.BytesIO):
            handle.seek(0)
        data, sample_rate = sf.read(handle, dtype="float32", always_2d=True)  # (S, ch)
    except ValueError:
        raise
    except Exception as err:  # libsndfile and its wrapper raise several types
        raise ValueError(
            f"cannot read audio file {name}: expected a readable WAV/FLAC/OGG file ({err})"
        ) from None
    return torch.from_numpy(data.mean(axis=1)), int(sample_rate)


def params_from_args(codec_args: dict) -> MelParams:
    """The ``MelParams`` of a ``codec: logmel`` modality's ``codec_args``; unknown keys and
    values that are not numbers are errors naming them."""
    fields = {f.name: type(f.default) for f in dataclasses.fields(MelParams)}
    if not isinstance(codec_args, dict):
        raise ValueError(f"codec_args: expected a mapping of {list(fields)}, got {codec_args!r}")
    unknown = sorted(set(codec_args) - set(fields))
    if unknown:
        raise ValueError(f"codec_args: unknown keys {unknown}; expected some of {list(fields)}")
    out = {}
    for k, v in codec_args.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"codec_args.{k}: expected a finite number, got {v!r}")
        if fields[k] is int and float(v) != int(v):
            raise ValueError(f"codec_args.{k}: expected an integer, got {v!r}")
        out[k] = fields[k](v)
    params = MelParams(**out)
    if params.sample_rate < MIN_RATE or params.n_fft < 2 or params.hop < 1 or params.n_mels < 1:
        raise ValueError(
            f"codec_args: sizes must be positive (sample_rate >= {MIN_RATE}), got {params}"
        )
    if not params.log_min < params.log_max:
        raise ValueError(f"codec_args: expected log_min < log_max, got {params}")
    mel_filterbank_check(params)
    return params


def mel_filterbank_check(params: MelParams) -> None:
    if not 0.0 <= params.fmin < params.fmax <= params.sample_rate / 2:
        raise ValueError(
            f"codec_args: need 0 <= fmin < fmax <= sample_rate / 2, got fmin={params.fmin}, "
            f"fmax={params.fmax}, sample_rate={params.sample_rate}"
        )


def resample(wave: torch.Tensor, rate_in: int, rate_out: int) -> torch.Tensor:
    """Band-limited resampling of ``wave (S,)`` by zero-padding or truncating its spectrum."""
    if rate_in == rate_out:
        return wave
    length = max(1, round(wave.shape[-1] * rate_out / rate_in))
    spec = torch.fft.rfft(wave.double())  # (S // 2 + 1,)
    out = torch.zeros(length // 2 + 1, dtype=spec.dtype)
    keep = min(len(out), len(spec))
    out[:keep] = spec[:keep]
    return (torch.fft.irfft(out, n=length) * (length / wave.shape[-1])).float()


def fit_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Pad with zeros or crop ``wave (S,)``, centred, to ``length`` samples."""
    extra = wave.shape[-1] - length
    if extra >= 0:
        start = extra // 2
        return wave[start : start + length]
    before = -extra // 2
    return torch.nn.functional.pad(wave, (before, -extra - before))


def read_logmel(
    source: str | Path | bytes, params: MelParams, shape: tuple[int, ...], name: str = "audio"
) -> torch.Tensor:
    """Read an audio file as a normalised log-mel (L, mels) for a sequence of ``shape``.

    The waveform is mixed to mono, resampled to ``params.sample_rate``, padded or cropped
    (centred) to ``L * hop`` samples. Files longer than ``max(60 s, 10 x L * hop)`` are refused.
    """
    frames, mels = shape
    if mels != params.n_mels:
        raise ValueError(
            f"modality '{name}': shape {tuple(shape)} has {mels} channels but its codec_args "
            f"have n_mels = {params.n_mels}"
        )
    needed = params.n_samples(frames) / params.sample_rate
    wave, rate = read_wav(source, max_seconds=max(MIN_MAX_SECONDS, 10 * needed))  # (S,)
    if wave.numel() == 0:
        where = "(member)" if isinstance(source, bytes) else f"'{source}'"
        raise ValueError(f"audio file {where} for modality '{name}' holds no samples")
    wave = fit_length(resample(wave, rate, params.sample_rate), params.n_samples(frames))
    return log_mel(wave, params)  # (L, mels)


def logmel_image(mel: torch.Tensor) -> torch.Tensor:
    """Log-mels (..., L, mels) -> pictures (..., 1, mels, L): mels vertical, low at the bottom."""
    return mel.transpose(-1, -2).flip(-2).unsqueeze(-3)


def write_logmel_wav(
    path: str | Path, mel: torch.Tensor, params: MelParams, iters: int = 32, seed: int = 0
) -> None:
    """Invert a log-mel (L, mels) with Griffin-Lim and write it as WAV, peak at 0.9."""
    wave = mel_to_wave(mel, params, iters=iters, seed=seed)  # (L * hop,)
    peak = float(wave.abs().max())
    if peak > 0:
        wave = wave * (WAV_PEAK / peak)
    write_wav(path, wave, params.sample_rate)
