"""Trained activation parameters, apart from any backbone, and their file format.

An :class:`ActivationSet` is what ``extract`` takes out of a model and what ``inject`` puts into
another: the activation's registry name and options, the source site table, and one tensor dict per
site. On disk it is one self-describing ``.safetensors`` file whose header metadata carries everything
but the tensors as JSON, so loading can never run code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_write
from .sites import Site

__all__ = [
    "ActivationSet",
    "save_activation_set",
    "load_activation_set",
    "activation_set_to_header",
    "activation_set_from_parts",
    "FORMAT_VERSION",
]

FORMAT_VERSION = "sparta-activation-set/1"
_SEP = "/"


@dataclass
class ActivationSet:
    """Activation parameters of every site of one model, without the backbone."""

    activation: str
    config: dict[str, Any]
    sites: list[Site]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no site {name!r} in this activation set (sites: {[s.name for s in self.sites]})")

    def state_for(self, site_name: str) -> dict[str, torch.Tensor]:
        """The ``state_dict`` of the activation at ``site_name``."""
        prefix = site_name + _SEP
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values() if t.is_floating_point())

    def validate(self) -> None:
        """Raise ``ValueError`` if tensors and site table disagree."""
        names = {s.name for s in self.sites}
        if len(names) != len(self.sites):
            raise ValueError("activation set has duplicate site names")
        for key in self.tensors:
            site, sep, param = key.rpartition(_SEP)
            if not sep or site not in names or not param:
                raise ValueError(f"tensor key {key!r} does not name a site of the table as '<site>/<param>'")


def tensor_key(site_name: str, param: str) -> str:
    return f"{site_name}{_SEP}{param}"


def activation_set_to_header(aset: ActivationSet) -> dict[str, str]:
    """The safetensors metadata (str → str) describing ``aset``."""
    return {
        "sparta.format": FORMAT_VERSION,
        "sparta.activation": aset.activation,
        "sparta.config": json.dumps(aset.config, sort_keys=True),
        "sparta.sites": json.dumps([s.to_dict() for s in aset.sites]),
        "sparta.meta": json.dumps(aset.meta, sort_keys=True, default=str),
        "sparta.source": aset.source,
    }


def activation_set_from_parts(
    tensors: dict[str, torch.Tensor], header: dict[str, str], origin: str = "<memory>"
) -> ActivationSet:
    """Rebuild an :class:`ActivationSet` from tensors and header metadata, validating both."""
    fmt = header.get("sparta.format")
    if fmt != FORMAT_VERSION:
        raise ValueError(
            f"{origin}: not a sparta activation set (format {fmt!r}, expected {FORMAT_VERSION!r}); "
            "write one with transfer.save_activation_set or `sparta train`"
        )
    try:
        aset = ActivationSet(
            activation=header["sparta.activation"],
            config=json.loads(header.get("sparta.config", "{}")),
            sites=[Site.from_dict(d) for d in json.loads(header["sparta.sites"])],
            tensors=dict(tensors),
            meta=json.loads(header.get("sparta.meta", "{}")),
            source=header.get("sparta.source", ""),
        )
    except (KeyError, json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{origin}: malformed activation-set metadata ({exc})") from exc
    aset.validate()
    return aset


def save_activation_set(aset: ActivationSet, path: str | os.PathLike[str], extra: dict[str, str] | None = None) -> Path:
    """Write ``aset`` atomically (temporary file, then rename) as one ``.safetensors`` file."""
    aset.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = activation_set_to_header(aset)
    header.update(extra or {})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in aset.tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file; a file that is not one raises ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # safetensors raises its own error types for every malformed file
        raise ValueError(f"{path}: not a valid safetensors file ({exc})") from exc
    return tensors, header


def load_activation_set(path: str | os.PathLike[str]) -> ActivationSet:
    """Read a file written by :func:`save_activation_set` (never unpickles)."""
    tensors, header = read_safetensors(path)
    return activation_set_from_parts(tensors, header, origin=str(path))
