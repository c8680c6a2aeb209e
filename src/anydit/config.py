"""Typed configuration: modalities, network, flow (training targets), training, data, sampling.

Every dataclass validates itself in ``__post_init__`` and raises a ``ConfigError`` that names
the offending field, the value it got and what was expected. A modality's kind checks the
fields particular to it (``anydit.modalities``); a field that does not apply to the kind is an
error. ``from_dict`` maps nested plain dicts (parsed YAML) onto the dataclasses, rejecting
unknown keys and values of the wrong type by name; nothing is coerced silently (8.7 is not an
integer, ``.nan`` is not a number anyone meant).

Time convention, everywhere: t in [0, 1], t = 0 is pure noise (or all-mask), t = 1 is data.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import os
import types
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

from anydit.errors import ConfigError
from anydit.modalities import KIND_CLASSES, KINDS

TIME_SAMPLERS = ("logit_normal", "uniform")
SOLVERS = ("euler", "heun", "midpoint", "jump")
RESERVED_NAMES = ("key", "id", "shared")  # manifest columns that name a sample; freeze's "shared"
# ModalityConfig fields every kind takes; the others belong to the kinds that list them.
COMMON_FIELDS = frozenset(
    {
        "name",
        "kind",
        "shape",
        "width",
        "shift",
        "time_sampler",
        "loss_weight",
        "p_given",
        "p_drop",
        "p_partial",
        "token_drop",
        "generate",
        "rope",
    }
)

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "FlowConfig",
    "ModalityConfig",
    "ModelConfig",
    "SampleConfig",
    "TrainConfig",
    "check_architecture",
    "from_dict",
]


def _check(ok: bool, where: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: expected {expected}, got {got!r}")


def _finite(obj: Any, prefix: str) -> None:
    """Every float field of a dataclass is a finite number."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float):
            _check(math.isfinite(v), f"{prefix}.{f.name}", "a finite number", v)


