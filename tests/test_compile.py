"""``torch.compile`` of injected models: one graph per forward pass, ``PerCallActivation``'s per-call
dispatch included; no recompilation from one call to the next; the outputs and input gradients of eager
mode; and ``sparta train --compile`` (``TrainConfig.compile``) training the compiled model. The graph checks
run Dynamo alone (the ``eager`` backend); two tests run Inductor on tiny models, which takes minutes on two
cores (most of it compiling), so there are only these three.
"""

import copy
import json

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from transfer import PerCallActivation, Sparta, create_backbone, inject
from transfer.cli import run_command


def _distinct_spartas(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every Sparta off the shared Swish initialisation, so that a call dispatched to the wrong
    site's activation changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Sparta):
                m.weight.add_(0.5 * torch.randn(m.weight.shape, generator=gen))
                m.bias.add_(0.5 * torch.randn(m.bias.shape, generator=gen))
    return model


class _SharedActivation(nn.Module):
    """Three convolutions that share one activation module, as dla34 and hrnet do."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_in, 6, 3, padding=1) for c_in in (3, 6, 6))
        self.act = nn.ReLU()
        self.head = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.act(conv(x))
        return self.head(x.mean((2, 3)))


@pytest.mark.slow
def test_dla34_with_per_call_sparta_is_one_graph_and_compiles_once():
    torch.manual_seed(0)
    model = create_backbone("dla34", 10, input_size=32)
    inject(model, "sparta", variant="dw")
    assert any(isinstance(m, PerCallActivation) for m in model.modules())
    model = _distinct_spartas(model).eval()
    x = torch.rand(2, 3, 32, 32)

    def forward(inp: torch.Tensor) -> torch.Tensor:
        return model(inp)

    explained = torch._dynamo.explain(forward)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(forward, backend=counter)
    outputs = [compiled(x) for _ in range(3)]
    assert counter.frame_count == 1  # compiled once, then reused: the call counter never forces a recompile
    expected = model(x)
    for out in outputs:
        torch.testing.assert_close(out, expected)


@pytest.mark.slow
def test_inductor_compiled_model_matches_eager_outputs_and_input_gradients():
    torch.manual_seed(0)
    eager = _SharedActivation()
    inject(eager, "sparta", input_shape=(3, 8, 8))
    assert isinstance(eager.act, PerCallActivation)
    eager = _distinct_spartas(eager)
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled.compile(backend=counter)  # what TrainConfig.compile does to the training model
    frames = []
    for seed in range(3):
        x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed)).requires_grad_()
        out, out_eager = compiled(x), eager(x)
        torch.testing.assert_close(out, out_eager, rtol=1e-4, atol=1e-5)
        (grad,), (grad_eager,) = torch.autograd.grad(out.sum(), x), torch.autograd.grad(out_eager.sum(), x)
        torch.testing.assert_close(grad, grad_eager, rtol=1e-4, atol=1e-5)
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames == [frames[0]] * 3, frames


@pytest.mark.slow
def test_sparta_train_compile_trains_the_compiled_model_to_the_eager_result(tmp_path):
    """``sparta train --compile`` sets ``TrainConfig.compile``, which compiles the model the run trains."""
    tiny = [
        "train",
        "--arch",
        "test_resnet",
        "--dataset",
        "digits",
        "--input-size",
        "8",
        "--activation",
        "sparta",
        "--recipe",
        "pgd",
        "--steps",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--train-subset",
        "64",
        "--test-subset",
        "32",
        "--val-subset",
        "0",
        "--attacks",
        "clean",
        "--device",
        "cpu",
        "--seed",
        "0",
        "--no-progress",
    ]
    torch._dynamo.reset()
    counters.clear()
    assert run_command([*tiny, "--out", str(tmp_path / "eager")]) == 0
    assert not counters["stats"]["unique_graphs"]
    assert run_command([*tiny, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    assert counters["stats"]["unique_graphs"] >= 2  # at least the attack's graph and the training step's
    runs = {
        run: {
            name: json.loads((tmp_path / run / f"{name}.json").read_text()) for name in ("config", "history", "metrics")
        }
        for run in ("eager", "compiled")
    }
    assert runs["compiled"]["config"] == {**runs["eager"]["config"], "compile": True}
    losses = [runs[run]["history"][0]["train_loss"] for run in ("eager", "compiled")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    clean = [runs[run]["metrics"]["clean"] for run in ("eager", "compiled")]
    assert clean[1] == pytest.approx(clean[0], abs=100 / 32)  # at most one test image apart
