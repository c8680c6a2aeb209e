"""Typed configuration: modalities, network, flow (training targets) and sampling.

Every dataclass validates itself in ``__post_init__`` and raises a ``ConfigError`` that names
the offending field, the value it got and what was expected. ``from_dict`` maps nested plain
dicts (parsed YAML) onto the dataclasses and rejects unknown keys by name.

Time convention, everywhere: t in [0, 1], t = 0 is pure noise (or all-mask), t = 1 is data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints

KINDS = ("image", "video", "sequence", "vector", "label", "text")
CONTINUOUS_KINDS = ("image", "video", "sequence", "vector")
DISCRETE_KINDS = ("label", "text")
TIME_SAMPLERS = ("logit_normal", "uniform")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def _check(ok: bool, where: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: expected {expected}, got {got!r}")


@dataclass
class ModalityConfig:
    """One modality: its kind, raw shape, tokenisation and training knobs.

    ``shape`` is the shape of one raw sample: image (C, H, W); video (T, C, H, W);
    sequence (L, C); vector (D,); label (); text (L,) where L is the maximum token length.
    """

    name: str
    kind: str
    shape: tuple[int, ...] = ()
    patch: int = 1  # image/video: square spatial patch; sequence: frames per token
    patch_t: int = 1  # video: frames per token
    num_classes: int = 0  # label: K classes (names may be given in `classes`); 0 = from data
    classes: tuple[str, ...] = ()  # label: optional class names, index = class id
    tokenizer: str = "bytes"  # text: "bytes" or a path to a `tokenizers` JSON file
    codec: str = ""  # "" = raw arrays; "logmel": a sequence of normalised log-mel frames (L, mels);
    # "vae": image latents (C, h, w) of a diffusers autoencoder in the folder `codec_path`
    codec_args: dict[str, float] = field(default_factory=dict)  # e.g. the log-mel STFT parameters
    codec_path: str = ""  # codec "vae": a local diffusers AutoencoderKL folder
    clock: str = ""  # modalities naming the same clock share a rotary time axis (audio-video sync)
    rate: float = 1.0  # tokens per unit of the shared clock (e.g. tokens per second)
    width: int = 0  # stream width; 0 = the model's width
    shift: float = (
        1.0  # timestep shift s: t = u / (u + s (1 - u)); s > 1 spends more time near noise
    )
    time_sampler: str = "logit_normal"  # SD3's logit-normal puts training mass mid-path
    loss_weight: float = 1.0
    p_given: float = 0.15  # chance, per sample, that this modality is a condition (t = 1)
    p_drop: float = 0.1  # chance it is marginalised (t = 0); this is what CFG's branch uses
    p_partial: float = 0.0  # chance of per-token roles (random tokens given); needs per_token_time
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
        self.shape = tuple(int(s) for s in self.shape)
        self.classes = tuple(str(c) for c in self.classes)
        w = f"modality '{self.name}'"
        _check(
            bool(self.name) and self.name.isidentifier(), f"{w}.name", "an identifier", self.name
        )
        _check(self.kind in KINDS, f"{w}.kind", f"one of {KINDS}", self.kind)
        ndim = {"image": 3, "video": 4, "sequence": 2, "vector": 1, "label": 0, "text": 1}
        _check(
            len(self.shape) == ndim[self.kind] and all(s > 0 for s in self.shape),
            f"{w}.shape",
            f"{ndim[self.kind]} positive sizes for kind '{self.kind}'",
            self.shape,
        )
        _check(self.patch >= 1, f"{w}.patch", "an integer >= 1", self.patch)
        _check(self.patch_t >= 1, f"{w}.patch_t", "an integer >= 1", self.patch_t)
        if self.kind == "image":
            for axis, size in zip("HW", self.shape[1:], strict=True):
                _check(
                    size % self.patch == 0,
                    f"{w}.shape ({axis})",
                    f"a multiple of patch={self.patch}",
                    size,
                )
        if self.kind == "video":
            _check(
                self.shape[0] % self.patch_t == 0,
                f"{w}.shape (T)",
                f"a multiple of patch_t={self.patch_t}",
                self.shape[0],
            )
            for axis, size in zip("HW", self.shape[2:], strict=True):
                _check(
                    size % self.patch == 0,
                    f"{w}.shape ({axis})",
                    f"a multiple of {self.patch}",
                    size,
                )
        if self.kind == "sequence":
            _check(
                self.shape[0] % self.patch == 0,
                f"{w}.shape (L)",
                f"a multiple of patch={self.patch}",
                self.shape[0],
            )
        if self.kind == "label":
            if self.classes and not self.num_classes:
                self.num_classes = len(self.classes)
            _check(
                self.num_classes >= 2 or self.num_classes == 0,
                f"{w}.num_classes",
                "an integer >= 2 (or 0: the classes the training data names)",
                self.num_classes,
            )
            _check(
                not self.classes or len(self.classes) == self.num_classes,
                f"{w}.classes",
                f"{self.num_classes} names",
                self.classes,
            )
        _check(
            self.codec in ("", "logmel", "vae"), f"{w}.codec", "'', 'logmel' or 'vae'", self.codec
        )
        _check(
            self.codec != "vae" or (self.kind == "image" and bool(self.codec_path)),
            f"{w}.codec",
            "'vae' only on an image modality, with codec_path naming the autoencoder folder",
            (self.kind, self.codec_path),
        )
        _check(
            self.codec != "logmel" or self.kind == "sequence",
            f"{w}.codec",
            "'logmel' only on a sequence modality",
            self.kind,
        )
        self.codec_args = dict(self.codec_args)
        _check(self.width >= 0, f"{w}.width", "an integer >= 0", self.width)
        _check(self.rate > 0, f"{w}.rate", "a number > 0", self.rate)
        _check(self.shift > 0, f"{w}.shift", "a number > 0", self.shift)
        _check(
            self.time_sampler in TIME_SAMPLERS,
            f"{w}.time_sampler",
            str(TIME_SAMPLERS),
            self.time_sampler,
        )
        _check(self.loss_weight >= 0, f"{w}.loss_weight", "a number >= 0", self.loss_weight)
        for p in ("p_given", "p_drop", "p_partial"):
            v = getattr(self, p)
            _check(0.0 <= v <= 1.0, f"{w}.{p}", "a probability in [0, 1]", v)
        _check(
            self.p_given + self.p_drop <= 1.0,
            f"{w}.p_given + p_drop",
            "a sum <= 1",
            self.p_given + self.p_drop,
        )
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        _check(
            not (self.standardize or self.mean or self.std) or self.kind == "vector",
            f"{w}.standardize",
            "only on a vector modality",
            self.kind,
        )
        if self.mean or self.std:
            d = self.shape[0] if self.shape else 0
            _check(
                len(self.mean) == len(self.std) == d,
                f"{w}.mean / std",
                f"{d} values each",
                (len(self.mean), len(self.std)),
            )
            _check(all(v > 0 for v in self.std), f"{w}.std", "values > 0", self.std)
        _check(
            self.pooled in ("", "mlp", "time"), f"{w}.pooled", "'', 'mlp' or 'time'", self.pooled
        )
        if self.pooled:
            _check(self.kind == "vector", f"{w}.pooled", "only on a vector modality", self.kind)
            _check(
                self.pooled != "time" or self.shape == (1,),
                f"{w}.shape",
                "(1,) for pooled 'time' (one scalar)",
                self.shape,
            )
            self.generate = False
        _check(
            self.pos_table == 0 or self.kind == "image",
            f"{w}.pos_table",
            "0 unless the modality is an image",
            self.pos_table,
        )
        if self.pos_table:
            grid = max(self.shape[1:]) // self.patch
            _check(
                self.pos_table >= grid,
                f"{w}.pos_table",
                f"a side >= the patch grid ({grid})",
                self.pos_table,
            )

    @property
    def discrete(self) -> bool:
        return self.kind in DISCRETE_KINDS


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

    def __post_init__(self) -> None:
        for name in ("width", "heads", "head_dim", "time_dim"):
            _check(
                getattr(self, name) >= 1, f"model.{name}", "an integer >= 1", getattr(self, name)
            )
        _check(self.depth >= 0, "model.depth", "an integer >= 0", self.depth)
        _check(self.single_depth >= 0, "model.single_depth", "an integer >= 0", self.single_depth)
        _check(self.depth + self.single_depth >= 1, "model.depth + single_depth", ">= 1", 0)
        _check(
            self.head_dim % 2 == 0,
            "model.head_dim",
            "an even integer (rotary pairs)",
            self.head_dim,
        )
        _check(self.time_dim % 2 == 0, "model.time_dim", "an even integer", self.time_dim)
        _check(self.mlp_ratio > 0, "model.mlp_ratio", "a number > 0", self.mlp_ratio)
        _check(
            self.activation in ("gelu", "gelu_tanh"),
            "model.activation",
            "gelu|gelu_tanh",
            self.activation,
        )
        _check(self.rope_theta > 1, "model.rope_theta", "a number > 1", self.rope_theta)
        self.rope_axes = tuple(int(a) for a in self.rope_axes)
        self.dual_attention = tuple(int(i) for i in self.dual_attention)
        self.lora_streams = tuple(self.lora_streams)
        _check(
            self.conditioning in ("summary", "sum"),
            "model.conditioning",
            "summary|sum",
            self.conditioning,
        )
        _check(self.time_input in ("t", "sigma"), "model.time_input", "t|sigma", self.time_input)
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


@dataclass
class FlowConfig:
    """How training targets are drawn (shared by all modalities)."""

    logit_mean: float = 0.0  # logit-normal time sampler: t = sigmoid(N(mean, std))
    logit_std: float = 1.0
    eps: float = 1e-5  # continuous times are kept in [eps, 1 - eps] where they are drawn

    def __post_init__(self) -> None:
        _check(self.logit_std > 0, "flow.logit_std", "a number > 0", self.logit_std)
        _check(0 <= self.eps < 0.5, "flow.eps", "a number in [0, 0.5)", self.eps)


@dataclass
class SampleConfig:
    """Defaults of ``anydit.sample``."""

    steps: int = 32
    solver: str = "euler"  # euler | heun | midpoint
    guidance: float = 1.0  # 1 = no guidance
    temperature: float = 1.0  # discrete unmasking: softmax temperature
    unmasking: str = "random"  # random (exact ancestral) | confidence (MaskGIT order)
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # guide only while t is in [low, high]

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "sample.steps", "an integer >= 1", self.steps)
        iv = tuple(self.guidance_interval)
        _check(
            len(iv) == 2 and 0.0 <= iv[0] <= iv[1] <= 1.0,
            "sample.guidance_interval",
            "two times low <= high in [0, 1]",
            self.guidance_interval,
        )
        _check(
            self.solver in ("euler", "heun", "midpoint"),
            "sample.solver",
            "euler|heun|midpoint",
            self.solver,
        )
        _check(self.temperature > 0, "sample.temperature", "a number > 0", self.temperature)
        _check(
            self.unmasking in ("random", "confidence"),
            "sample.unmasking",
            "random|confidence",
            self.unmasking,
        )
        _check(math.isfinite(self.guidance), "sample.guidance", "a finite number", self.guidance)


@dataclass
class TrainConfig:
    """One training run (the loop itself lives in ``anydit.train``)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    schedule: str = "cosine"  # cosine | constant
    grad_clip: float = 1.0
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
        _check(self.steps >= 1, "train.steps", "an integer >= 1", self.steps)
        _check(self.batch_size >= 1, "train.batch_size", "an integer >= 1", self.batch_size)
        _check(self.lr > 0, "train.lr", "a number > 0", self.lr)
        _check(self.warmup >= 0, "train.warmup", "an integer >= 0", self.warmup)
        _check(
            self.schedule in ("cosine", "constant"),
            "train.schedule",
            "cosine|constant",
            self.schedule,
        )
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


