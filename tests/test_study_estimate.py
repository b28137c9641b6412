"""``sparta study plan CONFIG --estimate``: AT image-steps and FLOPs per job and in total, and the wall-clock
at a rate and at a GPU's physical limit; the FLOP counts it rests on (``transfer.engine.cost``)."""

from __future__ import annotations

import json

import pytest
import torch

from studies.estimate import eval_passes, measure_rate
from studies.planner import plan_study
from studies.spec import parse_spec
from transfer import create_backbone, inject
from transfer.cli import main
from transfer.engine.cost import DEFAULT_PEAK_TFLOPS, PassFlops, pass_flops

TOML = """
name = "cost"
seeds = [0, 1]
baselines = ["relu"]

[train]
recipe = "pgd"
epochs = {epochs}
width = 4
input_size = 8
train_subset = 40
val_subset = 0
device = "cpu"

[eval]
attacks = ["clean", "pgd20"]
n = 10

[[sources]]
arch = "resnet18"
dataset = "digits"

[[targets]]
arch = "resnet18"
dataset = "shapes"
"""


def _estimate(tmp_path, capsys, epochs: int = 1, *extra: str) -> dict:
    path = tmp_path / f"cost{epochs}.toml"
    path.write_text(TOML.format(epochs=epochs))
    assert main(["study", "plan", str(path), "--estimate", "--no-check", "--rate", "100", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_the_estimate_counts_images_epochs_and_steps_and_its_json_keys(tmp_path, capsys) -> None:
    one, two = _estimate(tmp_path, capsys, 1), _estimate(tmp_path, capsys, 2)
    assert set(one) == {"name", "jobs", "total", "rate", "peak_tflops", "seconds", "notes"}
    assert set(one["total"]) == {"at_image_steps", "at_flops", "eval_image_steps", "eval_flops", "flops"}
    assert set(one["seconds"]) == {"training_at_rate", "at_rate", "training_gpu_physical_limit", "gpu_physical_limit"}
    job = one["jobs"][0]
    assert {
        "job_id",
        "kind",
        "row",
        "column",
        "seed",
        "model",
        "train_images",
        "epochs",
        "attack_steps",
        "at_image_steps",
        "at_flops",
        "eval_images",
        "eval_image_steps",
        "eval_flops",
        "flops",
    } <= set(job)
    # 40 images × 1 epoch × (10 PGD steps of digits' threat model + 1 training pass), no validation
    assert (job["train_images"], job["epochs"], job["attack_steps"]) == (40, 1, 10)
    assert job["at_image_steps"] == 40 * 1 * 11
    # 10 test images: clean (one forward, a third of an image-step) and PGD-20 (20 steps and a forward)
    assert job["eval_image_steps"] == pytest.approx(10 * (1 / 3 + 20 + 1 / 3))
    assert len(one["jobs"]) == 2 * 3  # seeds × (source, baseline, transfer)
    for a, b in zip(one["jobs"], two["jobs"], strict=True):
        assert b["at_image_steps"] == 2 * a["at_image_steps"] and b["at_flops"] == pytest.approx(2 * a["at_flops"])
        assert b["eval_flops"] == pytest.approx(a["eval_flops"]) and a["at_flops"] > 0
    assert two["total"]["at_image_steps"] == 2 * one["total"]["at_image_steps"]
    assert one["rate"]["image_steps_per_s"] == 100 and one["rate"]["source"] == "given (--rate)"
    assert one["peak_tflops"] == DEFAULT_PEAK_TFLOPS
    total, seconds = one["total"], one["seconds"]
    assert seconds["at_rate"] == pytest.approx(total["flops"] / one["rate"]["flops_per_s"])
    assert seconds["training_at_rate"] == pytest.approx(total["at_flops"] / one["rate"]["flops_per_s"])
    assert seconds["gpu_physical_limit"] == pytest.approx(total["flops"] / (DEFAULT_PEAK_TFLOPS * 1e12))
    assert two["seconds"]["training_at_rate"] == pytest.approx(2 * seconds["training_at_rate"])


def test_the_estimate_in_words(tmp_path, capsys) -> None:
    path = tmp_path / "cost.toml"
    path.write_text(TOML.format(epochs=3))
    assert main(["study", "plan", str(path), "--estimate", "--no-check", "--rate", "50", "--peak-tflops", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("study cost: cost of 6 job(s)") and len(out) == 2 + 6 + 3
    assert out[-3].startswith("total: AT 7.92e+03 image-steps")  # 6 jobs × 40 images × 3 epochs × 11 passes
    assert "given (--rate)" in out[-2] and out[-1].startswith("GPU physical limit at 100 TFLOP/s")
    assert main(["study", "plan", str(path), "--estimate", "--no-check", "--rate", "0"]) == 2
    assert "--rate must be a positive number" in capsys.readouterr().err


def test_pass_flops_count_forward_attack_and_training_passes_and_leave_the_model_as_it_was() -> None:
    model = create_backbone("resnet18", num_classes=10, in_chans=3, input_size=16, width=8)
    inject(model, "sparta", variant="dw")
    model.eval()
    flops = pass_flops(model, (3, 16, 16), num_classes=10)
    # an attack pass adds the input gradient (about a forward), a training pass also the weight gradients
    assert 1.5 < flops.attack / flops.forward < 2.5 and 2.5 < flops.training / flops.forward < 3.5
    assert not model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    # torch's own count makes a depthwise conv's weight gradient C times its cost; pass_flops does not
    dw = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 1),
        torch.nn.Conv2d(64, 64, 3, padding=1, groups=64),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * 8 * 8, 10),
    )
    dw_flops = pass_flops(dw, (3, 8, 8), num_classes=10)
    assert dw_flops.training < 3 * dw_flops.forward
    bigger = create_backbone("resnet18", num_classes=10, in_chans=3, input_size=32, width=8)
    inject(bigger, "sparta", variant="dw")
    bigger = pass_flops(bigger, (3, 32, 32), num_classes=10)
    assert bigger.forward == pytest.approx(4 * flops.forward, rel=0.05)  # four times the pixels
    assert PassFlops(1.0, 2.0, 3.0).at_image(10) == 23.0


def test_eval_passes_of_the_attack_specs() -> None:
    assert eval_passes("clean", 10) == (0, 1) and eval_passes("pgd20", 10) == (20, 1)
    assert eval_passes("apgd-t3", 10) == (300, 1) and eval_passes("apgd-t", 3) == (200, 1)  # at most classes − 1
    assert eval_passes("aa", 10)[0] > eval_passes("apgd-ce+t", 10)[0] > eval_passes("apgd-ce", 10)[0] == 100


def test_measure_rate_times_the_first_jobs_at_steps() -> None:
    spec = parse_spec(
        {
            "name": "r",
            "train": {"width": 4, "input_size": 8, "device": "cpu"},
            "sources": [{"arch": "resnet18", "dataset": "digits"}],
            "targets": [{"arch": "resnet18", "dataset": "digits"}],
        }
    )
    job = plan_study(spec, check_mapping=False).jobs[0]
    torch.manual_seed(0)
    assert measure_rate(job, seconds=0.05) > 0
