"""The built-in ``digits`` audio-visual dataset: 8x8 images, captions and spoken log-mels.

* Images: scikit-learn's ``load_digits`` (1,797 images, 8x8, values 0..16) mapped to float32
  ``x / 8 - 1`` in ``[-1, 1]``, shape (1, 8, 8). Fixed split: for each digit, a permutation of
  its images drawn with ``np.random.default_rng(0)`` puts the first 36 in test and the next 10
  in val; so test holds 360 images (36 per digit), val 100 and train the other 1,337.
* Audio: ``assets/digits_audio.npz`` (see ``scripts/build_digits_audio.py``), log-mels (32
  frames x 32 mel bands) of espeak-ng speaking the digit name: 40 voice names x 5 speed/pitch
  settings x 10 digits (35 distinct voices: this espeak-ng ignores the variant of ``en-gb``,
  so ``en-gb`` and ``en-gb+{f1,m2,m3,m4,m6}`` are the same recordings). The split holds out
  whole voices (``TEST_VOICES``, ``VAL_VOICES``): a model is tested on voices it never heard,
  at every setting, and sampler settings are chosen on two other unheard voices. Other
  variants of a test voice's accent do train (``en-gb-x-rp+m1``, ``en-us+f1``): what is held
  out is the voice, not the accent. The asset's ``split`` column stores the same assignment.
* Splits: ``train`` for training and the judges, ``val`` for choosing sampler settings,
  ``test`` for the reported numbers.
* Pairing (as in audio-visual MNIST): each image gets one recording of the same digit from the
  same split, and one caption template; both are redrawn every epoch from an RNG seeded by
  ``(seed, epoch, index)``, so an item is a deterministic function of those three numbers.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from anydit.config import ModalityConfig
from anydit.modalities.logmel import MelParams

__all__ = [
    "DIGIT_NAMES",
    "SPLITS",
    "DigitsDataset",
    "audio_split",
    "augment_voice",
    "caption_templates",
    "digits_modalities",
    "format_caption",
    "load_digit_audio",
    "load_digit_images",
    "mel_params",
]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "val", "test")
N_TEST_PER_DIGIT = 36
N_VAL_PER_DIGIT = 10
# Whole voices held out of training: one of each kind (a plain accent, a female variant, the
# Klatt synthesiser) for test, two others (an accent, a female variant) for val; the other 35
# voice names (30 distinct voices) train.
TEST_VOICES = ("en-gb-x-rp", "en-us+f2", "en-029+klatt")
VAL_VOICES = ("en-gb-x-gbcwmd", "en-us-nyc+f5")
SPLIT_SEED = 0
AUDIO_ASSET = "digits_audio.npz"

_TEMPLATES = (
    "{name}",
    "{digit}",
    "the digit {digit}",
    "the digit {name}",
    "digit {name}",
    "number {name}",
    "the number {digit}",
    "a handwritten {name}",
    "{a_name}",
    "an image of {a_name}",
    "a picture of the digit {digit}",
    "a small handwritten {digit}",
)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def caption_templates() -> tuple[str, ...]:
    """Caption templates with ``{name}`` ("seven"), ``{digit}`` ("7") and ``{a_name}`` fields."""
    return _TEMPLATES


def format_caption(template: str, label: int) -> str:
    """Fill a caption template for digit ``label``."""
    name = DIGIT_NAMES[label]
    article = "an" if name[0] in "aeiou" else "a"
    return template.format(name=name, digit=str(label), a_name=f"{article} {name}")


@lru_cache(maxsize=1)
def _all_images() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All images ``(1797, 1, 8, 8)`` float32, labels ``(1797,)`` int64, split names
    ``(1797,)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # (N, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    split = np.full(len(labels), "train", dtype="<U5")
    rng = np.random.default_rng(SPLIT_SEED)
    for digit in range(10):
        order = rng.permutation(np.nonzero(labels == digit)[0])
        split[order[:N_TEST_PER_DIGIT]] = "test"
        split[order[N_TEST_PER_DIGIT : N_TEST_PER_DIGIT + N_VAL_PER_DIGIT]] = "val"
    for array in (images, labels, split):
        array.setflags(write=False)
    return images, labels, split


def load_digit_images(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 8, 8)`` float32 in ``[-1, 1]`` and labels ``(N,)`` int64 of a split."""
    images, labels, splits = _all_images()
    keep = splits == _check_split(split)
    return torch.from_numpy(images[keep].copy()), torch.from_numpy(labels[keep].copy())


@lru_cache(maxsize=1)
def _audio_npz() -> dict[str, np.ndarray]:
    path = Path(__file__).with_name("assets") / AUDIO_ASSET
    if not path.is_file():
        raise FileNotFoundError(f"missing audio asset {path}; run scripts/build_digits_audio.py")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


# Caption length in tokens per tokenizer: the longest template fills it.
TEXT_LENGTH = {"digits-words": 6, "bytes": 24}


