"""The contract every kind of modality fulfils: its config, raw values <-> tokens + positions,
and the files it reads and writes.

Ein notation: b batch, n tokens of this modality, p features per token.

Positions are three rotary axes (time, row, column). A modality without some axis puts 0 there,
and a modality without positions (vector, label) puts 0 everywhere: rotation by 0 is the
identity, so those tokens are matched by content alone.

Values come from three places, read by one set of methods:

    read_value(text)          a command-line value: a file (by extension) or a literal
    read_cell(value, resolve) a manifest cell: a media file (by extension, for continuous
                              kinds, resolved under the data root) or an inline value
    read_member(bytes, ext)   a shard member: a media file's bytes, or an inline value
                              (``.txt`` / ``.json``): members are data, never paths
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from anydit.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
# A manifest cell naming a file ends in one of these; anything else is an inline value.
MEDIA_EXTENSIONS = (".npy", *IMAGE_EXTENSIONS, *AUDIO_EXTENSIONS)
MAX_FILE_BYTES = 256 * 2**20  # one sample's file; larger is refused before it is read

Source = Path | bytes  # a file on disk, or a file's bytes (a shard member)


def check(ok: bool, where: str, expected: str, got: Any) -> None:
    """Raise a ``ConfigError`` naming ``where`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}: expected {expected}, got {got!r}")


def file_bytes(source: Source, where: str) -> bytes:
    """The bytes of a file (size checked first) or the bytes themselves."""
    if isinstance(source, bytes):
        data = source
    else:
        if not source.is_file():
            raise FileNotFoundError(f"{where}: file '{source}' does not exist")
        size = source.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(
                f"{where}: file '{source}' is too large ({size} bytes; at most {MAX_FILE_BYTES})"
            )
        data = source.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(
            f"{where}: file is too large ({len(data)} bytes; at most {MAX_FILE_BYTES})"
        )
    return data


def opened(source: Source):
    """A path or a binary stream over the bytes, for readers that take either."""
    return io.BytesIO(source) if isinstance(source, bytes) else source


def source_name(source: Source) -> str:
    return "(member)" if isinstance(source, bytes) else f"'{source}'"


class Modality:
    """One kind of data. Subclasses set the class attributes and implement the hooks.

    ``options`` are the ``ModalityConfig`` fields this kind takes beyond the ones every kind
    takes; a field outside them that differs from its default is a config error naming it.
    """

    kind: ClassVar[str] = ""
    discrete: ClassVar[bool] = False
    rank: ClassVar[int] = 0  # dimensions of one raw sample
    options: ClassVar[frozenset[str]] = frozenset()
    extensions: ClassVar[tuple[str, ...]] = (".npy",)  # files it reads

    def __init__(self, cfg):
        self.cfg = cfg
        self.name = cfg.name
        self.shape: tuple[int, ...] = tuple(cfg.shape)  # one raw sample
        self.time_scale = 1.0  # time positions per token; shared clocks set it

    @property
    def time_shift(self) -> float:
        """The timestep shift training and sampling use: ``cfg.shift``, or the kind's
        ``default_shift`` where it is None."""
        return self.default_shift if self.cfg.shift is None else float(self.cfg.shift)

    @property
    def default_shift(self) -> float:
        """The shift of a modality that sets none: 1 (no shift)."""
        return 1.0

    @property
    def loss_weight(self) -> float:
        """The weight of this modality's mean loss in the total: ``cfg.loss_weight``, or 1
        where it is None (a video: its token frames, ``Video.loss_weight``)."""
        return 1.0 if self.cfg.loss_weight is None else float(self.cfg.loss_weight)

    # --- config ----------------------------------------------------------------------------
    @classmethod
    def check(cls, cfg) -> None:
        """Validate a ``ModalityConfig`` of this kind; errors name the field."""
        shape = tuple(cfg.shape)
        check(
            len(shape) == cls.rank and all(s > 0 for s in shape),
            f"modality '{cfg.name}'.shape",
            f"{cls.rank} positive sizes for kind '{cls.kind}'",
            shape,
        )
        cls.check_kind(cfg, f"modality '{cfg.name}'")

    @classmethod
    def check_kind(cls, cfg, where: str) -> None:
        """The kind's own rules (divisibility by patches, codecs, classes...)."""

    # --- sizes -----------------------------------------------------------------------------
    @functools.cached_property
    def num_tokens(self) -> int:
        return int(self.positions().shape[0])

    @property
    def token_dim(self) -> int:
        """Continuous: features per token. Discrete: vocabulary size (the mask id is this)."""
        raise NotImplementedError

    @property
    def mask_id(self) -> int:
        """Discrete only: the absorbing 'mask' token id (one past the vocabulary)."""
        return self.token_dim

    # --- raw <-> tokens --------------------------------------------------------------------
    def tokenize(self, x: Tensor) -> Tensor:
        """(b, *shape) -> (b, n, p) floats, or (b, n) ids for discrete kinds."""
        raise NotImplementedError

    def detokenize(self, tokens: Tensor) -> Tensor:
        """Inverse of ``tokenize``."""
        raise NotImplementedError

    def positions(self) -> Tensor:
        """(n, 3) float rotary coordinates (time, row, column) of each token."""
        raise NotImplementedError

    def draw_known(self, total: int, generator, device) -> Tensor:
        """Training's partial roles (``p_partial``): (total, n) bool, True = the token is
        given. Each sample draws a share and each token is given with that chance; a kind
        may give larger units (``Slots``: whole slots)."""
        share = torch.rand(total, 1, generator=generator, device=device)  # share given
        return torch.rand(total, self.num_tokens, generator=generator, device=device) < share

    def token_mask(self, mask: Tensor) -> Tensor:
        """Data-space bool mask (b, *shape), True = known, -> (b, n): a token is known only if
        every element it covers is known."""
        if self.discrete:
            return mask.reshape(mask.shape[0], -1).bool()
        tok = self.tokenize(mask.to(torch.float32))  # (b, n, p)
        return tok.amin(dim=-1) > 0.5

    # --- values ----------------------------------------------------------------------------
    def prepare(self, value, n: int | None = None) -> Tensor:
        """Validate and convert a user value (one sample or a batch) to a (b, *shape) tensor.

        One sample is repeated ``n`` times. Errors name the modality, the expected shape or
        dtype and what came.
        """
        x = value if isinstance(value, Tensor) else torch.as_tensor(value)
        return self.batch(self.check_dtype(x), n)

    def collate(self, values: list) -> Tensor:
        """Values read from data (one per sample) -> a batch (b, *shape), checked."""
        return self.prepare(torch.stack([torch.as_tensor(v) for v in values]))

    def placeholder(self, n: int) -> Tensor:
        """A batch of n stand-in values for samples that lack this modality."""
        return torch.zeros(n, *self.shape, dtype=torch.long if self.discrete else torch.float32)

    def check_dtype(self, x: Tensor) -> Tensor:
        if self.discrete:
            if x.dtype.is_floating_point or x.dtype == torch.bool:
                raise ValueError(
                    f"modality '{self.name}': expected integer ids, got dtype {x.dtype}"
                )
            return x.long()
        if not (x.dtype.is_floating_point or x.dtype in (torch.uint8, torch.int32, torch.int64)):
            raise ValueError(
                f"modality '{self.name}': expected a float tensor, got dtype {x.dtype}"
            )
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError(f"modality '{self.name}': value contains NaN or inf")
        return x

    def check_ids(self, x: Tensor, count: int, what: str) -> Tensor:
        """``x`` when every id is in [0, count); else an error naming the bad ones."""
        bad = (x < 0) | (x >= count)
        if bad.any():
            raise ValueError(
                f"modality '{self.name}': expected {what} ids in [0, {count}), "
                f"got {x[bad].unique()[:5].tolist()}"
            )
        return x

    def batch(self, x: Tensor, n: int | None) -> Tensor:
        """(*shape) -> (n, *shape) repeated, or a batch (n, *shape) checked."""
        shape = tuple(self.shape)
        if tuple(x.shape) == shape:
            return x.unsqueeze(0).expand(n or 1, *shape).clone()
        if tuple(x.shape[1:]) == shape and (n is None or x.shape[0] == n):
            return x
        want = f"{shape} (one sample) or (n, *{shape})" + (f" with n = {n}" if n else "")
        raise ValueError(
            f"modality '{self.name}' ({self.kind}): expected shape {want}, got {tuple(x.shape)}"
        )

    def decode(self, x: Tensor) -> list:
        """Raw batch -> Python values for humans (text strings, class names); identity here."""
        return list(x)

    # --- reading ---------------------------------------------------------------------------
    def read_value(self, text: str, n: int | None = None):
        """A command-line value: a file if it has one of this kind's extensions (or, for
        kinds without free text, a path separator or an existing file), else a literal."""
        path = Path(text)
        ext = path.suffix.lower()
        known = ext in (*MEDIA_EXTENSIONS, ".txt")
        looks = known or (not self.free_text and ("/" in text or "\\" in text or path.is_file()))
        if not looks:
            return self.read_inline(text)
        if not path.is_file():
            raise FileNotFoundError(
                f"modality '{self.name}': file '{path}' for modality '{self.name}' does not exist"
            )
        try:
            return self.read_file(path, ext, "exact", n)
        except ValueError as err:
            if path.name in str(err):
                raise
            raise ValueError(f"file '{path}' for modality '{self.name}': {err}") from None

    free_text: ClassVar[bool] = False  # text values may contain '/' without naming a file

    def names_file(self, value) -> bool:
        """Whether a manifest cell of this modality names a file: a string ending in a media
        extension, for continuous kinds. Text and labels are always their own value."""
        return (
            isinstance(value, str)
            and not self.discrete
            and Path(value).suffix.lower() in MEDIA_EXTENSIONS
        )

    def read_cell(self, value, resolve: Callable[[str], Path], fit: str):
        """A manifest cell: a media file (resolved by ``resolve``) or an inline value."""
        if self.names_file(value):
            path = resolve(value)
            return self.read_file(path, path.suffix.lower(), fit, None)
        return self.read_inline(value)

    def read_member(self, data: bytes, ext: str, fit: str):
        """A shard member: a media file's bytes, or an inline value (``.txt``: the string,
        ``.json``: numbers or lists). Never a path."""
        if ext in (".txt", ".json"):
            import json

            text = data.decode("utf-8")
            return self.read_inline(json.loads(text) if ext == ".json" else text)
        return self.read_file(data, ext, fit, None)

    def read_inline(self, value):
        """An inline value (a literal string, a number, a list of numbers) -> a raw value."""
        if isinstance(value, list):
            try:
                x = torch.tensor(value, dtype=torch.float32)
            except (TypeError, ValueError) as err:
                raise ValueError(f"expected numbers, got {value!r} ({err})") from None
            return self.read_array(x, None, one=True)
        raise ValueError(
            f"modality '{self.name}' ({self.kind}): expected a file "
            f"({', '.join(self.extensions)}) or a list of numbers, got {value!r}"
        )

    def read_file(self, source: Source, ext: str, fit: str, n: int | None):
        """A file of one of this kind's extensions -> a raw value (n samples for ``.npy`` on
        the command line). Kinds with more file types extend this."""
        self.check_extension(source, ext)
        return self.read_npy(source, n)

    def check_extension(self, source: Source, ext: str) -> None:
        if ext not in self.extensions:
            codec = f", codec '{self.cfg.codec}'" if getattr(self.cfg, "codec", "") else ""
            raise ValueError(
                f"file {source_name(source)}: a '{ext or '(no extension)'}' file does not fit "
                f"modality '{self.name}' of kind '{self.kind}'{codec}; expected one of "
                f"{', '.join(self.extensions)}"
            )

    def read_npy(self, source: Source, n: int | None) -> Tensor:
        """A ``.npy`` array (never unpickled), checked against the modality."""
        where = f"file {source_name(source)} for modality '{self.name}'"
        data = file_bytes(source, where)
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as err:  # numpy raises many types for damaged headers
            raise ValueError(f"{where}: not a readable .npy array ({err!r:.200})") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise ValueError(f"{where}: expected a numeric array, got {type(arr).__name__}")
        try:
            return self.read_array(torch.from_numpy(np.ascontiguousarray(arr)), n, one=n is None)
        except ValueError as err:
            raise ValueError(f"file {source_name(source)}: {err}") from err

    def read_array(self, x: Tensor, n: int | None = None, one: bool = False) -> Tensor:
        """An array from a file or an arrays dataset, checked: one sample (``one``) or a batch."""
        self.prepare(x, n)
        if one and tuple(x.shape) != tuple(self.shape):
            raise ValueError(
                f"modality '{self.name}': expected shape {tuple(self.shape)} for one sample, "
                f"got {tuple(x.shape)}"
            )
        return x.float() if not self.discrete else x.long()

    # --- writing ---------------------------------------------------------------------------
    def write(self, out: Path, stem: str, x: Tensor) -> list[str]:
        """Files people can open for a batch of samples (none for this kind)."""
        return []

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}(name={self.name!r}, shape={self.shape}, tokens={self.num_tokens})"
