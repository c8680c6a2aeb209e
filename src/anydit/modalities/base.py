"""The contract every modality kind fulfils: raw tensor <-> tokens + positions.

Ein notation: b batch, n tokens of this modality, p features per token.

Positions are three rotary axes (time, row, column). A modality without some axis puts 0 there,
and a modality without positions (vector, label) puts 0 everywhere: rotation by 0 is the
identity, so those tokens are matched by content alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydit.config import ModalityConfig

POSITION_AXES = 3  # (time, row, column)


class Modality:
    """Base class: one kind of data. Subclasses set ``discrete`` and implement the hooks."""

    discrete: bool = False

    def __init__(self, cfg: ModalityConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.time_scale = 1.0  # set by the model when several modalities share a clock

    # --- sizes -----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one raw sample."""
        return self.cfg.shape

    @property
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
        return self._batch(self._check_dtype(x), n)

    def _check_dtype(self, x: Tensor) -> Tensor:
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

    def _batch(self, x: Tensor, n: int | None) -> Tensor:
        shape = tuple(self.shape)
        if tuple(x.shape) == shape:
            return x.unsqueeze(0).expand(n or 1, *shape).clone()
        if tuple(x.shape[1:]) == shape and (n is None or x.shape[0] == n):
            return x
        want = f"{shape} (one sample) or (n, *{shape})" + (f" with n = {n}" if n else "")
        raise ValueError(
            f"modality '{self.name}' ({self.cfg.kind}): expected shape {want}, got {tuple(x.shape)}"
        )

    def decode(self, x: Tensor) -> list:
        """Raw batch -> Python values for humans (text strings, class names); identity here."""
        return list(x)

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}(name={self.name!r}, shape={self.shape}, tokens={self.num_tokens})"
