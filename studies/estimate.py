"""What a study costs before it runs (``sparta study plan CONFIG --estimate``).

Per job and in total:

- **AT image-steps**: train images × epochs × forward-backward passes per image (PGD-K: K attack passes and
  one training pass; :data:`RECIPE_PASSES` for the other recipes), plus the robust validation each epoch
  (a PGD of the training attack on the held-out images);
- **FLOPs**: those passes times each pass's FLOPs, counted on the job's own model at its configured width and
  input shape (``transfer.engine.cost.pass_flops``: forward, attack and training pass separately);
- **evaluation**: the test images times each ``[eval]`` attack's passes (:func:`eval_passes`), an upper bound
  (every stage of AutoAttack on every image; the real cascade attacks only what the previous stage left);
- **wall-clock**: the total FLOPs over a rate — measured here by a few engine AT steps of the study's first
  job's model on this CPU (:func:`measure_rate`), or given as image-steps per second of that model — and,
  as a lower bound, over a GPU's dense bf16 peak (default an H100/H200's): the physical limit.

The models are built on the CPU, one per distinct (arch, width, input, classes, activation); a transfer's
model is counted with its activation trainable (a frozen one saves only the gate's weight gradients).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from transfer.attack_names import STANDARD_TARGETS, parse_spec

from .jobs import Job
from .planner import Plan

if TYPE_CHECKING:
    from transfer.engine.cost import PassFlops

__all__ = [
    "AA_ITERATIONS",
    "RECIPE_PASSES",
    "SQUARE_QUERIES",
    "JobCost",
    "StudyCost",
    "Rate",
    "estimate_plan",
    "eval_passes",
    "job_cost",
    "measure_rate",
    "print_estimate",
]

AA_ITERATIONS = 100  # iterations of the official APGD and FAB stages
SQUARE_QUERIES = 5000  # forward passes of the official Square stage
_EOT = 20  # aa-rand's gradient samples per iteration
# recipe → (attack passes per attack step, training passes) per image: TRADES backpropagates its clean and
# adversarial logits, FGSM-RS attacks once whatever `steps` says, standard training does not attack
RECIPE_PASSES: dict[str, tuple[str, int]] = {
    "pgd": ("steps", 1), "trades": ("steps", 2), "fgsm-rs": ("one", 1), "standard": ("none", 1),
}  # fmt: skip
_BENCH_BATCH = 4  # images per AT step of the rate measurement
_BENCH_SECONDS = 2.0  # the measurement runs AT steps for at least this long, after one warm-up step


def eval_passes(spec: str, num_classes: int) -> tuple[float, float]:
    """``(attack passes, forward passes)`` per test image of an ``[eval]`` attack spec, every stage run on
    every image (an upper bound for AutoAttack, whose later stages see only the images still robust). An
    unknown spec (a plugin's attack) counts one forward pass."""
    parsed = parse_spec(spec)
    targets = min(parsed.targets or STANDARD_TARGETS, num_classes - 1)
    family, k = parsed.family, AA_ITERATIONS
    table: dict[str, tuple[float, float]] = {
        "clean": (0, 1), "fgsm": (1, 1), "pgd": (parsed.steps or 0, 1), "cw": (parsed.steps or 0, 1),
        "apgd-ce": (k, 1), "apgd-t": (targets * k, 1), "apgd-ce+t": (k + targets * k, 2),
        "square": (0, SQUARE_QUERIES + 1),
        # APGD-CE, APGD-T, FAB-T (a gradient and a forward pass per iteration), Square
        "aa": (k + 2 * targets * k, targets * k + SQUARE_QUERIES + 1),
        "aa-rand": (2 * k * _EOT, 1),  # APGD-CE and APGD-DLR, each averaging 20 gradients per iteration
    }  # fmt: skip
    return table.get(family, (0, 1))


@dataclass(frozen=True)
class JobCost:
    """One job's cost (module docstring). ``*_image_steps`` count forward-only passes as a third of one."""

    job_id: str
    kind: str
    row: str
    column: str
    seed: int
    model: str
    train_images: int
    val_images: int
    epochs: int
    attack_steps: int
    at_image_steps: float
    at_flops: float
    eval_images: int
    eval_image_steps: float
    eval_flops: float
    gflops_forward_per_image: float
    epochs_are_a_cap: bool = False  # until_plateau: the run may stop earlier

    @property
    def flops(self) -> float:
        return self.at_flops + self.eval_flops


@dataclass(frozen=True)
class Rate:
    """A rate of the reference model (the study's first job's) and the FLOP rate it stands for."""

    image_steps_per_s: float
    flops_per_s: float
    source: str  # "measured on this CPU" or "given (--rate)"
    reference: str


@dataclass
class StudyCost:
    name: str
    jobs: list[JobCost]
    rate: Rate | None = None
    peak_tflops: float | None = None
    notes: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, float]:
        keys = ("at_image_steps", "at_flops", "eval_image_steps", "eval_flops")
        out = {k: float(sum(getattr(j, k) for j in self.jobs)) for k in keys}
        return {**out, "flops": out["at_flops"] + out["eval_flops"]}

    def seconds(self) -> dict[str, float | None]:
        """Wall-clock of the adversarial training alone and with the evaluation, at the rate (one job at a
        time) and at the GPU's physical limit (a lower bound)."""
        total = self.totals()
        rate = self.rate.flops_per_s if self.rate else None
        peak = self.peak_tflops * 1e12 if self.peak_tflops else None
        return {
            "training_at_rate": total["at_flops"] / rate if rate else None,
            "at_rate": total["flops"] / rate if rate else None,
            "training_gpu_physical_limit": total["at_flops"] / peak if peak else None,
            "gpu_physical_limit": total["flops"] / peak if peak else None,
        }

    def lines(self) -> list[str]:
        """The estimate in words: one line per job, the totals, the wall-clock at the rate and the GPU bound."""
        total, seconds = self.totals(), self.seconds()
        out = [
            f"study {self.name}: cost of {len(self.jobs)} job(s) (image-step: one forward-backward pass of one "
            "image; evaluation an upper bound, every attack stage on every test image)"
        ]
        width = max(len(j.job_id) for j in self.jobs)
        out.append(
            f"  {'job':<{width}}  {'images x epochs':>17}  {'AT image-steps':>14}  {'AT FLOP':>10}  "
            f"{'eval image-steps':>16}  {'eval FLOP':>10}  model"
        )
        for j in self.jobs:
            cap = "≤" if j.epochs_are_a_cap else " "
            out.append(
                f"  {j.job_id:<{width}}  {j.train_images:>8,} x{cap}{j.epochs:<5}  {j.at_image_steps:>14.3g}  "
                f"{_si(j.at_flops):>10}  {j.eval_image_steps:>16.3g}  {_si(j.eval_flops):>10}  {j.model}"
            )
        out.append(
            f"total: AT {total['at_image_steps']:.3g} image-steps, {_si(total['at_flops'])}; evaluation "
            f"{total['eval_image_steps']:.3g} image-steps, {_si(total['eval_flops'])}; "
            f"{_si(total['flops'])} in all"
        )
        if self.rate is not None:
            out.append(
                f"at {self.rate.image_steps_per_s:.3g} image-steps/s of {self.rate.reference} "
                f"({_si(self.rate.flops_per_s, 'FLOP/s')}, {self.rate.source}), one job at a time: "
                f"{_times(seconds, 'at_rate')}"
            )
        if self.peak_tflops is not None:
            out.append(
                f"GPU physical limit at {self.peak_tflops:g} TFLOP/s dense bf16 (a lower bound: a real run "
                f"reaches a fraction of the peak): {_times(seconds, 'gpu_physical_limit')}"
            )
        return out + [f"note: {n}" for n in self.notes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "jobs": [{**asdict(j), "flops": j.flops} for j in self.jobs],
            "total": self.totals(),
            "rate": asdict(self.rate) if self.rate else None,
            "peak_tflops": self.peak_tflops,
            "seconds": self.seconds(),
            "notes": self.notes,
        }