@dataclass
class ModalityConfig:
    """One modality: its kind, raw shape, tokenisation and training knobs.

    ``shape`` is the shape of one raw sample: image (C, H, W); video (T, C, H, W); slots
    (S, C, H, W); sequence (L, C); vector (D,); label (); layout (N, 5), N boxes of x0, y0,
    x1, y1, class; text (L,) where L is the maximum token length.
    Kind-only fields are marked with their kinds.
    """

    name: str
    kind: str
    shape: tuple[int, ...] = ()
    patch: int = 1  # image/video/slots: square spatial patch; sequence: frames per token
    patch_t: int = 1  # video: frames per token
    num_classes: int = 0  # label/layout: K classes (names may be given in `classes`); label: 0
    # = from data
    classes: tuple[str, ...] = ()  # label/layout: optional class names, index = class id
    tokenizer: str = "bytes"  # text: "bytes", a built-in name ("digits-words") or a path to a
    # `tokenizers` JSON file
    codec: str = ""  # "" = raw arrays; sequence "logmel": normalised log-mel frames (L, mels);
    # image "vae": latents (C, h, w) of a diffusers autoencoder in the folder `codec_path`
    codec_args: dict[str, float] = field(default_factory=dict)  # sequence: log-mel parameters
    codec_path: str = ""  # image codec "vae": a local diffusers AutoencoderKL folder
    clock: str = ""  # video/sequence: modalities naming the same clock share a rotary time axis
    rate: float = 1.0  # video/sequence: tokens per unit of the shared clock
    width: int = 0  # stream width; 0 = the model's width
    shift: float | None = None  # timestep shift s: t = u / (u + s (1 - u)); s > 1: more time
    # near noise; None = the kind's default (1; video: sqrt of its token frames, T / patch_t)
    time_sampler: str = "logit_normal"  # SD3's logit-normal puts training mass mid-path
    loss_weight: float | None = None  # None = the kind's default (1; video: T / patch_t)
    p_given: float = 0.15  # chance, per sample, that this modality is a condition (t = 1)
    p_drop: float = 0.1  # chance it is marginalised (t = 0); this is what CFG's branch uses
    p_partial: float = 0.0  # chance of per-token roles (random tokens given); needs per_token_time
    token_drop: float = 0.0  # training only: share of this stream's tokens left out of the
    # backbone each step (micro-budget diffusion; loss on the kept ones); continuous streams
    standardize: bool = False  # vector: train on (x - mean) / std of the training data
    mean: tuple[float, ...] = ()  # vector: stored statistics (filled from the data at train start)
    std: tuple[float, ...] = ()
    generate: bool = True  # False: a condition only (always given, never generated): no output
    # head, and with no single-stream blocks its last block only lends keys and values (SD3)
    pooled: str = ""  # vector: "" = a token stream; "mlp" = added to every stream's adaLN input
    # through an MLP, no tokens (SD3/Flux pooled text); "time" = a scalar embedded like a time
    # (Flux's guidance). Pooled modalities are conditions only.
    rope: bool = True  # False: the tokens carry no rotary position (SD3 latents, Flux text)
    pos_table: int = 0  # image: side S of an S x S table of absolute position embeddings added
    # to its tokens, centre-cropped to the patch grid (SD3's pos_embed_max_size); 0 = none

    def __post_init__(self) -> None:
        self.shape = tuple(self.shape)
        self.classes = tuple(str(c) for c in self.classes)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        w = f"modality '{self.name}'"
        _check(
            isinstance(self.name, str) and self.name.isidentifier(),
            f"{w}.name",
            "an identifier",
            self.name,
        )
        _check(
            self.name not in RESERVED_NAMES,
            f"{w}.name",
            f"a name other than {RESERVED_NAMES}",
            self.name,
        )
        _check(self.kind in KINDS, f"{w}.kind", f"one of {KINDS}", self.kind)
        _check(
            all(isinstance(s, int) and not isinstance(s, bool) for s in self.shape),
            f"{w}.shape",
            "integers",
            self.shape,
        )
        _check(isinstance(self.codec_args, dict), f"{w}.codec_args", "a mapping", self.codec_args)
        self.codec_args = dict(self.codec_args)
        _finite(self, w)
        kind = KIND_CLASSES[self.kind]
        defaults = {f.name: _default(f) for f in dataclasses.fields(self)}
        for name in sorted(set(defaults) - COMMON_FIELDS - kind.options):
            value = getattr(self, name)
            if value != defaults[name]:
                users = sorted(k for k, c in KIND_CLASSES.items() if name in c.options)
                raise ConfigError(
                    f"{w}.{name}: does not apply to kind '{self.kind}' (only to {users}); "
                    f"remove it, got {value!r}"
                )
        if self.kind in ("label", "layout") and self.classes and not self.num_classes:
            self.num_classes = len(self.classes)
        if self.pooled:
            self.generate = False
        kind.check(self)
        _check(self.width >= 0, f"{w}.width", "an integer >= 0", self.width)
        _check(self.rate > 0, f"{w}.rate", "a number > 0", self.rate)
        _check(
            self.shift is None or self.shift > 0, f"{w}.shift", "a number > 0 (or none)", self.shift
        )
        _check(
            self.time_sampler in TIME_SAMPLERS,
            f"{w}.time_sampler",
            str(TIME_SAMPLERS),
            self.time_sampler,
        )
        _check(
            self.loss_weight is None or self.loss_weight >= 0,
            f"{w}.loss_weight",
            "a number >= 0 (or none)",
            self.loss_weight,
        )
        for p in ("p_given", "p_drop", "p_partial"):
            v = getattr(self, p)
            _check(0.0 <= v <= 1.0, f"{w}.{p}", "a probability in [0, 1]", v)
        _check(
            0.0 <= self.token_drop < 1.0, f"{w}.token_drop", "a share in [0, 1)", self.token_drop
        )
        _check(
            self.token_drop == 0 or (self.kind not in ("label", "text") and not self.pooled),
            f"{w}.token_drop",
            "0 for a discrete or pooled modality (tokens are left out of continuous token "
            f"streams only; this one is kind '{self.kind}'{', pooled' if self.pooled else ''})",
            self.token_drop,
        )
        _check(
            self.p_given + self.p_drop <= 1.0,
            f"{w}.p_given + p_drop",
            "a sum <= 1",
            self.p_given + self.p_drop,
        )

    @property
    def discrete(self) -> bool:
        return KIND_CLASSES[self.kind].discrete


def _finite_weights(weights: dict, where: str) -> dict[str, float]:
    """{name: finite float} from a dict of real numbers; an error naming ``where[name]``."""
    out = {}
    for k, v in weights.items():
        w = _real(v)
        _check(w is not None and math.isfinite(w), f"{where}[{k!r}]", "a finite number", v)
        out[str(k)] = w
    return out


def _real(v: Any) -> float | None:
    """A real number (Python, NumPy or a one-element tensor) as a float; None otherwise."""
    if isinstance(v, bool):
        return None
    if isinstance(v, numbers.Real):
        return float(v)
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        item = v.item()
        return (
            float(item) if isinstance(item, numbers.Real) and not isinstance(item, bool) else None
        )
    return None


def _index(v: Any) -> int | None:
    """An integer (Python, NumPy or a 0-d integer tensor) as an int; None otherwise."""
    if isinstance(v, bool):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass
