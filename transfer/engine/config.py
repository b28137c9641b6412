"""``TrainConfig``: every knob of a training run, one commented line each (the way airbench comments its
``hyp``). Defaults are the paper-scale protocol (docs/sparta.md §6, Rice et al.). Pixel values are in [0, 1],
so ε and step sizes are in the same units (8/255 ≈ 0.0314)."""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..activations import create_activation
from ..attack_names import parse_spec
from ..backbones import check_arch
from ..mapping import POLICIES
from ..threat_model import evaluation_eps
from .data import dataset_info
from .evaluation import DEFAULT_EVAL_ATTACKS

__all__ = [
    "TrainConfig", "value_fits", "RESUME_MAY_CHANGE", "SCHEDULES", "PLATEAU_SCHEDULES", "AMP_MODES",
    "ATTACK_BN_MODES", "MAX_INPUT_SIZE", "UNDECLARED_STEPS", "UNDECLARED_ALPHA_PER_STEP",
]  # fmt: skip

# the fields a resumed run may change: they set the learning rate, where and how fast it runs, and the
# final evaluation, never what the epochs already trained did
RESUME_MAY_CHANGE = frozenset(
    {
        "epochs",
        "lr",
        "activation_lr_scale",
        "amp",
        "device",
        "data_dir",
        "download",
        "eval_attacks",
        "eval_eps",
        "eval_batch_size",
        "channels_last",
        "compile",
        "cpu_bf16",
    }
)
# `plateau`: constant lr, multiplied by `gamma` once robust validation accuracy plateaus — the schedule
# `until_plateau` runs can use, since it needs no total number of epochs up front (docs/evaluation.md)
SCHEDULES = ("step", "cosine", "constant", "plateau")
# schedules that do not depend on `epochs`, so a run may stop early when it plateaus
PLATEAU_SCHEDULES = ("constant", "plateau")
MAX_SEED = 2**63 - 1  # seeds are int64 in result tables, TOML and torch's generators
AMP_MODES = ("off", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
ATTACK_BN_MODES = ("eval", "train")  # BatchNorm mode during the training attack (transfer.engine.attacks.BN_MODES)
MAX_INPUT_SIZE = 4096  # the largest image side a run takes: the whole dataset is resized in memory up front
# The training attack on a dataset that declares no threat model, once eps is given: Madry et al.'s rule of
# thumb α = 2.5·ε/steps, so the attack can cross the ball from a random start (docs/own-data.md)
UNDECLARED_STEPS = 10
UNDECLARED_ALPHA_PER_STEP = 2.5  # alpha = UNDECLARED_ALPHA_PER_STEP · eps / steps
# model_kwargs that would load weights inside timm, before the model is fitted to the dataset: init_from does it
_WEIGHT_KWARGS = frozenset({"pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay"})


def value_fits(
    value: Any, hint: Any, *, sequences: tuple[type, ...] = (list, tuple), comma_string: bool = True
) -> bool:
    """Whether a JSON or TOML value fits a ``TrainConfig`` field's annotation: ints pass for floats, one of
    ``sequences`` for a tuple, and with ``comma_string`` a comma-separated string for a tuple of names
    (``eval_attacks = "clean,pgd20"``). Study specs pass ``sequences=(list,)`` and no comma strings: TOML
    has arrays for those."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, h, sequences=sequences, comma_string=comma_string) for h in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return (comma_string and item is str and isinstance(value, str)) or (
            isinstance(value, sequences)
            and all(value_fits(v, item, sequences=sequences, comma_string=comma_string) for v in value)
        )
    if origin is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if typing.get_origin(hint) is dict:
        return "an object"
    return names.get(hint, str(hint))


@dataclass
class TrainConfig:
    """Every knob of a training run. Defaults are the paper-scale protocol (docs/sparta.md §6, Rice et al.).

    ``input_size``/``in_chans`` ``None`` take the dataset's own. ``milestones`` are fractions of
    ``epochs`` (step schedule). ``val_subset`` images are held out of the train split for robust
    validation each epoch (0/``None``: no validation, best = last). ``policy``/``freeze`` apply when
    ``train`` gets an activation set. ``amp`` acts on training (forward, backward, training attack)
    on CUDA. On the CPU training is fp32 unless ``cpu_bf16`` asks for bf16 autocast *and* the CPU computes
    bf16 natively (AVX512_BF16 or AMX-BF16); asked for elsewhere, train.log says why it ran in fp32
    (``epochs.training_precision``). ``cpu_bf16`` is off by default until a parity benchmark on such a CPU
    shows bf16 training equivalent (docs/performance.md). The final evaluation is always fp32.
    ``channels_last`` (NHWC memory layout) acts on every device.
    """

    # timm model name (any CNN timm builds; see `sparta sites ARCH`), a plugin's model, or your factory
    # "module.path:function" (function(num_classes, in_chans, input_size, **model_kwargs) -> nn.Module)
    arch: str = "resnet18"
    # registered dataset name (`transfer.list_datasets()`), or your own: "folder:PATH", "npz:PATH"
    dataset: str = "cifar10"
    # the dataset's fingerprint when the run started (filled in; folder:/npz: only): changed data is refused
    dataset_fingerprint: str = ""
    activation: str = "relu"  # registered activation at every site (`transfer.list_activations()`)
    # keyword arguments of the activation (e.g. {'variant': 'dw', 'kernel_size': 3})
    activation_config: dict[str, Any] = field(default_factory=dict)
    width: int | None = None  # base channel width of the backbone (None: the arch's own, 64 for ResNets)
    # further keyword arguments of timm.create_model (e.g. {'depth': 4, 'embed_dim': 96} for a small ViT)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # a local checkpoint (safetensors, or a torch file of tensors) to start from: a timm or plain state dict;
    # a classifier of another shape is re-initialised (reported in train.log and metrics.json)
    init_from: str | None = None
    input_size: int | None = None  # side of the square input image in pixels (None: the dataset's own)
    in_chans: int | None = None  # input channels, 1 or 3 (None: the dataset's own)
    recipe: str = "pgd"  # training recipe (`standard`, `pgd`, `trades`, `fgsm-rs`)
    epochs: int = 200  # passes over the training split
    batch_size: int = 128  # images per optimizer step
    lr: float = 0.1  # initial SGD learning rate
    activation_lr_scale: float = 1.0  # lr multiplier of the trainable activation parameters' optimizer group
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum on/off
    optimizer: str = "sgd"  # `sgd` (momentum, nesterov) or `adamw` (decoupled weight decay; for ViTs, lr ~1e-3)
    weight_decay: float = 5e-4  # L2 weight decay of the backbone parameters
    # weight decay of trainable activation parameters (None: same as weight_decay)
    activation_weight_decay: float | None = None
    schedule: str = "step"  # learning-rate schedule: `step`, `cosine`, `constant` or `plateau`
    # step schedule: fractions of `epochs` at which lr is multiplied by `gamma`
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1  # lr factor at each step milestone, or at the plateau (`plateau` schedule)
    # stop once robust validation accuracy plateaus (schedule `constant` or `plateau`); `epochs` is the cap
    until_plateau: bool = False
    patience: int = 3  # plateau criterion: the last `patience` epochs are compared with the best before them
    plateau_tol: float = 1.0  # plateau criterion: change in best robust val accuracy (points) that counts
    # L∞ radius of the training attack, in [0, 1] pixel units (8/255 ≈ 0.0314); None: the dataset's own
    # threat model (docs/threat-models.md), as are alpha and steps
    eps: float | None = None
    alpha: float | None = None  # training-attack step, pixels (None: the dataset's, scaled to eps and steps)
    steps: int | None = None  # iterations of the training attack (PGD steps, TRADES inner steps; None: the dataset's)
    trades_beta: float = 6.0  # TRADES weight of the KL robustness term
    fgsm_step: float = 1.25  # fgsm-rs step, in units of eps (Wong et al.: 1.25)
    attack_bn_mode: str = "eval"  # BatchNorm in the pgd/trades/fgsm-rs training attack: `eval` or `train` (batch stats)
    # images held out of the train split for robust validation each epoch (0/None: none, best = last)
    val_subset: int | None = 1000
    # attacks of the final test evaluation (`clean`, `fgsm`, `pgd20`, `cw`, `aa`, ...)
    eval_attacks: tuple[str, ...] = DEFAULT_EVAL_ATTACKS
    eval_eps: float | None = None  # L∞ radius of the evaluation attacks, pixel units (None: same as eps)
    eval_batch_size: int = 256  # images per batch during evaluation
    seed: int = 0  # seed of the model init, data order and attack noise (int >= 0)
    data_dir: str | None = None  # where torchvision datasets live (None: the default cache)
    download: bool = False  # let torchvision download a missing dataset
    train_subset: int | None = None  # stratified subset of the train split, in images (None: all)
    test_subset: int | None = None  # stratified subset of the test split, in images (None: all)
    device: str = "auto"  # `auto` (CUDA when present), `cpu` or `cuda[:N]`
    amp: str = "bf16"  # training's mixed precision on CUDA: `off`, `bf16` or `fp16` (on the CPU see cpu_bf16)
    cpu_bf16: bool = False  # CPU: train under bf16 autocast where the CPU computes bf16 natively (opt-in)
    channels_last: bool = True  # NHWC memory layout for model and inputs
    compile: bool = False  # torch.compile the model for training (the first steps compile; docs/performance.md)
    policy: str = "stage"  # mapping policy when an activation set is injected (`exact`, `stage`, `depth`, `shared`)
    freeze: bool = True  # freeze an injected activation set (the transfer protocol) or train it further
    transfer_source: str = ""  # name of the zoo entry or run the injected set came from (recorded, not read)

    def __post_init__(self) -> None:
        if isinstance(self.eval_attacks, str):
            self.eval_attacks = tuple(a.strip() for a in self.eval_attacks.split(",") if a.strip())
        self.eval_attacks = tuple(self.eval_attacks)
        self.milestones = tuple(float(m) for m in self.milestones)
        self.activation_config = dict(self.activation_config or {})
        self.model_kwargs = dict(self.model_kwargs or {})
        if self.data_dir is not None:
            self.data_dir = str(self.data_dir)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"], d["eval_attacks"] = list(self.milestones), list(self.eval_attacks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from JSON-like data: unknown keys and values of the wrong type are a ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"a TrainConfig is a JSON object of fields, got {type(d).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; allowed keys: {', '.join(allowed)}")
        hints = typing.get_type_hints(cls)
        wrong = [
            f"{k} must be {_type_name(hints[k])}, got {type(v).__name__} {v!r}"
            for k, v in d.items()
            if not value_fits(v, hints[k])
        ]
        if wrong:
            raise ValueError(f"TrainConfig: {'; '.join(wrong)}")
        return cls(**d)

    def with_threat_model(self) -> TrainConfig:
        """This config with ``eps``, ``alpha`` and ``steps`` the dataset's threat model where they are
        ``None``. An ``eps`` or ``steps`` given without ``alpha`` keeps the dataset's attack length α·steps/ε
        (CIFAR-10 at ε = 16/255 steps 4/255; with 5 steps, 4/255), so the attack still crosses the ball.

        A dataset that declares no threat model (``folder:``, ``npz:``, most plugins) needs ``eps``: without
        it this is a ``ValueError`` naming where to set it; with it, ``steps`` defaults to
        :data:`UNDECLARED_STEPS` and ``alpha`` to ``UNDECLARED_ALPHA_PER_STEP · eps / steps``."""
        threat = dataset_info(self.dataset).threat_model
        if threat is None:
            if self.eps is None:
                raise ValueError(
                    f"dataset {self.dataset!r} declares no threat model, so the radius of its attacks is yours to "
                    "choose: set eps (--eps 8/255 on the command line; eps = ... in a study's [train] table or per "
                    "source/target; TrainConfig(eps=...) in Python). alpha and steps then default to "
                    f"{UNDECLARED_ALPHA_PER_STEP:g}·eps/steps and {UNDECLARED_STEPS} (docs/own-data.md)"
                )
            steps = UNDECLARED_STEPS if self.steps is None else self.steps
            alpha = UNDECLARED_ALPHA_PER_STEP * self.eps / steps if self.alpha is None else self.alpha
            return replace(self, eps=float(self.eps), alpha=float(alpha), steps=int(steps))
        eps = threat.eps if self.eps is None else self.eps
        steps = threat.steps if self.steps is None else self.steps
        alpha = self.alpha
        if alpha is None:
            same = self.eps is None and self.steps is None
            alpha = threat.alpha if same else threat.alpha * (eps / threat.eps) * (threat.steps / steps)
        return replace(self, eps=float(eps), alpha=float(alpha), steps=int(steps))

    def eval_radius(self) -> float:
        """The L∞ radius of the final evaluation: ``eval_eps``, else the training ``eps`` (resolved from the
        dataset's threat model when unset; ``transfer.threat_model.evaluation_eps``)."""
        radius = evaluation_eps(asdict(self.with_threat_model()))
        assert radius is not None  # with_threat_model always fills eps
        return radius

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first bad field and what it takes; return ``self``."""

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {what}")

        def pos_int(name: str, optional: bool = False, minimum: int = 1) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            need(
                isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
                f"{name} must be an int >= {minimum}{' or None' if optional else ''}, got {v!r}",
            )

        for name in (
            "lr",
            "activation_lr_scale",
            "momentum",
            "weight_decay",
            "gamma",
            "eps",
            "alpha",
            "trades_beta",
            "fgsm_step",
        ):
            v = getattr(self, name)
            if v is None and name in ("eps", "alpha"):  # None: the dataset's threat model
                continue
            need(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
                f"{name} must be a finite number, got {v!r}",
            )
        need(isinstance(self.arch, str), f"arch must be a string, got {self.arch!r}")
        check_arch(self.arch)
        dataset_info(self.dataset)
        create_activation(self.activation, 4, **self.activation_config)
        self._validate_model_kwargs()
        need(
            self.init_from is None or (isinstance(self.init_from, str) and self.init_from.strip() != ""),
            f"init_from must be the path of a checkpoint file or None, got {self.init_from!r}",
        )
        need(
            isinstance(self.dataset_fingerprint, str),
            f"dataset_fingerprint is filled in from the dataset (a string), got {self.dataset_fingerprint!r}",
        )
        from .recipes import list_recipes  # recipes build on attacks, not on the config

        need(
            self.recipe in list_recipes(), f"unknown recipe {self.recipe!r}; choose one of {', '.join(list_recipes())}"
        )
        need(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        need(self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        need(self.policy in POLICIES, f"policy must be one of {tuple(POLICIES)}, got {self.policy!r}")
        for name in ("epochs", "eval_batch_size"):
            pos_int(name)
        pos_int("batch_size", minimum=2)
        for name in ("steps", "width", "input_size", "train_subset", "test_subset"):
            pos_int(name, optional=True)
        pos_int("val_subset", optional=True, minimum=0)
        need(self.in_chans in (None, 1, 3), f"in_chans must be 1, 3 or None, got {self.in_chans!r}")
        need(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= MAX_SEED,
            f"seed must be an int in [0, 2**63 - 1] (it is stored as a 64-bit integer), got {self.seed!r}",
        )
        for name in ("lr", "activation_lr_scale", "fgsm_step"):
            need(float(getattr(self, name)) > 0, f"{name} must be > 0, got {getattr(self, name)!r}")
        need(
            self.input_size is None or self.input_size <= MAX_INPUT_SIZE,
            f"input_size must be at most {MAX_INPUT_SIZE} pixels (the dataset is resized to it in memory), "
            f"got {self.input_size!r}",
        )
        need(
            self.attack_bn_mode in ATTACK_BN_MODES,
            f"attack_bn_mode must be one of {ATTACK_BN_MODES}, got {self.attack_bn_mode!r}",
        )
        for name in ("eps", "alpha"):
            v = getattr(self, name)
            need(
                v is None or 0 < v <= 1,
                f"{name} must be in (0, 1] (pixel units; 8/255 = 0.0314) or None for "
                f"the dataset's threat model, got {v!r}",
            )
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma!r}")
        need(
            all(0 < m <= 1 for m in self.milestones) and list(self.milestones) == sorted(self.milestones),
            f"milestones are increasing fractions of epochs in (0, 1], got {list(self.milestones)}",
        )
        pos_int("patience")
        need(
            isinstance(self.plateau_tol, int | float)
            and not isinstance(self.plateau_tol, bool)
            and math.isfinite(self.plateau_tol)
            and self.plateau_tol > 0,
            f"plateau_tol must be a number > 0 (percentage points), got {self.plateau_tol!r}",
        )
        need(isinstance(self.until_plateau, bool), f"until_plateau must be true or false, got {self.until_plateau!r}")
        need(isinstance(self.compile, bool), f"compile must be true or false, got {self.compile!r}")
        if self.until_plateau or self.schedule == "plateau":
            what = "until_plateau" if self.until_plateau else "schedule 'plateau'"
            need(bool(self.val_subset), f"{what} needs robust validation to see a plateau: set val_subset > 0")
        need(
            not self.until_plateau or self.schedule in PLATEAU_SCHEDULES,
            f"until_plateau needs schedule 'plateau' or 'constant', got {self.schedule!r}: the step and cosine "
            "schedules are laid out over a number of epochs known up front",
        )
        need(self.trades_beta >= 0, f"trades_beta must be >= 0, got {self.trades_beta!r}")
        need(bool(self.eval_attacks), "eval_attacks must name at least one attack (e.g. clean,pgd20)")
        for spec in self.eval_attacks:
            parse_spec(spec)
        need(self.eval_eps is None or 0 < self.eval_eps <= 1, f"eval_eps must be in (0, 1], got {self.eval_eps!r}")
        need(
            isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        return self

    def _validate_model_kwargs(self) -> None:
        """model_kwargs that belong elsewhere, each refused with where it belongs."""
        given = set(self.model_kwargs)
        if owned := sorted(given & {"in_chans", "width", "input_size"}):
            raise ValueError(f"TrainConfig: model_kwargs may not set {owned}: they are TrainConfig fields of their own")
        if "num_classes" in given:
            raise ValueError("TrainConfig: model_kwargs may not set ['num_classes']: the dataset's classes set it")
        if weights := sorted(given & _WEIGHT_KWARGS):
            raise ValueError(
                f"TrainConfig: model_kwargs may not set {weights}: timm would load weights before the model is "
                "fitted to this dataset (classifier, small-input stem). To start from trained weights, download "
                "them once and set init_from (--init-from PATH): a timm or plain state dict; a classifier of "
                "another shape is re-initialised and every change is reported"
            )
