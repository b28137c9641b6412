"""Starting a model from a local checkpoint: :func:`load_init_weights` (``TrainConfig.init_from``,
``sparta train --init-from PATH``).

The checkpoint is a timm or plain state dict: a ``.safetensors`` file, or a torch file read with
``torch.load(weights_only=True)`` (never unpickled); a dict holding it under ``"state_dict"`` or
``"model"`` is unwrapped, and a ``module.`` prefix on every key (``DataParallel``) dropped. Every tensor
of the model must come from it, except those that cannot, each reported with why:

- the classifier (timm's ``get_classifier()``, else the model's last ``nn.Linear``) keeps its fresh
  initialisation when its shape differs (another number of classes) or the checkpoint has none;
- the modules ``create_backbone``'s small-input stem built afresh (ResNet: ``conv1``, 3×3 stride 1 instead
  of timm's 7×7 stride 2; ``transfer.backbones.small_input_stem_modules``) keep theirs, and the
  checkpoint's stem tensors are left unused — ``model_kwargs = {"cifar_stem": false}`` keeps timm's stem
  and loads it;
- the normalisation buffers ``pixel_mean``/``pixel_std`` are the model's own, injected activations are
  fresh, and a BatchNorm step counter (``num_batches_tracked``) absent from the checkpoint starts at 0.

Any other missing, unexpected or differently shaped tensor is a ``ValueError`` naming them. What was
loaded and what re-initialised is the :class:`InitReport` (``train.log`` and ``metrics.json``).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .activations import Activation
from .backbones import small_input_stem_modules

__all__ = ["InitReport", "load_init_weights", "read_state_dict"]

_OWN_BUFFERS = ("pixel_mean", "pixel_std")  # create_backbone's input normalisation: always the model's


@dataclass
class InitReport:
    """What :func:`load_init_weights` did: tensors loaded, kept fresh (with why), and checkpoint tensors unused."""

    path: str
    sha256: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: dict[str, str] = field(default_factory=dict)  # model key → why it kept its fresh init
    unused: dict[str, str] = field(default_factory=dict)  # checkpoint key → why it was not loaded

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "loaded": _modules(self.loaded),
            "reinitialised": dict(self.reinitialised),
            "unused": dict(self.unused),
        }

    def __str__(self) -> str:
        lines = [
            f"init_from {self.path} (sha256 {self.sha256[:12]}): loaded {len(self.loaded)} tensors of "
            f"{len(_modules(self.loaded))} modules"
        ]
        lines += [f"  re-initialised {k}: {why}" for k, why in self.reinitialised.items()]
        lines += [f"  not loaded {k}: {why}" for k, why in self.unused.items()]
        return "\n".join(lines)


def _modules(keys: list[str]) -> list[str]:
    """The module paths of state-dict keys, in order, each once."""
    return list(dict.fromkeys(k.rpartition(".")[0] or k for k in keys))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file (module docstring), on the CPU, never unpickling objects."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"init_from {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"init_from {path}: holds objects other than tensors and plain values, which are never "
            "loaded (unpickling runs code); save model.state_dict() (or as .safetensors)"
        ) from exc
    except Exception as exc:  # torch and safetensors raise several types for foreign or truncated files
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ValueError(f"init_from {path}: not a readable checkpoint ({reason})") from exc
    while isinstance(state, dict) and not _is_state_dict(state):
        inner = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not _is_state_dict(state):
        raise ValueError(f"init_from {path}: not a state dict of tensors (nor one under 'state_dict' or 'model')")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _is_state_dict(state: dict[Any, Any]) -> bool:
    return bool(state) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def _classifier(model: nn.Module) -> str | None:
    """The classifier's module path: timm's ``get_classifier()``, else the last ``nn.Linear``; None if neither."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    names = {id(m): n for n, m in model.named_modules()}
    if isinstance(head, nn.Module) and id(head) in names and any(True for _ in head.parameters()):
        return names[id(head)]
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else None


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def load_init_weights(model: nn.Module, path: str | Path) -> InitReport:
    """Copy the tensors of checkpoint ``path`` into ``model`` (module docstring) and report what was
    loaded and what kept its fresh initialisation; nothing is changed when the checkpoint does not fit."""
    state = read_state_dict(path)
    own = model.state_dict()
    head = _classifier(model)
    classifier = (head,) if head else ()
    stem = small_input_stem_modules(model)
    activations = tuple(n for n, m in model.named_modules() if isinstance(m, Activation))
    # modules without tensors of their own (timm's nn.ReLU, …): what a checkpoint holds below them is the
    # activation some other run injected there, not part of this backbone
    bare = {n for n, m in model.named_modules() if n and next(iter(m.state_dict()), None) is None}
    report = InitReport(str(path), _sha256(Path(path).expanduser()))
    missing, unexpected, misshapen = [], [], []
    for key, tensor in state.items():
        if key in _OWN_BUFFERS:
            report.unused[key] = "the model's own input normalisation is kept"
        elif key not in own:
            if _under(key, stem):
                report.unused[key] = "timm's stem, replaced by the small-input stem"
            elif any(".".join(key.split(".")[:i]) in bare for i in range(1, key.count(".") + 1)):
                report.unused[key] = "a trained activation's parameter: the run puts in its own activation"
            else:
                unexpected.append(key)
        elif tuple(tensor.shape) != tuple(own[key].shape):
            if _under(key, classifier + stem):
                role = "classifier" if _under(key, classifier) else "small-input stem"
                report.reinitialised[key] = (
                    f"{role}: the checkpoint's shape {tuple(tensor.shape)} differs from the "
                    f"model's {tuple(own[key].shape)}"
                )
            else:
                misshapen.append(f"{key} {tuple(tensor.shape)} vs the model's {tuple(own[key].shape)}")
        else:
            report.loaded.append(key)
    for key in own:
        if key in state or key in _OWN_BUFFERS:
            continue
        if _under(key, classifier):
            report.reinitialised[key] = "classifier: not in the checkpoint"
        elif _under(key, stem):
            report.reinitialised[key] = "small-input stem (3×3 stride 1): built afresh for small inputs"
        elif _under(key, activations):
            report.reinitialised[key] = "injected activation: not in the checkpoint"
        elif key.endswith(".num_batches_tracked"):
            report.reinitialised[key] = "BatchNorm step counter: not in the checkpoint, starts at 0"
        else:
            missing.append(key)
    if missing or unexpected or misshapen:
        raise ValueError(
            f"init_from {path} does not fit this model: "
            + "; ".join(
                f"{what} ({len(keys)}): {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", misshapen))
                if keys
            )
            + ". Use a checkpoint of the same architecture (and width), or set arch/width/model_kwargs to match it"
        )
    with torch.no_grad():
        for key in report.loaded:
            own[key].copy_(state[key])
    return report


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