class ModelConfig:
    """The MM-DiT: widths, depths, attention and the optional parts."""

    width: int = 256
    depth: int = 4  # dual-stream blocks (one set of weights per modality)
    single_depth: int = 0  # shared single-stream blocks after them (Flux); needs equal widths
    heads: int = 4
    head_dim: int = 64  # joint attention width = heads * head_dim, the same for every stream
    mlp_ratio: float = 4.0
    qk_norm: bool = True  # RMSNorm on q and k (SD3): keeps attention logits bounded in bf16
    activation: str = "gelu"  # MLP: gelu (exact; 4x faster on CPU) | gelu_tanh (SD3, Flux)
    rope_theta: float = 10000.0
    time_dim: int = 256  # sinusoidal features per time before the MLP (DiT uses 256)
    pooled_cond: bool = True  # add every modality's mean token embedding to the adaLN input
    # (SD3's pooled-text path, DiT's class path): conditions reach every block directly
    per_token_time: bool = False  # each token may carry its own time (inpainting, continuation)
    checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more time
    conditioning: str = "summary"  # each stream's adaLN input: its own time embedding plus
    # "summary": a projected MLP of all modalities' times (+ pooled parts);
    # "sum": the sum of every modality's own time embedding (+ pooled parts) -- SD3 and Flux
    time_input: str = "t"  # what time embedders see: "t" (0 = noise) or "sigma" = 1 - t
    # (diffusers' SD3 and Flux: 0 = data); the model's own time convention is unchanged
    rope_axes: tuple[int, ...] = ()  # rotation pairs per axis (time, row, column); () = even
    single_block: str = "sequential"  # single-stream blocks: "sequential" (attention then MLP)
    # or "parallel" (attention and MLP side by side from one input, Flux)
    dual_attention: tuple[int, ...] = ()  # blocks whose generated streams also attend to
    # themselves alone, in a second attention (SD3.5's MMDiT-X)
    lora_rank: int = 0  # > 0: low-rank adapters on the linear layers of `lora_streams`
    lora_alpha: float = 0.0  # adapter scale alpha / rank; 0 = rank (scale 1)
    lora_streams: tuple[str, ...] = ()  # modality names and/or "shared"
    flow_map: bool = False  # a second time input per stream: the target time s of a jump, so
    # the model predicts the average velocity from t to s (few-step sampling; anydit distill)
    mup_base_width: int = 0  # > 0: μP against this width (learning rates found there transfer)
    experts: int = 0  # > 1: each stream MLP is this many experts behind a router (0: dense)
    expert_top_k: int = 1  # experts per token (top_k routing) / the capacity's k
    expert_routing: str = "top_k"  # top_k | expert_choice (each expert picks its tokens)
    expert_capacity: float = 1.25  # tokens per expert: capacity x tokens x k / experts (0: all)
    expert_shared: bool = False  # one more expert every token passes through
    expert_hidden: float = 1.0  # each expert's hidden width, a share of the dense MLP's
    expert_scale: float = 1.0  # routed experts' outputs times this (DeepSeek-V3's scaling)
    expert_streams: tuple[str, ...] = ()  # streams with experts (names, "shared"); () = all
    expert_balance: float = 0.1  # weight of the router's load-balancing loss (docs/training.md)
    expert_z: float = 0.001  # weight of the router z-loss
    dynamic_width: int = 0  # > 1: each stream MLP's hidden channels in this many groups,
    # switched on and off by a router from the stream's conditioning (DyDiT's timestep-dynamic
    # width; 0: dense); model.dynamic
    dynamic_keep: float = 0.5  # training's target share of MLP multiply-adds kept
    dynamic_weight: float = 1.0  # weight of the width loss (kept - dynamic_keep)^2
    mixer_depth: int = 0  # light blocks per stream, over its own tokens, before the backbone
    # (and before token_drop leaves tokens out: they mix what is dropped into what is kept)
    isolate_given: bool = False  # given tokens (time 1) attend only to given tokens, and their
    # adaLN input is their own time (+ pooled conditions): their keys and values are the same
    # at every sampling step, so a sampler computes them once (sample.kv_reuse)

    def __post_init__(self) -> None:
        self.rope_axes = tuple(self.rope_axes)
        self.dual_attention = tuple(self.dual_attention)
        self.lora_streams = tuple(self.lora_streams)
        _finite(self, "model")
        for name in ("width", "heads", "head_dim", "time_dim"):
            _check(
                getattr(self, name) >= 1, f"model.{name}", "an integer >= 1", getattr(self, name)
            )
        _check(self.depth >= 0, "model.depth", "an integer >= 0", self.depth)
        _check(self.mixer_depth >= 0, "model.mixer_depth", "an integer >= 0", self.mixer_depth)
        _check(self.single_depth >= 0, "model.single_depth", "an integer >= 0", self.single_depth)
        _check(self.depth + self.single_depth >= 1, "model.depth + single_depth", ">= 1", 0)
        _check(
            self.head_dim % 2 == 0,
            "model.head_dim",
            "an even integer (rotary pairs)",
            self.head_dim,
        )
        _check(self.time_dim % 2 == 0, "model.time_dim", "an even integer", self.time_dim)
        if self.mup_base_width:
            _check(
                self.mup_base_width >= self.head_dim and self.mup_base_width % self.head_dim == 0,
                "model.mup_base_width",
                f"0 (off) or a multiple of head_dim = {self.head_dim} (heads grow with width)",
                self.mup_base_width,
            )
            _check(
                self.heads * self.head_dim == self.width,
                "model.mup_base_width",
                f"heads x head_dim = width (μP grows heads with width; here {self.heads} x "
                f"{self.head_dim} != {self.width})",
                self.mup_base_width,
            )
        _check(
            self.mlp_ratio > 0 and int(self.width * self.mlp_ratio) >= 1,
            "model.mlp_ratio",
            f"a ratio giving an MLP of at least 1 unit at width {self.width}",
            self.mlp_ratio,
        )
        _check(
            self.activation in ("gelu", "gelu_tanh"),
            "model.activation",
            "gelu|gelu_tanh",
            self.activation,
        )
        _check(self.rope_theta > 1, "model.rope_theta", "a number > 1", self.rope_theta)
        _check(
            self.conditioning in ("summary", "sum"),
            "model.conditioning",
            "summary|sum",
            self.conditioning,
        )
        _check(self.time_input in ("t", "sigma"), "model.time_input", "t|sigma", self.time_input)
        self.expert_streams = tuple(self.expert_streams)
        if self.experts:
            _check(
                2 <= self.experts <= 1024,
                "model.experts",
                "0 (dense) or an integer in 2..1024",
                self.experts,
            )
            _check(
                1 <= self.expert_top_k <= self.experts,
                "model.expert_top_k",
                f"an integer in 1..{self.experts} (model.experts)",
                self.expert_top_k,
            )
            _check(
                self.expert_routing in ("top_k", "expert_choice"),
                "model.expert_routing",
                "top_k|expert_choice",
                self.expert_routing,
            )
            least = 0 if self.expert_routing == "top_k" else 1e-9
            _check(
                self.expert_capacity >= least and math.isfinite(self.expert_capacity),
                "model.expert_capacity",
                "a number > 0 (expert_choice) or >= 0 (top_k; 0 = no limit)",
                self.expert_capacity,
            )
            hidden = int(self.width * self.mlp_ratio)
            _check(
                0 < self.expert_hidden <= 1 and int(hidden * self.expert_hidden) >= 1,
                "model.expert_hidden",
                f"a share in (0, 1] of the MLP's hidden width {hidden} leaving >= 1 channel",
                self.expert_hidden,
            )
            _check(
                self.expert_scale > 0 and math.isfinite(self.expert_scale),
                "model.expert_scale",
                "a number > 0",
                self.expert_scale,
            )
            for name in ("expert_balance", "expert_z"):
                _check(
                    getattr(self, name) >= 0, f"model.{name}", "a number >= 0", getattr(self, name)
                )
            _check(
                not self.mup_base_width,
                "model.experts",
                "0 with model.mup_base_width (μP does not place expert weights yet)",
                self.experts,
            )
            _check(
                not (self.single_depth and self.single_block == "parallel")
                or (self.expert_streams and "shared" not in self.expert_streams),
                "model.experts",
                "streams without Flux's parallel single-stream layers (their MLP shares the "
                "attention's matmul): set model.expert_streams to dual-stream names",
                self.experts,
            )
        if self.dynamic_width:
            hidden = int(self.width * self.mlp_ratio)
            _check(
                self.dynamic_width >= 2 and hidden % self.dynamic_width == 0,
                "model.dynamic_width",
                f"0 (dense) or a number of groups >= 2 dividing the MLP's hidden width {hidden}",
                self.dynamic_width,
            )
            _check(0 < self.dynamic_keep <= 1, "model.dynamic_keep", "in (0, 1]", self.dynamic_keep)
            _check(self.dynamic_weight >= 0, "model.dynamic_weight", ">= 0", self.dynamic_weight)
            _check(
                not self.experts,
                "model.dynamic_width",
                "0 with model.experts (the MLP is experts; a width router has no channels to "
                "switch)",
                self.dynamic_width,
            )
            _check(
                not self.mup_base_width,
                "model.dynamic_width",
                "0 with model.mup_base_width (μP does not place width routers yet)",
                self.dynamic_width,
            )
        _check(
            not self.rope_axes
            or (len(self.rope_axes) == 3 and sum(self.rope_axes) == self.head_dim // 2),
            "model.rope_axes",
            f"three pair counts summing to head_dim / 2 = {self.head_dim // 2}",
            self.rope_axes,
        )
        _check(
            self.single_block in ("sequential", "parallel"),
            "model.single_block",
            "sequential|parallel",
            self.single_block,
        )
        _check(
            all(0 <= i < self.depth for i in self.dual_attention),
            "model.dual_attention",
            f"block indices in [0, {self.depth})",
            self.dual_attention,
        )
        _check(self.lora_rank >= 0, "model.lora_rank", "an integer >= 0", self.lora_rank)
        _check(self.lora_alpha >= 0, "model.lora_alpha", "a number >= 0", self.lora_alpha)
        _check(
            bool(self.lora_streams) == (self.lora_rank > 0),
            "model.lora_streams",
            "the streams to adapt when model.lora_rank > 0 (and none otherwise)",
            self.lora_streams,
        )


def check_architecture(modalities: list[ModalityConfig], model: ModelConfig) -> None:
    """Rules that tie the modalities to the network; ``Config`` and ``MMDiT`` both apply them.
    Also refuses a network whose weights could not fit in this machine's memory."""
    names = [m.name for m in modalities]
    _check(len(names) >= 1, "modalities", "at least one modality", names)
    dup = sorted({n for n in names if names.count(n) > 1})
    _check(not dup, "modalities", "unique names", dup)
    _check(
        any(m.generate for m in modalities),
        "modalities",
        "at least one that can be generated (generate: true, not pooled)",
        names,
    )
    widths = {m.name: m.width or model.width for m in modalities if not m.pooled}
    if model.single_depth:
        _check(
            len(set(widths.values())) == 1,
            "model.single_depth",
            "equal stream widths (single-stream blocks share weights)",
            widths,
        )
    if model.conditioning == "sum":
        _check(
            set(widths.values()) == {model.width},
            "model.conditioning 'sum'",
            f"every stream at model.width = {model.width} (they add one vector)",
            widths,
        )
    if model.mup_base_width:
        own = {m.name: m.width for m in modalities if m.width and not m.pooled}
        _check(
            not own,
            "model.mup_base_width",
            "every stream at model.width (μP scales one width; these set their own)",
            own,
        )
    unknown = sorted(set(model.lora_streams) - set(names) - {"shared"})
    _check(not unknown, "model.lora_streams", f"names among {sorted(names)} or 'shared'", unknown)
    for m in modalities:
        _check(
            m.token_drop == 0 or not model.isolate_given,
            f"modality '{m.name}'.token_drop",
            "0 with model.isolate_given (its mask covers every token)",
            m.token_drop,
        )
        _check(
            m.p_partial == 0 or model.per_token_time,
            f"modality '{m.name}'.p_partial",
            "0 unless model.per_token_time is true",
            m.p_partial,
        )
    inner = model.heads * model.head_dim
    per_stream = [
        w * 4 * inner + 2 * w * int(w * model.mlp_ratio) + 6 * w * w for w in widths.values()
    ]
    params = model.depth * sum(per_stream) + model.single_depth * max(per_stream, default=0)
    params += sum(model.time_dim * w + w * w for w in widths.values())  # time embedders
    need, have = 4 * params, _memory_bytes()
    if have and need > have:
        raise ConfigError(
            f"model: these sizes (width {model.width}, heads {model.heads} x {model.head_dim}, "
            f"depth {model.depth} + {model.single_depth}) need ~{need / 2**30:.0f} GiB for the "
            f"weights alone, more than this machine's {have / 2**30:.0f} GiB"
        )


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0


@dataclass
class FlowConfig:
    """How training targets are drawn (shared by all modalities)."""

    logit_mean: float = 0.0  # logit-normal time sampler: t = sigmoid(N(mean, std))
    logit_std: float = 1.0
    eps: float = 1e-5  # continuous times are kept in [eps, 1 - eps] where they are drawn

    def __post_init__(self) -> None:
        _finite(self, "flow")
        _check(self.logit_std > 0, "flow.logit_std", "a number > 0", self.logit_std)
        _check(0 <= self.eps < 0.5, "flow.eps", "a number in [0, 0.5)", self.eps)


@dataclass
class SampleConfig:
    """Sampler settings: what ``anydit.sample``, ``anydit sample``, evaluation, the demo and the
    training sample grid read. Validated once, here."""

    steps: int = 32
    solver: str = "euler"  # euler | heun | midpoint | jump (a flow map's steps: anydit distill)
    guidance: float | dict[str, float] = 1.0  # 1 = none; {name: w}: one weight per given one
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # guide only while t is in [low, high]
    shift: float | None = None  # time shift of the grids; None = each modality's trained shift
    temperature: float = 1.0  # discrete unmasking: softmax temperature
    unmasking: str = "random"  # random (exact ancestral) | confidence (MaskGIT order)
    precision: str = "fp32"  # fp32 | bf16 autocast
    cache: str = ""  # "" | first_block | taylor | taylor_attention | region: reuse the
    # blocks' work across steps
    cache_threshold: float = 0.05  # first_block: skip while block 1 moved less than this
    cache_interval: int = 3  # taylor(_attention): run every block every N-th evaluation,
    # forecast between (region: compute every token every N-th)
    cache_order: int = 1  # taylor(_attention): order of the forecast (1 or 2)
    cache_ratio: float = 0.5  # region: share of each generated stream's tokens computed per
    # evaluation (the others carried; dense every cache_interval-th evaluation)
    kv_reuse: bool = False  # tokens whose time does not move (given; a stream holding between
    # its steps) keep their keys and values: exact for given tokens of a model trained with
    # isolate_given, an approximation otherwise
    route_reuse: float = 0.0  # > 0: expert and width routers keep their decisions while no
    # generated stream's time has moved this far since they last routed (MoDE's routing
    # cache; model.routes)
    discrete_first: bool = False  # reveal generated labels/text fully before the rest moves
    first: tuple[str, ...] = ()  # these generated modalities are sampled to the end (their own
    # steps) before the rest moves: ancestral sampling through them, e.g. the digit's label
    # before the image of a speech -> image task
    isolation: float = 1.0  # != 1: one more branch where each generated stream reads only
    # itself and the conditions (LTX-2's modality isolation); pushed away from it by w - 1
    stream_guidance: dict[str, float] = field(default_factory=dict)  # {stream: w}: that
    # output's guidance weight in place of the float ``guidance`` where a task generates it
    # (LTX-2's per-modality scales: audio and video of one clip guided apart)

    def __post_init__(self) -> None:
        steps = _index(self.steps)
        _check(steps is not None and steps >= 1, "sample.steps", "an integer >= 1", self.steps)
        self.steps = steps
        _check(self.solver in SOLVERS, "sample.solver", "|".join(SOLVERS), self.solver)
        if isinstance(self.guidance, dict):
            self.guidance = _finite_weights(self.guidance, "sample.guidance")
        else:
            w = _real(self.guidance)
            _check(
                w is not None and math.isfinite(w),
                "sample.guidance",
                "a finite number or {name: number}",
                self.guidance,
            )
            self.guidance = w
        try:
            iv = tuple(float(v) for v in self.guidance_interval)
        except (TypeError, ValueError):
            iv = ()
        _check(
            len(iv) == 2 and 0.0 <= iv[0] <= iv[1] <= 1.0,
            "sample.guidance_interval",
            "two times low <= high in [0, 1]",
            self.guidance_interval,
        )
        self.guidance_interval = iv
        _check(
            self.shift is None or (math.isfinite(self.shift) and self.shift > 0),
            "sample.shift",
            "a number > 0 (or none: the trained shift)",
            self.shift,
        )
        _check(math.isfinite(self.isolation), "sample.isolation", "a finite number", self.isolation)
        _check(
            isinstance(self.stream_guidance, dict),
            "sample.stream_guidance",
            "{generated stream: weight}",
            self.stream_guidance,
        )
        self.stream_guidance = _finite_weights(self.stream_guidance, "sample.stream_guidance")
        _check(
            not (self.stream_guidance and isinstance(self.guidance, dict)),
            "sample.stream_guidance",
            "{} when guidance is a dict: weight each condition (guidance) or each output "
            "(stream_guidance), not both",
            self.stream_guidance,
        )
        _check(
            math.isfinite(self.temperature) and self.temperature > 0,
            "sample.temperature",
            "a number > 0",
            self.temperature,
        )
        _check(
            self.unmasking in ("random", "confidence"),
            "sample.unmasking",
            "random|confidence",
            self.unmasking,
        )
        _check(self.precision in ("fp32", "bf16"), "sample.precision", "fp32|bf16", self.precision)
        _check(
            isinstance(self.discrete_first, bool),
            "sample.discrete_first",
            "true or false",
            self.discrete_first,
        )
        if isinstance(self.first, list):
            self.first = tuple(self.first)
        _check(
            isinstance(self.first, tuple) and all(isinstance(n, str) for n in self.first),
            "sample.first",
            "a list of modality names",
            self.first,
        )
        caches = ("", "first_block", "taylor", "taylor_attention", "region")
        _check(
            self.cache in caches,
            "sample.cache",
            "'', 'first_block', 'taylor', 'taylor_attention' or 'region'",
            self.cache,
        )
        _check(
            isinstance(self.cache_ratio, int | float) and 0 < self.cache_ratio <= 1,
            "sample.cache_ratio",
            "a share in (0, 1] of the tokens computed per evaluation",
            self.cache_ratio,
        )
        _check(isinstance(self.kv_reuse, bool), "sample.kv_reuse", "true or false", self.kv_reuse)
        _check(
            isinstance(self.route_reuse, int | float) and 0 <= self.route_reuse <= 1,
            "sample.route_reuse",
            "a time distance in [0, 1] (0: route at every evaluation)",
            self.route_reuse,
        )
        _check(
            not (self.kv_reuse and self.cache in ("first_block", "taylor", "taylor_attention")),
            "sample.kv_reuse",
            f"'region' or no cache beside it (cache is '{self.cache}')",
            self.kv_reuse,
        )
        _check(
            isinstance(self.cache_threshold, int | float) and 0 <= self.cache_threshold <= 1,
            "sample.cache_threshold",
            "a number in [0, 1] (relative change of the first block's residual)",
            self.cache_threshold,
        )
        interval = _index(self.cache_interval)
        _check(
            interval is not None and interval >= 1,
            "sample.cache_interval",
            "an integer >= 1",
            self.cache_interval,
        )
        _check(self.cache_order in (1, 2), "sample.cache_order", "1 or 2", self.cache_order)


@dataclass
class TrainConfig:
    """One training run (the loop itself lives in ``anydit.train``)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    schedule: str = "cosine"  # cosine | constant
    grad_clip: float = 1.0  # 0 = no clipping
    ema: float = 0.999  # 0 disables EMA
    seed: int = 0
    precision: str = "bf16"  # bf16 autocast (CPU and GPU) or fp32; never fp16 on CPU
    grad_accum: int = 1  # micro-batches per step: same result, 1/k of the activation memory
    parallel: str = "ddp"  # under torchrun: "ddp" (replicas) or "fsdp" (FSDP2, sharded)
    compile: bool = False  # torch.compile each block: faster steps after a minute of compiling
    device: str = "auto"  # auto (CUDA if present), cpu or cuda
    tensorboard: bool = True  # event files beside metrics.jsonl
    sample_every: int = 0  # write a sample grid (PNG + TensorBoard) every N steps; 0 = never
    log_every: int = 50
    checkpoint_every: int = 500  # a crash loses at most this many steps
    keep_checkpoints: int = 2  # the newest K resumable checkpoints are kept
    max_bad_steps: int = 10  # consecutive NaN/inf losses before the run stops
    freeze: tuple[str, ...] = ()  # streams (modality names) or "shared" whose weights stay fixed
    init: str = ""  # an anydit model file (e.g. from `anydit import`) whose weights start the
    # run; streams and adapters it lacks start fresh

    def __post_init__(self) -> None:
        self.freeze = tuple(self.freeze)
        _finite(self, "train")
        _check(self.steps >= 1, "train.steps", "an integer >= 1", self.steps)
        _check(self.batch_size >= 1, "train.batch_size", "an integer >= 1", self.batch_size)
        _check(self.lr > 0, "train.lr", "a number > 0", self.lr)
        _check(self.weight_decay >= 0, "train.weight_decay", "a number >= 0", self.weight_decay)
        _check(self.warmup >= 0, "train.warmup", "an integer >= 0", self.warmup)
        _check(
            self.schedule in ("cosine", "constant"),
            "train.schedule",
            "cosine|constant",
            self.schedule,
        )
        _check(self.grad_clip >= 0, "train.grad_clip", "a number >= 0 (0 = none)", self.grad_clip)
        _check(0 <= self.ema < 1, "train.ema", "a number in [0, 1)", self.ema)
        _check(self.precision in ("bf16", "fp32"), "train.precision", "bf16|fp32", self.precision)
        _check(self.log_every >= 1, "train.log_every", "an integer >= 1", self.log_every)
        _check(self.grad_accum >= 1, "train.grad_accum", "an integer >= 1", self.grad_accum)
        _check(
            self.batch_size % self.grad_accum == 0,
            "train.batch_size",
            f"a multiple of grad_accum={self.grad_accum}",
            self.batch_size,
        )
        _check(self.parallel in ("ddp", "fsdp"), "train.parallel", "ddp|fsdp", self.parallel)
        _check(self.device in ("auto", "cpu", "cuda"), "train.device", "auto|cpu|cuda", self.device)
        _check(self.sample_every >= 0, "train.sample_every", "an integer >= 0", self.sample_every)
        _check(
            self.checkpoint_every >= 1,
            "train.checkpoint_every",
            "an integer >= 1",
            self.checkpoint_every,
        )
        _check(
            self.keep_checkpoints >= 1,
            "train.keep_checkpoints",
            "an integer >= 1",
            self.keep_checkpoints,
        )
        _check(
            self.max_bad_steps >= 1, "train.max_bad_steps", "an integer >= 1", self.max_bad_steps
        )


DATA_SOURCES = (
    "digits",
    "digit-strings",
    "digit-edits",
    "digit-layouts",
    "arrays",
    "manifest",
    "folder",
    "shards",
)
BUILT_IN = (
    "digits",
    "digit-strings",
    "digit-edits",
    "digit-layouts",
)  # data the package makes; no path


@dataclass
class DataConfig:
    """Where training data comes from (see ``anydit.data.own`` for the layouts)."""

    source: str = "digits"  # built in: digits | digit-strings | digit-edits |
    # digit-layouts; own: arrays | manifest | folder | shards
    path: str = ""  # arrays: .npz or NAME.npy folder; manifest: .jsonl/.csv/.parquet; folder
    # of CLASS/ folders; shards: a folder written by `anydit data pack`
    seed: int = 0  # pairing/caption draws of the built-in dataset
    augment: bool = False  # digits: training speech changed as other voices might say it
    image_fit: str = "crop"  # image files of another size: crop | stretch | exact (refuse)
    on_error: str = "error"  # a bad sample: error (stop, naming it) | skip (count and go on)
    workers: int = 0  # DataLoader processes reading and decoding; 0 = in the training process
    root: str = ""  # files a manifest names must lie under this folder (default: its own)
    allow_outside: bool = False  # let a manifest name files anywhere (absolute paths, ../):
    # only for manifests you wrote yourself -- a shared one could read any local file
    edit_weights: tuple[float, ...] = ()  # digit-edits: how often each edit is drawn in
    # training (rotate, invert, thicken, next; relative weights; default all equal)
    strings_lengths: tuple[int, ...] = ()  # digit-strings: digits a clip says, drawn among
    # these (default 3 or 4); the clip's frames come from the video and audio shapes
    strings_clips: int = 0  # digit-strings: training clips an epoch, each redrawn every epoch
    # (0: one per train image, 1,337); more makes DataLoader workers restart less often

    def __post_init__(self) -> None:
        _check(self.source in DATA_SOURCES, "data.source", f"one of {DATA_SOURCES}", self.source)
        _check(
            self.source in BUILT_IN or bool(self.path),
            "data.path",
            f"a file or folder for source '{self.source}'",
            self.path,
        )
        _check(
            self.image_fit in ("crop", "stretch", "exact"),
            "data.image_fit",
            "crop|stretch|exact",
            self.image_fit,
        )
        _check(self.on_error in ("error", "skip"), "data.on_error", "error|skip", self.on_error)
        _check(self.workers >= 0, "data.workers", "an integer >= 0", self.workers)
        _check(
            not self.augment or self.source == "digits",
            "data.augment",
            "false unless data.source is digits",
            self.augment,
        )
        _check(self.strings_clips >= 0, "data.strings_clips", "an integer >= 0", self.strings_clips)
        _check(
            not self.strings_clips or self.source == "digit-strings",
            "data.strings_clips",
            "0 unless data.source is digit-strings",
            self.strings_clips,
        )
        try:
            self.edit_weights = tuple(float(w) for w in self.edit_weights)
        except (TypeError, ValueError):
            _check(False, "data.edit_weights", "a list of 4 numbers", self.edit_weights)
        _check(
            not self.edit_weights or self.source == "digit-edits",
            "data.edit_weights",
            "empty unless data.source is digit-edits",
            self.edit_weights,
        )
        _check(
            not self.edit_weights
            or (
                len(self.edit_weights) == 4 and min(self.edit_weights) >= 0 < sum(self.edit_weights)
            ),
            "data.edit_weights",
            "4 weights >= 0 (rotate, invert, thicken, next), not all 0",
            self.edit_weights,
        )
        self.strings_lengths = tuple(self.strings_lengths)
        _check(
            not self.strings_lengths or self.source == "digit-strings",
            "data.strings_lengths",
            "empty unless data.source is digit-strings",
            self.strings_lengths,
        )
        _check(
            all(isinstance(k, int) and k >= 1 for k in self.strings_lengths),
            "data.strings_lengths",
            "integers >= 1 (digits a clip says)",
            self.strings_lengths,
        )


@dataclass
class Config:
    """A whole run: the modalities, the network, the flow, training and sampling defaults."""

    modalities: list[ModalityConfig] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        self.modalities = [
            m if isinstance(m, ModalityConfig) else from_dict(ModalityConfig, m, "modalities")
            for m in self.modalities
        ]
        check_architecture(self.modalities, self.model)
        names = [m.name for m in self.modalities]
        unknown = sorted(set(self.train.freeze) - set(names) - {"shared"})
        _check(not unknown, "train.freeze", f"names among {sorted(names)} or 'shared'", unknown)
        if isinstance(self.sample.guidance, dict):
            unknown = sorted(set(self.sample.guidance) - set(names))
            _check(not unknown, "sample.guidance", f"modality names among {sorted(names)}", unknown)
        unknown = sorted(set(self.sample.stream_guidance) - set(names))
        _check(
            not unknown, "sample.stream_guidance", f"modality names among {sorted(names)}", unknown
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict; unknown keys and values of the wrong type are
    errors naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of fields, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; expected some of {sorted(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def _coerce(hint: Any, value: Any, path: str) -> Any:
    """``value`` as type ``hint``; an error naming ``path`` when it is not one."""
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [from_dict(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, path)
            except ConfigError as err:
                errors.append(str(err).split(": expected ", 1)[-1])
        raise ConfigError(f"{path}: expected {' or '.join(errors)}") from None
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else Any
        if len(args) > 1 and args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {value!r}")
            return tuple(
                _coerce(a, v, f"{path}[{i}]")
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        return tuple(_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{path}.{k}") for k, v in value.items()}
    return _scalar(hint, value, path)


def _number(text: str) -> Any:
    """A number written as text (``1e-6``, ``2``), else the text unchanged."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _scalar(hint: Any, value: Any, path: str) -> Any:
    name = getattr(hint, "__name__", str(hint))
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if hint in (int, float) and isinstance(value, str):
        value = _number(value)  # YAML 1.1 reads 1e-6 (no dot) as a string
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{path}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: cannot read a value of type {name}, got {value!r}")
