"""Build ``src/anydit/data/assets/digits_audio.npz``: spoken digits "zero".."nine" as log-mels.

Requires ``espeak-ng`` on PATH (``apt-get install espeak-ng``). Deterministic: the same espeak-ng
build gives a byte-identical file (fixed zip timestamps, fixed order).

Pipeline per recording:

1. ``espeak-ng -v VOICE -s SPEED -p PITCH -w tmp.wav WORD`` (22,050 Hz mono);
2. trim leading/trailing silence: keep the span whose 10 ms frame RMS exceeds 2% of the maximum
   frame RMS;
3. resample to 16 kHz with ``scipy.signal.resample_poly(x, 320, 441)``;
4. peak-normalise to 0.9;
5. centre in a 0.8 s window (12,800 samples): zero-pad equally on both sides, or centre-crop
   when longer;
6. :func:`anydit.modalities.logmel.log_mel` with :data:`PARAMS` (n_fft 1024, hop 400 -> 32 frames,
   32 HTK mel bands 20-8000 Hz, log10 power clamped to [-7, -1] then mapped to [-1, 1]).

Voices: the 16 of ``VOICES`` (the first asset) and the 24 of ``EXTRA_VOICES`` (train only),
each recorded with the same 5 (speed, pitch) settings. Split (column ``split``: 0 train, 1 test,
2 val) by whole voices, as ``anydit.data.digits.audio_split`` assigns them: 3 test voices and 2
val voices of ``VOICES``, never heard in training. The extra voices pair training accents with
variants no test or val voice uses; other variants of a test voice's accent are in training
(``en-gb-x-rp+m1``, ``en-us+f1``): the voice is held out, not the accent. This espeak-ng ignores
the variant of ``en-gb``, so ``en-gb+{f1,m2,m3,m4,m6}`` repeat ``en-gb`` (35 distinct voices).

Usage: ``python scripts/build_digits_audio.py --out src/anydit/data/assets/digits_audio.npz``
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from anydit.data.digits import audio_split
from anydit.modalities.logmel import MelParams, log_mel

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Accent + variant (``+name`` picks an espeak-ng voice variant).
VOICES = (
    "en-gb",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us+f2",
    "en-gb+m3",
    "en+f4",
    "en-us+m7",
    "en-gb-scotland+f3",
    "en-029+klatt",
    "en-us-nyc+f5",
    "en-gb-x-rp+m1",
)
# More training voices: six accents (not the test voices' en-gb-x-rp nor the val voices'
# en-gb-x-gbcwmd) x four variants that no voice of VOICES uses, none of them Klatt-synthesised
# (the test voice en-029+klatt is) nor f2 / f5 (a test and a val voice): 40 voices in all.
# (On val, 40 voices instead of 16: label -> audio 95.5% -> 99%, image -> audio 82% -> 87%.)
EXTRA_ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan")
EXTRA_VARIANTS = ("m2", "m4", "m6", "f1")
EXTRA_VOICES = tuple(f"{a}+{v}" for v in EXTRA_VARIANTS for a in EXTRA_ACCENTS)
# (words per minute, pitch 0-99)
SETTINGS = ((120, 50), (140, 30), (140, 70), (165, 40), (190, 60))
SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
DURATION_S = 0.8
PEAK = 0.9
PARAMS = MelParams()


def synthesise(word: str, voice: str, speed: int, pitch: int, workdir: Path) -> np.ndarray:
    """Run espeak-ng and return the float32 mono waveform at its native rate (22,050 Hz)."""
    out = workdir / "word.wav"
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), word]
    subprocess.run(cmd, check=True, capture_output=True)
    wave, sr = sf.read(str(out), dtype="float32", always_2d=True)
    if sr != 22_050:
        raise RuntimeError(f"espeak-ng produced {sr} Hz audio, expected 22050 Hz")
    return wave.mean(axis=1)


def trim_silence(wave: np.ndarray, sr: int, rel_threshold: float = 0.02) -> np.ndarray:
    """Keep the span of 10 ms frames whose RMS exceeds ``rel_threshold`` x the max frame RMS."""
    frame = sr // 100
    n = len(wave) // frame
    rms = np.sqrt((wave[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1))
    active = np.nonzero(rms > rel_threshold * rms.max())[0]
    return wave[active[0] * frame : (active[-1] + 1) * frame]


def fit_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Centre ``wave`` in ``length`` samples: symmetric zero-padding or a centre crop."""
    if len(wave) >= length:
        start = (len(wave) - length) // 2
        return wave[start : start + length]
    left = (length - len(wave)) // 2
    return np.pad(wave, (left, length - len(wave) - left))


def process(raw: np.ndarray) -> np.ndarray:
    """Raw 22,050 Hz espeak output -> fixed-length 16 kHz waveform ``(12800,)`` float32."""
    wave = trim_silence(raw, 22_050)
    wave = resample_poly(wave.astype(np.float64), 320, 441)  # 22050 * 320 / 441 = 16000
    wave = PEAK * wave / np.abs(wave).max()
    return fit_length(wave, round(DURATION_S * PARAMS.sample_rate)).astype(np.float32)


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps, so output is reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def build(out: Path) -> dict[str, np.ndarray]:
    """Synthesise every (digit, voice, setting) recording and write the ``.npz`` to ``out``."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found on PATH (apt-get install espeak-ng)")
    waves, labels, voices, speeds, pitches = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for digit, word in enumerate(DIGIT_NAMES):
            for voice in (*VOICES, *EXTRA_VOICES):
                for speed, pitch in SETTINGS:
                    waves.append(process(synthesise(word, voice, speed, pitch, Path(tmp))))
                    labels.append(digit)
                    voices.append(voice)
                    speeds.append(speed)
                    pitches.append(pitch)
    splits = [SPLIT_CODES[s] for s in audio_split(np.asarray(voices))]
    with torch.no_grad():
        mel = log_mel(torch.from_numpy(np.stack(waves)), PARAMS).numpy()  # (N, 32, 32)
    arrays: dict[str, np.ndarray] = {
        "mel": mel.astype(np.float16),
        "label": np.asarray(labels, dtype=np.int64),
        "voice": np.asarray(voices, dtype=np.str_),
        "speed": np.asarray(speeds, dtype=np.int16),
        "pitch": np.asarray(pitches, dtype=np.int16),
        "split": np.asarray(splits, dtype=np.int8),
    }
    for key, value in PARAMS.to_dict().items():
        arrays[key] = np.asarray(value, dtype=np.int64 if isinstance(value, int) else np.float64)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_npz_deterministic(out, arrays)
    return arrays


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("src/anydit/data/assets/digits_audio.npz"))
    args = parser.parse_args()
    arrays = build(args.out)
    counts = {k: int((arrays["split"] == c).sum()) for k, c in SPLIT_CODES.items()}
    size_kb = args.out.stat().st_size / 1024
    print(f"wrote {args.out}: {len(arrays['label'])} recordings {counts}, {size_kb:.0f} KiB")


if __name__ == "__main__":
    main()