def _si(value: float, unit: str = "FLOP") -> str:
    """``2.3e18`` → ``2.3 EFLOP``."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _duration(seconds: float) -> str:
    """Seconds in the largest unit that keeps the number >= 1 (s, min, h, days, years)."""
    for unit, scale in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def _times(seconds: dict[str, float | None], key: str) -> str:
    training, total = seconds[f"training_{key}"], seconds[key]
    assert training is not None and total is not None
    return f"training {_duration(training)}, {_duration(total)} with the evaluation"


def _model_key(train: dict[str, Any]) -> str:
    keys = ("arch", "width", "model_kwargs", "input_size", "in_chans", "dataset", "activation", "activation_config")
    return json.dumps({k: train.get(k) for k in keys}, sort_keys=True, default=str)


def _model_label(train: dict[str, Any]) -> str:
    width = f" width {train['width']}" if train.get("width") else ""
    options = "".join(f" {v}" for v in (train.get("activation_config") or {}).values())
    shape = f"{train['in_chans']}×{train['input_size']}×{train['input_size']}"
    return f"{train['arch']}{width}, {shape}, {train['activation']}{options}"


def _build(train: dict[str, Any]) -> tuple[Any, int]:
    """The job's model on the CPU, with a fresh activation, and its number of classes."""
    from transfer.engine.config import TrainConfig
    from transfer.engine.data import dataset_info
    from transfer.engine.run_inputs import build_model

    config = TrainConfig.from_dict(train)
    num_classes = dataset_info(config.dataset).num_classes
    model, _ = build_model(config, num_classes)
    return model, num_classes


