"""The built-in ``digits`` audio-visual dataset: 8x8 images, captions and spoken log-mels.

* Images: scikit-learn's ``load_digits`` (1,797 images, 8x8, values 0..16) mapped to float32
  ``x / 8 - 1`` in ``[-1, 1]``, shape (1, 8, 8). Fixed split: for each digit, a permutation of
  its images drawn with ``np.random.default_rng(0)`` puts the first 36 in test; so test holds
  360 images (36 per digit) and train the other 1,437.
* Audio: ``assets/digits_audio.npz`` (see ``scripts/build_digits_audio.py``), log-mels (32
  frames x 32 mel bands) of espeak-ng speaking the digit name, with its own fixed split.
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
    "caption_templates",
    "digits_modalities",
    "format_caption",
    "load_digit_audio",
    "load_digit_images",
    "mel_params",
]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "test")
N_TEST_PER_DIGIT = 36
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


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return SPLITS.index(split)


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
    """All images ``(1797, 1, 8, 8)`` float32, labels ``(1797,)`` int64, split ids ``(1797,)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # (N, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    split = np.zeros(len(labels), dtype=np.int8)
    rng = np.random.default_rng(SPLIT_SEED)
    for digit in range(10):
        members = np.nonzero(labels == digit)[0]
        split[rng.permutation(members)[:N_TEST_PER_DIGIT]] = 1
    for array in (images, labels, split):
        array.setflags(write=False)
    return images, labels, split


def load_digit_images(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 8, 8)`` float32 in ``[-1, 1]`` and labels ``(N,)`` int64 of a split."""
    split_id = _check_split(split)
    images, labels, split_ids = _all_images()
    keep = split_ids == split_id
    return torch.from_numpy(images[keep].copy()), torch.from_numpy(labels[keep].copy())


@lru_cache(maxsize=1)
def _audio_npz() -> dict[str, np.ndarray]:
    path = Path(__file__).with_name("assets") / AUDIO_ASSET
    if not path.is_file():
        raise FileNotFoundError(f"missing audio asset {path}; run scripts/build_digits_audio.py")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def digits_modalities() -> list[ModalityConfig]:
    """The four modalities of the built-in ``digits`` dataset, as the demo declares them.

    image (1, 8, 8) in [-1, 1], 2x2 patches (16 tokens); label: 10 classes named by
    ``DIGIT_NAMES``; text: byte captions up to 24 bytes (the longest template fills it);
    audio: (32 frames, 32 mels) normalised log-mel, 4 frames per token (8 tokens).
    """
    return [
        ModalityConfig("image", "image", (1, 8, 8), patch=2),
        ModalityConfig("label", "label", classes=DIGIT_NAMES),
        ModalityConfig("text", "text", (24,)),
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


def load_digit_audio(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mels ``(N, 32, 32)`` float32 (frames, mels) in ``[-1, 1]`` and labels ``(N,)`` int64."""
    split_id = _check_split(split)
    data = _audio_npz()
    keep = data["split"] == split_id
    mel = torch.from_numpy(data["mel"][keep].astype(np.float32))
    return mel, torch.from_numpy(data["label"][keep].astype(np.int64))


class DigitsDataset(Dataset):
    """Image + caption + spoken-digit items, re-paired every epoch (see module docstring).

    Items are dicts: ``image`` float32 (1, 8, 8), ``label`` int64 scalar, ``text`` str,
    ``audio`` float32 (32, 32) as (frames, mels). ``seed`` only changes the pairing and caption
    draws, never the split.
    """

    def __init__(self, split: str = "train", seed: int = 0) -> None:
        _check_split(split)
        self.split = split
        self.seed = int(seed)
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
        return {
            "image": self.images[index].clone(),  # (1, 8, 8)
            "label": torch.tensor(label, dtype=torch.int64),
            "text": format_caption(_TEMPLATES[template], label),
            "audio": self.audio[audio_index].clone(),  # (32, 32)
        }