@dataclass
class DataConfig:
    """Where training data comes from (see ``anydit.data.own`` for the layouts)."""

    source: str = "digits"  # digits (built in) | arrays | manifest | folder | shards
    path: str = ""  # arrays: .npz or NAME.npy folder; manifest: .jsonl/.csv/.parquet; folder
    # of CLASS/ folders; shards: a folder written by `anydit data pack`
    seed: int = 0  # pairing/caption draws of the built-in dataset
    image_fit: str = "crop"  # image files of another size: crop | stretch | exact (refuse)
    on_error: str = "error"  # a bad sample: error (stop, naming it) | skip (count and go on)
    workers: int = 0  # DataLoader processes reading and decoding; 0 = in the training process

    def __post_init__(self) -> None:
        _check(self.source in DATA_SOURCES, "data.source", f"one of {DATA_SOURCES}", self.source)
        _check(
            self.source == "digits" or bool(self.path),
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


DATA_SOURCES = ("digits", "arrays", "manifest", "folder", "shards")


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
        names = [m.name for m in self.modalities]
        _check(len(names) >= 1, "modalities", "at least one modality", names)
        dup = sorted({n for n in names if names.count(n) > 1})
        _check(not dup, "modalities", "unique names", dup)
        widths = {m.name: m.width or self.model.width for m in self.modalities if not m.pooled}
        if self.model.single_depth:
            _check(
                len(set(widths.values())) == 1,
                "model.single_depth",
                "equal stream widths (single-stream blocks share weights)",
                widths,
            )
        if self.model.conditioning == "sum":
            _check(
                set(widths.values()) == {self.model.width},
                "model.conditioning 'sum'",
                f"every stream at model.width = {self.model.width} (they add one vector)",
                widths,
            )
        for where, streams in (
            ("train.freeze", self.train.freeze),
            ("model.lora_streams", self.model.lora_streams),
        ):
            unknown = sorted(set(streams) - set(names) - {"shared"})
            _check(not unknown, where, f"names among {sorted(names)} or 'shared'", unknown)
        _check(
            any(m.generate for m in self.modalities),
            "modalities",
            "at least one that can be generated (generate: true, not pooled)",
            names,
        )
        for m in self.modalities:
            _check(
                m.p_partial == 0 or self.model.per_token_time,
                f"modality '{m.name}'.p_partial",
                "0 unless model.per_token_time is true",
                m.p_partial,
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict; unknown keys are an error naming the key."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; expected some of {sorted(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, path)
        elif get_origin(hint) is list and dataclasses.is_dataclass(get_args(hint)[0]):
            kwargs[key] = [
                from_dict(get_args(hint)[0], v, f"{path}[{i}]") for i, v in enumerate(value)
            ]
        else:
            kwargs[key] = _coerce(hint, value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(value)
        if origin is tuple:
            return tuple(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{path}: expected {getattr(hint, '__name__', hint)}, got {value!r}"
        ) from None
    return value


def _set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict; list items by index or, for modalities, by name."""
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            match = [m for m in node if isinstance(m, dict) and m.get("name") == part]
            if part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif match:
                node = match[0]
            else:
                raise ConfigError(f"--set {key}: no list item {part!r} at {where}")
        else:
            if not isinstance(node.get(part, {}), dict | list):
                raise ConfigError(f"--set {key}: {where} is a value, not a section")
            node = node.setdefault(part, {})
    if isinstance(node, list):
        raise ConfigError(f"--set {key}: expected a field name after the list item")
    node[parts[-1]] = value


def config_from_tree(tree: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from parsed YAML plus ``key=value`` overrides (values parsed as YAML).

    ``model.preset`` names a size preset whose fields the rest of ``model`` overrides. With
    ``data.source: digits`` and no ``modalities``, the built-in digits modalities are used.
    """
    import copy

    import yaml

    tree = copy.deepcopy(tree or {})
    if not isinstance(tree, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(tree).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_path(tree, key.strip(), yaml.safe_load(raw))
    model = dict(tree.get("model") or {})
    preset_name = model.pop("preset", None)
    if preset_name:
        from anydit.model.presets import preset

        base = dataclasses.asdict(preset(str(preset_name)))
        base.update(model)
        model = base
    tree["model"] = model
    if not tree.get("modalities"):
        source = (tree.get("data") or {}).get("source", DataConfig.source)
        if source == "digits":
            from anydit.data.digits import digits_modalities

            tree["modalities"] = [dataclasses.asdict(m) for m in digits_modalities()]
    return from_dict(Config, tree)


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config file (see ``config_from_tree``); errors name the file."""
    from pathlib import Path

    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    try:
        tree = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p}: not valid YAML ({e})") from None
    try:
        return config_from_tree(tree or {}, overrides)
    except ConfigError as e:
        raise ConfigError(f"config file {p}: {e}") from None