def _split_images(train: dict[str, Any], split: str) -> int:
    """Images of a split, known without loading where the source knows, else counted by reading it."""
    from transfer.engine.data import create_dataset, split_size

    size = split_size(train["dataset"], split)
    if size is None:
        size = len(create_dataset(train["dataset"], split, data_dir=train.get("data_dir"), download=False))
    return size


def _images(train: dict[str, Any]) -> tuple[int, int, int]:
    """(train, validation, test) images of a job as the engine draws them (``run_inputs.load_data``)."""
    from transfer.engine.data import dataset_info

    full = _split_images(train, "train")
    val_subset = train.get("val_subset") or 0
    if "val" in dataset_info(train["dataset"]).splits and val_subset:
        val = min(val_subset, _split_images(train, "val"))
    else:
        val = min(val_subset, full // 10)
        full -= val
    if train.get("train_subset") is not None:
        full = min(full, train["train_subset"])
    test = _split_images(train, "test")
    if train.get("test_subset") is not None:
        test = min(test, train["test_subset"])
    return full, val, test


def _training_passes(train: dict[str, Any], notes: list[str]) -> tuple[int, int]:
    """(attack passes, training passes) per training image and epoch."""
    recipe = train.get("recipe", "pgd")
    if recipe not in RECIPE_PASSES:
        note = f"recipe {recipe!r} is counted as PGD (steps attack passes + one training pass)"
        if note not in notes:
            notes.append(note)
    kind, training = RECIPE_PASSES.get(recipe, ("steps", 1))
    attack = {"steps": int(train["steps"]), "one": 1, "none": 0}[kind]
    return attack, training


def job_cost(job: Job, flops: PassFlops, num_classes: int, label: str, notes: list[str]) -> JobCost:
    """One job's :class:`JobCost` from its model's :class:`~transfer.engine.cost.PassFlops`."""
    train = job.train
    n_train, n_val, n_test = _images(train)
    epochs = int(train["epochs"])
    attack, training = _training_passes(train, notes)
    steps = int(train["steps"])
    at_passes = n_train * epochs * (attack + training)
    val_attack, val_forward = n_val * epochs * steps, n_val * epochs * 2  # clean and attacked predictions
    at_flops = n_train * epochs * (attack * flops.attack + training * flops.training)
    at_flops += val_attack * flops.attack + val_forward * flops.forward
    eval_attack = eval_forward = 0.0
    for spec in train["eval_attacks"]:
        a, f = eval_passes(spec, num_classes)
        eval_attack, eval_forward = eval_attack + a * n_test, eval_forward + f * n_test
    return JobCost(
        job_id=job.id,
        kind=job.kind,
        row=job.row,
        column=job.column,
        seed=job.seed,
        model=label,
        train_images=n_train,
        val_images=n_val,
        epochs=epochs,
        attack_steps=steps,
        at_image_steps=float(at_passes + val_attack + val_forward / 3),
        at_flops=float(at_flops),
        eval_images=n_test,
        eval_image_steps=float(eval_attack + eval_forward / 3),
        eval_flops=float(eval_attack * flops.attack + eval_forward * flops.forward),
        gflops_forward_per_image=flops.forward / 1e9,
        epochs_are_a_cap=bool(train.get("until_plateau")),
    )


def measure_rate(job: Job, seconds: float = _BENCH_SECONDS) -> float:
    """Image-steps per second of ``job``'s model on this CPU: the engine's AT steps (its recipe, attack steps,
    channels-last fp32) on random images, timed for at least ``seconds`` after one warm-up step."""
    import torch

    from transfer.engine.config import TrainConfig
    from transfer.engine.epochs import create_optimizer
    from transfer.engine.recipes import create_recipe

    config = TrainConfig.from_dict(job.train)
    model, num_classes = _build(job.train)
    model = model.to(memory_format=torch.channels_last)
    recipe = create_recipe(
        config.recipe,
        eps=config.eps,
        alpha=config.alpha,
        steps=config.steps,
        trades_beta=config.trades_beta,
        fgsm_step=config.fgsm_step,
    )
    optimizer = create_optimizer(config, model)
    generator = torch.Generator().manual_seed(0)
    shape = (_BENCH_BATCH, config.in_chans, config.input_size, config.input_size)
    x = torch.rand(shape, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (_BENCH_BATCH,), generator=generator)

    def step() -> None:
        model.train()
        loss, _ = recipe(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    count, started = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - started < seconds:
        step()
        count += 1
    attack, training = _training_passes(job.train, [])
    return _BENCH_BATCH * count * (attack + training) / (time.perf_counter() - started)


def estimate_plan(
    plan: Plan, *, rate: float | None = None, measure: bool = True, peak_tflops: float | None = None
) -> StudyCost:
    """The :class:`StudyCost` of ``plan``. ``rate``: image-steps per second of the plan's first job's model
    (else measured on this CPU with ``measure``, else no wall-clock at a rate); ``peak_tflops``: the GPU
    peak of the lower bound (None: no bound)."""
    from transfer.engine.cost import pass_flops

    if not plan.jobs:
        raise ValueError(f"study {plan.name!r} plans no jobs: nothing to estimate")
    notes: list[str] = []
    counted: dict[str, tuple[PassFlops, int, str]] = {}
    costs = []
    for job in plan.jobs:
        key = _model_key(job.train)
        if key not in counted:
            model, num_classes = _build(job.train)
            shape = (job.train["in_chans"], job.train["input_size"], job.train["input_size"])
            counted[key] = (pass_flops(model, shape, num_classes), num_classes, _model_label(job.train))
            del model
        costs.append(job_cost(job, *counted[key], notes))
    if any(c.epochs_are_a_cap for c in costs):
        notes.append("until_plateau: epochs are a cap; a run that plateaus stops earlier and costs less")
    reference = plan.jobs[0]
    flops_ref, _, label = counted[_model_key(reference.train)]
    attack, training = _training_passes(reference.train, [])
    flops_per_step = (attack * flops_ref.attack + training * flops_ref.training) / (attack + training)
    measured = None
    if rate is not None:
        if not rate > 0:
            raise ValueError(f"--rate must be a positive number of image-steps per second, got {rate!r}")
        measured = Rate(rate, rate * flops_per_step, "given (--rate)", label)
    elif measure:
        value = measure_rate(reference)
        measured = Rate(value, value * flops_per_step, "measured on this CPU (engine AT steps, fp32)", label)
    if peak_tflops is not None and not peak_tflops > 0:
        raise ValueError(f"--peak-tflops must be a positive number, got {peak_tflops!r}")
    return StudyCost(plan.name, costs, measured, peak_tflops, notes)


def print_estimate(plan: Plan, *, rate: float | None, peak_tflops: float | None, as_json: bool) -> int:
    """``sparta study plan --estimate``: the estimate in words, or as JSON; ``peak_tflops`` None is an
    H100/H200's."""
    from transfer.cli import print_json
    from transfer.engine.cost import DEFAULT_PEAK_TFLOPS

    cost = estimate_plan(plan, rate=rate, peak_tflops=DEFAULT_PEAK_TFLOPS if peak_tflops is None else peak_tflops)
    if as_json:
        print_json(cost.to_dict())
    else:
        print("\n".join(cost.lines()))
    return 0