def digits_modalities(tokenizer: str = "digits-words") -> list[ModalityConfig]:
    """The four modalities of the built-in ``digits`` dataset, as the demo declares them.

    image (1, 8, 8) in [-1, 1], 2x2 patches (16 tokens); label: 10 classes named by
    ``DIGIT_NAMES``; text: captions of up to 6 words (``tokenizer`` "digits-words", the
    default) or 24 bytes ("bytes"); audio: (32 frames, 32 mels) normalised log-mel, 4 frames
    per token (8 tokens).
    """
    if tokenizer not in TEXT_LENGTH:
        raise ValueError(
            f"digits captions: tokenizer {tokenizer!r}; expected one of {list(TEXT_LENGTH)}"
        )
    return [
        ModalityConfig("image", "image", (1, 8, 8), patch=2),
        ModalityConfig("label", "label", classes=DIGIT_NAMES),
        ModalityConfig("text", "text", (TEXT_LENGTH[tokenizer],), tokenizer=tokenizer),
        ModalityConfig(
            "audio",
            "sequence",
            (32, 32),
            patch=4,
            codec="logmel",
            codec_args=mel_params().to_dict(),
        ),
    ]


def mel_params() -> MelParams:
    """The log-mel parameters of the shipped recordings."""
    return MelParams.from_npz(_audio_npz())


def audio_split(voices: np.ndarray) -> np.ndarray:
    """The split name of each recording, from its voice: ``(N,)`` strings."""
    out = np.full(len(voices), "train", dtype="<U5")
    out[np.isin(voices, TEST_VOICES)] = "test"
    out[np.isin(voices, VAL_VOICES)] = "val"
    return out


def load_digit_audio(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mels ``(N, 32, 32)`` float32 (frames, mels) in ``[-1, 1]`` and labels ``(N,)`` int64
    of a split (whole voices: 1,750 train, 100 val, 150 test recordings)."""
    data = _audio_npz()
    keep = audio_split(data["voice"]) == _check_split(split)
    mel = torch.from_numpy(data["mel"][keep].astype(np.float32))
    return mel, torch.from_numpy(data["label"][keep].astype(np.int64))


def augment_voice(
    mel: torch.Tensor, rng: np.random.Generator, max_shift: int = 2, max_tilt: float = 0.2
) -> torch.Tensor:
    """A recording as another voice might say it: (frames, mels) -> (frames, mels).

    The mel axis is shifted by k in [-max_shift, max_shift] bins (a longer or shorter vocal
    tract moves every formant by about the same share of the mel scale; the emptied edge
    repeats its neighbour) and a spectral tilt ``a * linspace(-1, 1)``, ``|a| <= max_tilt``, is
    added to the non-silent cells (another glottal source: brighter or darker), clamped to
    [-1, 1]. Silence (-1) stays silence.
    """
    k = int(rng.integers(-max_shift, max_shift + 1))
    tilt = float(rng.uniform(-max_tilt, max_tilt))
    out = mel.clone()
    if k > 0:
        out[:, k:] = mel[:, :-k]
        out[:, :k] = mel[:, :1]
    elif k < 0:
        out[:, :k] = mel[:, -k:]
        out[:, k:] = mel[:, -1:]
    ramp = torch.linspace(-1.0, 1.0, mel.shape[1]) * tilt  # (mels,)
    voiced = out > -1.0 + 1e-3
    return torch.where(voiced, (out + ramp).clamp(-1.0, 1.0), out)


class DigitsDataset(Dataset):
    """Image + caption + spoken-digit items, re-paired every epoch (see module docstring).

    Items are dicts: ``image`` float32 (1, 8, 8), ``label`` int64 scalar, ``text`` str,
    ``audio`` float32 (32, 32) as (frames, mels). ``seed`` only changes the pairing, caption
    and augmentation draws, never the split. ``augment``: each recording is changed as another
    voice might say it (``augment_voice``, drawn per item and epoch).
    """

    def __init__(self, split: str = "train", seed: int = 0, augment: bool = False) -> None:
        _check_split(split)
        self.split = split
        self.seed = int(seed)
        self.augment = bool(augment)
        self.epoch = 0
        self.images, self.labels = load_digit_images(split)  # (N, 1, 8, 8), (N,)
        self.audio, self.audio_labels = load_digit_audio(split)  # (M, 32, 32), (M,)
        self._audio_by_label = [
            np.nonzero(self.audio_labels.numpy() == d)[0] for d in range(len(DIGIT_NAMES))
        ]
        if any(len(idx) == 0 for idx in self._audio_by_label):
            raise RuntimeError(f"audio asset has a digit without {split} recordings")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose pairings and captions ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def pairing(self, index: int) -> tuple[int, int]:
        """``(caption template index, audio recording index)`` drawn for ``index`` this epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        template = int(rng.integers(len(_TEMPLATES)))
        candidates = self._audio_by_label[int(self.labels[index])]
        return template, int(candidates[rng.integers(len(candidates))])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if index < 0:
            index += len(self)
        template, audio_index = self.pairing(index)
        label = int(self.labels[index])
        audio = self.audio[audio_index].clone()  # (32, 32)
        if self.augment:
            audio = augment_voice(audio, np.random.default_rng([self.seed, self.epoch, index, 1]))
        return {
            "image": self.images[index].clone(),  # (1, 8, 8)
            "label": torch.tensor(label, dtype=torch.int64),
            "text": format_caption(_TEMPLATES[template], label),
            "audio": audio,
        }
