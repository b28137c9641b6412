"""Sparta gate maps: where a trained Sparta lets activations through.

For a model with Sparta sites, the attention ``A = σ(gate(X))`` (``docs/sparta.md`` §2), averaged over
channels, is shown at one site per stage — the last Sparta site of the stage, the deepest view the
stage has — for a few test images. Each figure row is one image: the image itself, then one map per
stage, all on one colour scale [0, 1] (0 blocks the activation, 1 passes it).

The input of every chosen Sparta is captured with a forward hook on that module (an injected
:class:`~transfer.PerCallActivation` calls its per-call modules, so hooking the inner module picks
the right call), and ``Sparta.gate`` is applied to it after the pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from transfer.activations import Sparta
from transfer.engine.config import TrainConfig
from transfer.inject import model_sites
from transfer.model_info import model_device, sparta_info
from transfer.sites import Site, module_at

from ._figure import new_figure

__all__ = ["GATE_CMAP", "GateMaps", "stage_gate_sites", "compute_gate_maps", "gate_figure", "run_gate_maps"]

GATE_CMAP = "magma"
_PANEL = 1.55  # inches per map


@dataclass
class GateMaps:
    """Channel-mean gate maps of ``images`` at one Sparta site per stage."""

    images: torch.Tensor  # [N, C, H, W] in [0, 1]
    labels: list[str]  # one caption per image
    sites: list[Site]  # one per stage, in stage order
    maps: list[torch.Tensor]  # per site: [N, h, w] in [0, 1]


def stage_gate_sites(model: nn.Module) -> list[tuple[Site, Sparta]]:
    """The last Sparta site of every stage, with its module, in stage order (empty without Sparta)."""
    last: dict[int, tuple[Site, Sparta]] = {}
    for site in model_sites(model):
        module = module_at(model, site)
        if isinstance(module, Sparta) and len(site.spatial) == 2:
            last[site.stage] = (site, module)
    return [last[s] for s in sorted(last)]


@torch.no_grad()
def compute_gate_maps(model: nn.Module, images: torch.Tensor, labels: Sequence[str] | None = None) -> GateMaps:
    """Run ``images`` through ``model`` (eval mode, restored after) and take the channel-mean gate map
    at one Sparta site per stage. An error if the model has no spatial Sparta site."""
    chosen = stage_gate_sites(model)
    if not chosen:
        raise ValueError("the model has no Sparta activation at a spatial site, so there is no gate to show")
    inputs: dict[int, torch.Tensor] = {}

    def capture(index: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            inputs[index] = args[0].detach()

        return hook

    handles = [module.register_forward_hook(capture(i)) for i, (_, module) in enumerate(chosen)]
    was_training = model.training
    model.eval()
    try:
        model(images.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    maps = [chosen[i][1].gate(inputs[i]).mean(dim=1).clamp(0, 1).cpu() for i in range(len(chosen))]
    captions = list(labels) if labels is not None else [f"image {i}" for i in range(len(images))]
    return GateMaps(images=images.cpu(), labels=captions, sites=[s for s, _ in chosen], maps=maps)


def gate_figure(gm: GateMaps, title: str = "") -> Figure:
    """Rows = images; columns = the image, then the gate map of each stage; one colour bar in [0, 1]."""
    n, cols = len(gm.images), 1 + len(gm.maps)
    fig = new_figure(0.9 + cols * _PANEL, 0.8 + n * _PANEL, layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, cols, squeeze=False))
    mappable = None
    for i in range(n):
        img = gm.images[i].permute(1, 2, 0).numpy()
        ax = axes[i, 0]
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        ax.set_ylabel(gm.labels[i], fontsize=8)
        for j, amap in enumerate(gm.maps, start=1):
            ax = axes[i, j]
            mappable = ax.imshow(amap[i].numpy(), cmap=GATE_CMAP, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xlabel(f"mean {float(amap[i].mean()):.2f}", fontsize=7, labelpad=2)
    axes[0, 0].set_title("input", fontsize=8)
    for j, site in enumerate(gm.sites, start=1):
        hw = "×".join(map(str, site.spatial))
        axes[0, j].set_title(f"stage {site.stage}\n{site.name}\n{site.channels} ch, {hw}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    cbar = fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8, ticks=[0, 0.25, 0.5, 0.75, 1])
    cbar.set_label("gate A = σ(gate(X)), mean over channels", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def run_gate_maps(run_dir: Path | str, n_images: int = 4, *, seed: int = 0) -> Figure:
    """Gate maps of a trained run directory: the model from ``load_run``, ``n_images`` test images of
    its dataset at its input size (one per class first), each captioned with its true and predicted class."""
    from transfer.engine.training import load_run  # the training engine is only needed for this figure

    run_dir = Path(run_dir)
    model, config = load_run(run_dir)
    images, labels, classes = _sample_images(model, config, n_images, seed)
    gm = compute_gate_maps(model, images)
    with torch.no_grad():
        pred = model.eval()(images).argmax(dim=1).tolist()

    def name(k: int) -> str:
        return str(classes[k]) if k < len(classes) else str(k)

    gm.labels = [f"true: {name(t)}\npred: {name(p)}" for t, p in zip(labels, pred, strict=True)]
    return gate_figure(gm, title=f"Sparta gate maps — {run_dir.name}: {config.arch} on {config.dataset}")


def _sample_images(
    model: nn.Module, config: TrainConfig, n: int, seed: int
) -> tuple[torch.Tensor, list[int], tuple[str, ...]]:
    """``n`` test images at the model's input size (one per class first), their labels, the class names."""
    from transfer.engine.data import create_dataset

    c, h, _ = sparta_info(model).input_shape
    data = create_dataset(
        config.dataset, "test", input_size=h, in_chans=c, subset=max(n, 10), seed=seed, data_dir=config.data_dir
    )
    picked: list[int] = []
    for cls in range(data.num_classes):
        hits = (data.labels == cls).nonzero().flatten().tolist()
        if hits and len(picked) < n:
            picked.append(hits[0])
    picked += [i for i in range(len(data)) if i not in picked][: n - len(picked)]
    return data.images[picked], [int(data.labels[i]) for i in picked], tuple(data.info.classes)
