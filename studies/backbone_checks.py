"""What the planner checks by building backbones: that each job's backbone can be built with the study's
settings and hold its activation, and that each transfer's source sites map onto its target's.

Backbones are built once per (arch, channels, size, width, classes, kwargs), on PyTorch's ``meta`` device
where the model allows it (shapes only: nothing is allocated or initialised), and only their site tables
are kept.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SiteTables", "build_problem", "mapping_problem", "set_mapping_problem"]


class SiteTables:
    """Site tables of the backbones a study builds, built once per (arch, channels, size, width)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], Any] = {}

    def __call__(self, train: dict[str, Any]) -> list[Any]:
        import torch

        from transfer.backbones import create_backbone
        from transfer.engine.data import dataset_info
        from transfer.sites import find_sites

        num_classes = dataset_info(train["dataset"]).num_classes
        model_kwargs = dict(train.get("model_kwargs") or {})
        key = (
            train["arch"],
            train["in_chans"],
            train["input_size"],
            train["width"],
            num_classes,
            repr(sorted(model_kwargs.items())),
        )
        if key not in self._cache:
            arch, c, size, width, _, _ = key
            try:  # shapes only: on the meta device nothing is allocated or initialised
                with torch.device("meta"):
                    model = create_backbone(
                        arch, num_classes=num_classes, in_chans=c, input_size=size, width=width, **model_kwargs
                    )
                sites = find_sites(model.eval(), (c, size, size))
            except ValueError:  # a setting the backbone refuses, with its own message
                raise
            except Exception:  # an op without a meta kernel, or a model that cannot run here: try the CPU
                model = create_backbone(
                    arch, num_classes=num_classes, in_chans=c, input_size=size, width=width, **model_kwargs
                )
                sites = find_sites(model.eval(), (c, size, size))
            self._cache[key] = sites
        return self._cache[key]


def mapping_problem(
    tables: SiteTables, src_train: dict[str, Any], tgt_train: dict[str, Any], policy: str
) -> str | None:
    """Why ``policy`` cannot map the source's sites onto the target's, or None if it can."""
    from transfer.activations import create_activation
    from transfer.mapping import MappingError, map_sites

    name, config = src_train["activation"], src_train["activation_config"]
    shapes: dict[int, dict[str, tuple[int, ...]]] = {}

    def shape(channels: int) -> dict[str, tuple[int, ...]]:
        if channels not in shapes:
            state = create_activation(name, channels, **config).state_dict()
            shapes[channels] = {k: tuple(v.shape) for k, v in state.items()}
        return shapes[channels]

    try:
        source_sites, target_sites = tables(src_train), tables(tgt_train)
    except ValueError:  # a backbone that cannot be built is reported once, as a build problem
        return None
    try:
        map_sites(source_sites, target_sites, policy, lambda s, t: shape(s.channels) == shape(t.channels))
    except MappingError as exc:
        return str(exc)
    return None


def set_mapping_problem(tables: SiteTables, aset: Any, tgt_train: dict[str, Any], policy: str) -> str | None:
    """Why ``policy`` cannot map a stored activation set's sites (a zoo source's) onto the target's, or None:
    a target site takes a source site whose tensors have the shapes of the activation at the target's width."""
    from transfer.activations import create_activation
    from transfer.inject import advised
    from transfer.mapping import MappingError, map_sites

    shapes: dict[int, dict[str, tuple[int, ...]]] = {}

    def fits(src: Any, tgt: Any) -> bool:
        if tgt.channels not in shapes:
            state = create_activation(aset.activation, tgt.channels, **aset.config).state_dict()
            shapes[tgt.channels] = {k: tuple(v.shape) for k, v in state.items()}
        return {k: tuple(v.shape) for k, v in aset.state_for(src.name).items()} == shapes[tgt.channels]

    try:
        target_sites = tables(tgt_train)
    except ValueError:  # reported once, as a build problem
        return None
    try:
        map_sites(aset.sites, target_sites, policy, fits)
    except MappingError as exc:
        return str(advised(exc, aset.activation, aset.config))
    return None


def build_problem(tables: SiteTables, key: str, train: dict[str, Any]) -> str | None:
    from transfer.layouts import layout_problem
    from transfer.sites import InputSizeError

    try:
        sites = tables(train)
    except InputSizeError as exc:
        return f"{key} ({train['arch']} on {train['dataset']}): {exc} (in [train], or in {key}.train)"
    except ValueError as exc:
        return f"{key} ({train['arch']} on {train['dataset']}): {exc}"
    if problem := layout_problem(train["activation"], sites, train["arch"]):  # a token grid it cannot find
        return f"{key} ({train['arch']} on {train['dataset']}): {problem}"
    return None
