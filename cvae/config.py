"""TrainConfig: every hyperparameter of a training run, frozen and validated on creation."""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from cvae.errors import ConfigError

KL_ANNEAL_TYPES = ("Cyclical", "Monotonic", "None")
OPTIMIZERS = ("Adam", "AdamW")
LR_SCHEDULES = ("multistep", "cosine", "constant")
MODEL_NAMES = ("light", "lab")  # cvae.model.MODELS builds each
FRAME_OUTPUTS = ("residual", "sigmoid", "mask", "warp")
LOSSES = ("lab", "elbo")
NORMS = ("batch", "group")
# what a config written before a field existed meant by leaving it out (checkpoints, stored studies)
LEGACY_VALUES = {"model": "light", "frame_output": "residual", "loss": "lab", "augment": False, "norm": "batch"}
MIN_FRAME_SIDE = 8  # the Label_Encoder's 7x7 reflection-padded stem needs more than 3 pixels a side
MAX_SEED = 2**63 - 1  # torch seeds are 64-bit, and the trainer adds small offsets for its other streams
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Field names follow the lab's argparse flags so old commands still work."""

    # data and output
    DR: str = "data/dance"
    save_root: str = "runs/train"
    partial: float = 1.0
    augment: bool = True  # per clip: colour channels permuted, mirrored half the time (cvae/augment.py)
    train_vi_len: int = 16
    val_vi_len: int = 630
    frame_H: int = 32
    frame_W: int = 64
    # model
    model: str = "light"  # which five modules (cvae.model.MODELS): light, or lab, the lab starter's
    frame_output: str = "warp"  # warp, mask, residual or sigmoid: how the Generator makes a frame (README, "The model")
    norm: str = "group"  # batch: the modules' BatchNorm2d; group: a GroupNorm in place of each
    F_dim: int = 128
    L_dim: int = 32
    N_dim: int = 12
    D_out_dim: int = 192
    # optimisation
    loss: str = "lab"  # lab: MSE per pixel + beta * KL per frame; elbo: both per pixel (README, "The loss")
    batch_size: int = 2
    lr: float = 0.001
    optim: str = "Adam"
    weight_decay: float = 0.0
    lr_schedule: str = "multistep"
    milestones: tuple[int, ...] = (2, 5)
    gamma: float = 0.1
    lr_min: float = 0.0
    grad_clip: float = 1.0
    num_epoch: int = 70
    per_save: int = 3
    # teacher forcing
    tfr: float = 1.0
    tfr_sde: int = 10
    tfr_d_step: float = 0.1
    # KL annealing
    kl_anneal_type: str = "Cyclical"
    kl_anneal_cycle: int = 10
    kl_anneal_ratio: float = 1.0
    # the lab's warm-up on a fraction of the clips
    fast_train: bool = False
    fast_partial: float = 0.4
    fast_train_epoch: int = 5
    # run
    seed: int = 1
    device: str = "auto"
    # speed: each switchable; benchmarks/quality_check.py compares each with the plain fp32 path
    channels_last: bool = True  # NHWC makes the 1x1 convs plain matrix products: faster at the lab's sizes, CPU and GPU
    bf16: bool = True  # bf16 autocast over fp32 weights where the device has bf16 units (cvae.train.native_bf16)
    fused_optimizer: bool = True  # one fused Adam(W) kernel on CUDA; on the CPU the default loop was faster
    compile: bool = False  # torch.compile each module: slower on the CPU, and its compile time outweighs short trials
    cuda_graphs: bool = False  # replay the validation rollout's step as a CUDA graph (CUDA only)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, _field_type(f), getattr(self, f.name)))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists, not tuples), fit for YAML, JSON and checkpoints."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str | None = None) -> "TrainConfig":
        """Build from a mapping; a ConfigError names the key, and `source` (a file, a checkpoint) where given."""
        where = f"{source}: " if source else ""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"{where}unknown TrainConfig key {key!r}{_did_you_mean(str(key), known)}")
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{where}{err}") from None

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def load_yaml_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Apply the overrides of a YAML file to `base` (default: the defaults)."""
    path = Path(path)
    return TrainConfig.from_dict({**(base or TrainConfig()).to_dict(), **read_yaml_overrides(path)}, source=str(path))


def read_yaml_overrides(path: Path) -> dict[Any, Any]:
    """The mapping a config YAML file holds, unchecked; a ConfigError names the file when it holds none."""
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: is {'a folder' if path.is_dir() else 'not a regular file'}; "
                          f"give a YAML file of TrainConfig keys")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: is UTF-16 text; save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                          f"is it a binary file?") from None
    try:
        values = yaml.load(text, Loader=UniqueKeyLoader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: not valid YAML ({where}{_one_line(err.problem or err)})") from None
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as err:  # dates out of range, deep nesting
        raise ConfigError(f"{path}: not valid YAML ({type(err).__name__}: {_one_line(err)})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of TrainConfig keys, got {type(values).__name__}")
    return values


class UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """safe_load that refuses a key given twice, where PyYAML would silently keep the last value
    (on libyaml's parser where PyYAML has it: 4x faster on a large sweep spec)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key; the base class says so
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _one_line(err: object) -> str:
    return " ".join(str(err).split())


def _field_type(f: dataclasses.Field) -> Any:
    return _field_types()[f.name]


@functools.cache
def _field_types() -> dict[str, Any]:
    """TrainConfig's resolved field types: resolving them costs ~1 ms, once per process, not once per field."""
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Accept what YAML and the command line give (ints for floats, lists for tuples, 'true')."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (ValueError, OverflowError):  # OverflowError: an integer beyond a float's range
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if typing.get_origin(kind) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{name}: expected a list of integers, got {value!r}")
        return tuple(_coerce(name, int, item) for item in items if item != "")
    raise TypeError(f"TrainConfig field {name} has an unsupported type {kind}")


def _validate(cfg: TrainConfig) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={getattr(cfg, key)!r}: {what}")

    for folder in ("DR", "save_root"):  # "" would mean the working directory
        need(getattr(cfg, folder).strip() != "" and "\0" not in getattr(cfg, folder), folder, "must name a folder")
    need(cfg.kl_anneal_type in KL_ANNEAL_TYPES, "kl_anneal_type", f"must be one of {', '.join(KL_ANNEAL_TYPES)}")
    need(cfg.model in MODEL_NAMES, "model", f"must be one of {', '.join(MODEL_NAMES)}")
    need(cfg.frame_output in FRAME_OUTPUTS, "frame_output", f"must be one of {', '.join(FRAME_OUTPUTS)}")
    need(cfg.norm in NORMS, "norm", f"must be one of {', '.join(NORMS)}")
    need(cfg.loss in LOSSES, "loss", f"must be one of {', '.join(LOSSES)}")
    need(cfg.optim in OPTIMIZERS, "optim", f"must be one of {', '.join(OPTIMIZERS)}")
    need(cfg.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}")
    need(cfg.lr > 0, "lr", "must be positive")
    need(0 <= cfg.lr_min <= cfg.lr, "lr_min", "must be between 0 and lr")
    need(cfg.weight_decay >= 0, "weight_decay", "must be >= 0")
    for key in ("lr", "weight_decay"):  # inf passes the bounds above, and would turn the weights to NaN in epoch 1
        need(math.isfinite(getattr(cfg, key)), key, "must be finite")
    need(0 < cfg.gamma <= 1, "gamma", "must be in (0, 1]")
    need(list(cfg.milestones) == sorted(set(cfg.milestones)) and all(m > 0 for m in cfg.milestones),
         "milestones", "must be increasing positive epochs")
    need(cfg.grad_clip > 0, "grad_clip", "must be positive")
    need(cfg.batch_size >= 1, "batch_size", "must be >= 1")
    need(cfg.num_epoch >= 1, "num_epoch", "must be >= 1")
    need(cfg.per_save >= 1, "per_save", "must be >= 1")
    need(0 < cfg.partial <= 1, "partial", "must be in (0, 1]")
    need(0 < cfg.fast_partial <= 1, "fast_partial", "must be in (0, 1]")
    need(cfg.fast_train_epoch >= 0, "fast_train_epoch", "must be >= 0")
    need(cfg.train_vi_len >= 2, "train_vi_len", "must be >= 2 (a first frame and one to predict)")
    need(cfg.val_vi_len >= 2, "val_vi_len", "must be >= 2 (a first frame and one to predict)")
    for side in ("frame_H", "frame_W"):
        need(getattr(cfg, side) >= MIN_FRAME_SIDE, side, f"must be >= {MIN_FRAME_SIDE} pixels")
    for dim in ("F_dim", "L_dim", "N_dim", "D_out_dim"):
        need(getattr(cfg, dim) >= 1, dim, "must be >= 1")
    need(cfg.F_dim % 8 == 0, "F_dim", "must be divisible by 8 (the RGB_Encoder widens in steps of F_dim/8)")
    need(cfg.L_dim % 2 == 0, "L_dim", "must be even (the Label_Encoder's stem has L_dim/2 channels)")
    need(cfg.D_out_dim % 8 == 0, "D_out_dim", "must be divisible by 8 (the Generator narrows in steps of D_out_dim/8)")
    if cfg.model == "lab":
        need(cfg.N_dim >= 4, "N_dim", "must be >= 4 with model: lab (its Gaussian_Predictor narrows to N_dim/4 channels)")
    need(0 <= cfg.tfr <= 1, "tfr", "must be in [0, 1]")
    need(cfg.tfr_sde >= 0, "tfr_sde", "must be >= 0")
    need(cfg.tfr_d_step >= 0, "tfr_d_step", "must be >= 0")
    need(cfg.kl_anneal_cycle >= 1, "kl_anneal_cycle", "must be >= 1")
    need(0 < cfg.kl_anneal_ratio <= 1, "kl_anneal_ratio", "must be in (0, 1]")
    need(DEVICE.fullmatch(cfg.device) is not None, "device", "must be auto, cpu, cuda or cuda:N")
    need(0 <= cfg.seed <= MAX_SEED, "seed", f"must be between 0 and 2**63-1 ({MAX_SEED})")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _did_you_mean(key: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
