"""Typed configuration schema: Hydra config -> these dataclasses -> library functions.

The dataclasses are registered in Hydra's ConfigStore as the schema of `conf/config.yaml`, so a
misspelt key or a value of the wrong type is rejected while composing. Semantic checks (r >= 1,
known dataset, positive learning rate, ...) live in `__post_init__` and run when the composed
config is turned into objects by `to_config`; they raise `ConfigError` with one readable line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from capsroute.config_report import ReportConfig
from capsroute.config_rules import check_out_root, check_run_name, check_seed, require_finite
from capsroute.errors import ConfigError
from capsroute.logger_config import LoggerConfig

# multimnist: two overlapping MNIST digits (Section 6), generated from the MNIST files;
# svhn and smallnorb: the paper's Section 7; fashion_mnist: the usual next step after MNIST;
# mnist40: MNIST placed on 40x40 (Section 5.2); affine_mnist (an affNIST approximation generated
# from MNIST) and affnist are test sets only, scored with `capsroute evaluate RUN --dataset`
DATASETS = (
    "mnist",
    "cifar10",
    "multimnist",
    "fashion_mnist",
    "svhn",
    "smallnorb",
    "mnist40",
    "affine_mnist",
    "affnist",
)
EVAL_ONLY_DATASETS = ("affine_mnist", "affnist")
VIEWPOINT_DATASETS = ("mnist40", *EVAL_ONLY_DATASETS)  # the 1x40x40 sets of Section 5.2
PRECISIONS = ("fp32", "bf16", "fp16")
# capsnet: the CapsNet of Section 4; baseline_cnn: the paper's baseline CNN (capsroute.baseline)
MODEL_KINDS = ("capsnet", "baseline_cnn")
ROUTING_GRADS = ("all", "last")
# dynamic: Procedure 1; uniform: every c_ij = 1/n_out; random: c_i = softmax(random logits / T).
# The two controls have no agreement step (Paik et al. 2019 compare routing against them).
ROUTING_MODES = ("dynamic", "uniform", "random")
# paper: the paper's text (capsroute's default); official: the authors' TensorFlow code
# (Sarasra/models, research/capsules). README "Paper mode and official-code mode".
FORMS = ("paper", "official")
PADDINGS = ("valid", "same")  # same: TensorFlow's 'SAME' (uneven when the total is odd)
INITS = ("torch", "official")  # official: variables.py's truncated normals and 0.1 biases
COMBINES = ("max", "add_clip")  # MultiMNIST overlay: pixel-wise max, or sum clipped at 255
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{name} must be one of {', '.join(allowed)}, got '{value}'")


def _positive(name: str, value: float | None) -> None:
    _require(value is None or value > 0, f"{name} must be > 0, got {value}")


@dataclass
class DatasetConfig:
    """Which images, where they live, and how they are subset and augmented."""

    name: str = "mnist"
    root: str = "${oc.env:CAPSROUTE_DATA,data}"
    download: bool = False
    # torchvision's md5 integrity check; false accepts re-packed copies that still parse
    verify: bool = True
    train_size: int | None = None  # class-balanced training subset chosen from the seed
    test_size: int | None = None  # class-balanced test subset chosen from the seed
    train_eval_size: int = 10000  # fixed training subset evaluated each epoch, no augmentation
    # class-balanced validation split held out of the training split (seeded; never trained on):
    # when set, "best epoch" and early stopping are chosen on it instead of on the test set
    val_size: int | None = None
    shift: int = 2  # random translation of up to `shift` px with zero padding (the paper's MNIST)
    crop: int | None = None  # random crop size for training, centre crop at test (CIFAR: 24)
    hflip: bool = False
    on_device: bool = True  # hold the whole dataset as one tensor on the training device
    # MultiMNIST: each digit is shifted by up to this many px on a (28 + 2 x shift) canvas
    overlay_shift: int = 4
    # where generated datasets (MultiMNIST) are cached; the data root may be read-only
    cache_dir: str = "${out_root}/cache"
    # official: CIFAR-10 random brightness and contrast, then per-image standardisation
    distort: str = "paper"
    combine: str = "max"  # MultiMNIST overlay: max (capsroute) or add_clip (official code)

    def __post_init__(self) -> None:
        _choice("dataset.distort", self.distort, FORMS)
        _choice("dataset.combine", self.combine, COMBINES)
        _require(
            self.distort == "paper" or self.name == "cifar10",
            "dataset.distort=official is the official CIFAR-10 input pipeline: use dataset=cifar10",
        )
        _require(
            self.name in DATASETS,
            f"unknown dataset '{self.name}'; choose one of: {', '.join(DATASETS)}",
        )
        require_finite(self, "dataset.")
        _positive("dataset.train_size", self.train_size)
        _positive("dataset.test_size", self.test_size)
        _positive("dataset.train_eval_size", self.train_eval_size)
        _positive("dataset.val_size", self.val_size)
        _positive("dataset.crop", self.crop)
        _require(self.shift >= 0, f"dataset.shift must be >= 0, got {self.shift}")
        _require(
            self.overlay_shift >= 0, f"dataset.overlay_shift must be >= 0, got {self.overlay_shift}"
        )
        _require(
            self.name != "multimnist" or (self.shift == 0 and self.crop is None and not self.hflip),
            "dataset=multimnist is shifted when it is generated (dataset.overlay_shift): "
            "set dataset.shift=0, dataset.crop=null and dataset.hflip=false",
        )


@dataclass
class ModelConfig:
    """CapsNet layer sizes (Sabour et al. 2017, Section 4) and loss constants.

    `kind=baseline_cnn` (the `model=baseline_cnn` group) trains the paper's baseline CNN
    instead, sized by the `cnn_*` keys; the capsule keys are then unused.
    """

    kind: str = "capsnet"
    conv1_channels: int = 256
    conv1_kernel: int = 9
    primary_types: int = 32  # CIFAR-10 uses 64
    primary_dim: int = 8
    primary_kernel: int = 9
    primary_stride: int = 2
    digit_dim: int = 16
    digit_bias: bool = False  # the official code adds one; the paper's text does not
    weight_std: float = 0.1  # W_ij ~ truncated normal (2 std), as the official code's weights
    none_of_the_above: bool = False  # an extra routing target with no class (paper's CIFAR-10)
    reconstruction: bool = True
    # per-image standardisation of the input (the official smallNORB code); the decoder still
    # reconstructs the [0, 1] pixels
    standardize: bool = False
    decoder_hidden: list[int] = field(default_factory=lambda: [512, 1024])
    recon_weight: float = 0.0005
    m_plus: float = 0.9
    m_minus: float = 0.1
    lambda_neg: float = 0.5
    # the baseline CNN (Section 5): 5x5 'same' convolutions, FC layers, dropout, softmax
    cnn_channels: list[int] = field(default_factory=lambda: [256, 256, 128])
    cnn_kernel: int = 5
    cnn_hidden: list[int] = field(default_factory=lambda: [328, 192])
    cnn_dropout: float = 0.5
    # official-code mode switches (README "Paper mode and official-code mode"):
    padding: str = "valid"  # conv1 and PrimaryCaps: valid (paper) or TensorFlow 'same'
    # PrimaryCaps as the official conv_slim_capsule: one routing pass over the types, i.e.
    # squash(conv / T + b), T = types (+1 with routing.leaky), b per (type, unit)
    primary_routing: bool = False
    init: str = "torch"  # torch defaults, or the official truncated normals and 0.1 biases
    loss_form: str = "paper"  # official: margin loss x 1/(2K) (x0.5, mean over the K classes)

    def __post_init__(self) -> None:
        _choice("model.padding", self.padding, PADDINGS)
        _choice("model.init", self.init, INITS)
        _choice("model.loss_form", self.loss_form, FORMS)
        _require(
            self.kind in MODEL_KINDS,
            f"unknown model.kind '{self.kind}'; choose one of: {', '.join(MODEL_KINDS)}",
        )
        _require(
            self.kind == "capsnet" or not self.reconstruction,
            "model=baseline_cnn has no decoder: set model.reconstruction=false",
        )
        require_finite(self, "model.")
        _positive("model.cnn_kernel", self.cnn_kernel)
        _require(
            all(c > 0 for c in [*self.cnn_channels, *self.cnn_hidden]),
            "model.cnn_channels and model.cnn_hidden must be > 0",
        )
        _require(
            0 <= self.cnn_dropout < 1,
            f"model.cnn_dropout must be in [0, 1), got {self.cnn_dropout}",
        )
        for name in (
            "conv1_channels",
            "conv1_kernel",
            "primary_types",
            "primary_dim",
            "primary_kernel",
            "primary_stride",
            "digit_dim",
        ):
            _positive(f"model.{name}", getattr(self, name))
        _positive("model.weight_std", self.weight_std)
        _require(all(h > 0 for h in self.decoder_hidden), "model.decoder_hidden must be > 0")
        _require(self.recon_weight >= 0, "model.recon_weight must be >= 0")
        _require(self.lambda_neg >= 0, "model.lambda_neg must be >= 0")
        _require(
            0 <= self.m_minus < self.m_plus <= 1,
            f"need 0 <= model.m_minus < model.m_plus <= 1, got {self.m_minus}, {self.m_plus}",
        )


def iterations_allowed(mode: str, iterations: int) -> bool:
    """The rule for r: at least 1, and the controls (`uniform`, `random`) need r = 1."""
    return iterations >= 1 and (mode == "dynamic" or iterations == 1)


def effective_iterations(mode: str, iterations: int) -> int:
    """The routing iterations a `routing.mode` runs: r for dynamic routing, 1 for the controls
    (they have no agreement step)."""
    return iterations if mode == "dynamic" else 1


@dataclass
class RoutingConfig:
    """Dynamic routing (Procedure 1) and its controls.

    `grad="all"` back-propagates through every routing iteration, as the official TensorFlow
    code does; `grad="last"` detaches the predictions in all but the last iteration, as several
    public re-implementations do.
    `mode="uniform"` couples every lower capsule equally to every parent (dynamic routing with
    r = 1, exactly); `mode="random"` draws each example's logits from N(0, 1) / `temperature`
    and couples with their softmax, without agreement. Both need `iterations=1`.
    """

    iterations: int = 3
    grad: str = "all"
    mode: str = "dynamic"
    temperature: float = 1.0  # random mode: logits ~ N(0, 1) / temperature (lower: sharper)
    # the official code's leaky routing: a constant logit 0 joins the softmax over parents and
    # is dropped, so c_ij = e^b_ij / (1 + sum_k e^b_ik) (no capsule, no W for the leak)
    leaky: bool = False

    @property
    def effective_iterations(self) -> int:
        """The r this routing runs (`effective_iterations`)."""
        return effective_iterations(self.mode, self.iterations)

    def __post_init__(self) -> None:
        _require(
            self.iterations >= 1,
            f"routing.iterations must be >= 1 (r = 1 means no routing), got {self.iterations}",
        )
        _require(
            self.grad in ROUTING_GRADS,
            f"routing.grad must be one of {', '.join(ROUTING_GRADS)}, got '{self.grad}'",
        )
        _require(
            self.mode in ROUTING_MODES,
            f"routing.mode must be one of {', '.join(ROUTING_MODES)}, got '{self.mode}'",
        )
        _require(
            iterations_allowed(self.mode, self.iterations),
            f"routing.mode={self.mode} has no agreement step, so it needs routing.iterations=1 "
            f"(got {self.iterations}); sweep the controls with --iters 1",
        )
        require_finite(self, "routing.")
        _positive("routing.temperature", self.temperature)


@dataclass
class TrainConfig:
    """Optimisation (paper defaults: Adam, lr 1e-3 decayed by 0.96 every 2000 steps, batch 128)."""

    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 500
    lr: float = 1e-3
    lr_decay_rate: float = 0.96  # lr = lr * rate ** (step / lr_decay_steps), as the official code
    lr_decay_steps: int = 2000
    precision: str = "fp32"
    compile: bool = False
    deterministic: bool = True  # false: cuDNN autotunes its algorithms (faster, not bitwise)
    # CUDA only (ignored elsewhere): replay the whole train step from one CUDA graph
    # (capsroute/run/graph_step.py); same numbers up to float rounding, 3-4x faster in bf16
    cuda_graph: bool = True
    # CUDA only: TF32 for fp32 matmuls and convolutions (~3e-4 relative error; bf16 unaffected)
    tf32: bool = False
    progress: bool = True  # rich progress bar on a terminal, log lines elsewhere
    threads: int | None = None  # torch CPU threads; default: torch's own choice
    # a NaN/Inf loss: "fail" stops the run (last good checkpoint kept), "skip" drops the step
    nonfinite: str = "fail"
    # stop after this many epochs without a higher validation accuracy (needs dataset.val_size)
    early_stopping_patience: int | None = None
    lr_min: float = 0.0  # floor of the decayed lr (the official code's: 1e-6)

    def __post_init__(self) -> None:
        _require(self.lr_min >= 0, f"train.lr_min must be >= 0, got {self.lr_min}")
        require_finite(self, "train.")
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        _positive("train.eval_batch_size", self.eval_batch_size)
        _positive("train.lr", self.lr)
        _positive("train.lr_decay_steps", self.lr_decay_steps)
        _positive("train.threads", self.threads)
        _positive("train.early_stopping_patience", self.early_stopping_patience)
        _require(
            0 < self.lr_decay_rate <= 1,
            f"train.lr_decay_rate must be in (0, 1], got {self.lr_decay_rate}",
        )
        _require(
            self.nonfinite in ("fail", "skip"),
            f"train.nonfinite must be fail or skip, got '{self.nonfinite}'",
        )
        _require(
            self.precision in PRECISIONS,
            f"train.precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'",
        )


@dataclass
class Config:
    """One training run."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    device: str = "auto"
    out_root: str = "outputs"
    run_name: str = "${dataset.name}-r${routing.iterations}-s${seed}"

    def __post_init__(self) -> None:
        check_seed(self.seed)
        _require(
            bool(_DEVICE_PATTERN.match(self.device)),
            f"unknown device '{self.device}'; use auto, cpu, cuda, cuda:N or mps",
        )
        check_out_root(self.out_root)
        check_run_name(self.run_name)
        _require(
            self.train.early_stopping_patience is None or self.dataset.val_size is not None,
            "train.early_stopping_patience needs dataset.val_size: stopping on the test set "
            "would select on the test set",
        )
        _require(
            self.dataset.name != "multimnist" or self.model.kind == "capsnet",
            "dataset=multimnist needs the CapsNet: the baseline CNN has one softmax target, "
            "MultiMNIST two",
        )
        _require(
            self.dataset.name not in EVAL_ONLY_DATASETS,
            f"dataset={self.dataset.name} is a test set only: train on dataset=mnist40 and score "
            f"the run with `capsroute evaluate RUN_DIR --dataset {self.dataset.name}`",
        )


def register_schema() -> None:
    """Register `Config` as the schema `conf/config.yaml` extends (idempotent)."""
    ConfigStore.instance().store(name="capsroute_schema", node=Config)


def to_config(cfg: DictConfig | dict[str, Any]) -> Config:
    """Turn a composed Hydra config into a validated `Config` (`ConfigError` on bad values)."""
    plain = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    node = OmegaConf.create(plain)  # untyped, so the schema below checks every key
    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, True)  # keys the schema lacks (e.g. `+foo=1`) are errors
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(schema, node))
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf interpolation/validation errors
        raise ConfigError(first_line(str(exc))) from exc
    assert isinstance(obj, Config)
    return obj


def first_line(message: str) -> str:
    """The first non-empty line of an error message (OmegaConf appends full_key/object_type)."""
    return next((line.strip() for line in message.splitlines() if line.strip()), message)


def config_to_dict(config: Config) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a `Config` (for checkpoints and summaries)."""
    container = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    assert isinstance(container, dict)
    return container
