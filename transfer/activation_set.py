"""Trained activation parameters, apart from any backbone, and their file format.

An :class:`ActivationSet` is what ``extract`` takes out of a model and what ``inject`` puts into
another: the activation's registry name and options, the source site table, and one tensor dict per
site. On disk it is one self-describing ``.safetensors`` file whose header metadata carries everything
but the tensors as JSON, so loading can never run code.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as load_tensors_from_bytes
from safetensors.torch import save_file

from .activations import create_activation
from .atomic import atomic_write, parse_json
from .sites import Site

__all__ = [
    "ActivationSet",
    "save_activation_set",
    "load_activation_set",
    "activation_set_to_header",
    "activation_set_from_parts",
    "parse_safetensors",
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
        """Raise ``ValueError`` unless the set is one that ``inject`` can use as it is: a registered
        activation and options, a site table in forward order, and at every site exactly the tensors
        (names and shapes) that activation has at the site's channel count, all of them finite."""
        names = {s.name for s in self.sites}
        if len(names) != len(self.sites):
            raise ValueError("activation set has duplicate site names")
        for key in self.tensors:
            site, sep, param = key.rpartition(_SEP)
            if not sep or site not in names or not param:
                raise ValueError(f"tensor key {key!r} does not name a site of the table as '<site>/<param>'")
        self._check_site_table()
        self._check_tensors_fit_sites()
        for key, tensor in self.tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise ValueError(
                    f"tensor {key!r} holds {bad} non-finite value(s) (NaN or inf): the run that trained it "
                    "diverged. Use an activation set from a run that finished, or its last good checkpoint"
                )

    def _check_site_table(self) -> None:
        """Sites are listed in forward order (``find_sites``): relative depths rise from 0 to 1."""
        depths = [s.relative_depth for s in self.sites]
        if any(not 0.0 <= d <= 1.0 for d in depths) or depths != sorted(depths):
            raise ValueError(
                f"the site table is not in forward order (relative depths {[round(d, 4) for d in depths]} "
                "must rise from 0 to 1): it was edited or is not from transfer.find_sites"
            )
        bad = [s.name for s in self.sites if s.channels < 1]
        if bad:
            raise ValueError(f"sites {bad[:4]} have no channels in the site table")

    def _check_tensors_fit_sites(self) -> None:
        """Each site holds the tensors a fresh ``activation`` at its channel count has, shape for shape."""
        try:
            fresh: dict[int, dict[str, tuple[int, ...]]] = {}
            for site in self.sites:
                if site.channels not in fresh:
                    module = create_activation(self.activation, site.channels, **self.config)
                    fresh[site.channels] = {k: tuple(v.shape) for k, v in module.state_dict().items()}
                held = {k: tuple(v.shape) for k, v in self.state_for(site.name).items()}
                if held != fresh[site.channels]:
                    raise ValueError(
                        f"the tensors of site {site.name!r} ({_shapes(held)}) do not fit the site table's "
                        f"{site.channels} channels ({_shapes(fresh[site.channels])} expected for "
                        f"{self.activation} {self.config}): the site table or the tensors were edited"
                    )
        except TypeError as exc:  # an option of the wrong type, e.g. kernel_size "seven"
            raise ValueError(
                f"activation {self.activation!r} cannot be built with options {self.config} ({exc})"
            ) from exc


def _shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{k} {list(v)}" for k, v in sorted(shapes.items())) or "no tensors"


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
    if "sparta.activation" not in header:
        raise ValueError(
            f"{origin}: the header lacks 'sparta.activation'; write sets with transfer.save_activation_set"
        )
    config = _header_json(header, "sparta.config", "{}", dict, origin)
    records = _header_json(header, "sparta.sites", None, list, origin)
    try:
        sites = [Site.from_dict(d) for d in records]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{origin}: header field 'sparta.sites' holds a malformed site record ({exc})") from exc
    aset = ActivationSet(
        activation=header["sparta.activation"],
        config=config,
        sites=sites,
        tensors=dict(tensors),
        meta=_header_json(header, "sparta.meta", "{}", dict, origin),
        source=header.get("sparta.source", ""),
    )
    try:
        aset.validate()
    except ValueError as exc:
        raise ValueError(f"{origin}: {exc}") from exc
    return aset


def _header_json(header: dict[str, str], key: str, default: str | None, kind: type, origin: str) -> Any:
    """The JSON value under ``key``, which must be a ``kind`` (a JSON object or array)."""
    if key not in header and default is None:
        raise ValueError(f"{origin}: the header lacks {key!r}; write activation sets with transfer.save_activation_set")
    text = header.get(key, default)
    value = parse_json(text, what=f"{origin}: header field {key!r}")  # depth-bounded: a hostile header cannot recurse
    if not isinstance(value, kind):
        what = "object" if kind is dict else "array"
        raise ValueError(
            f"{origin}: header field {key!r} must be a JSON {what}, got {type(value).__name__} {text[:60]!r}"
        )
    return value


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


def parse_safetensors(data: bytes, origin: str = "<bytes>") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of the bytes of a safetensors file (for a caller that has checked or
    hashed exactly these bytes); bytes that are not one raise ValueError naming ``origin``."""
    try:
        tensors = load_tensors_from_bytes(data)  # validates the header and every tensor's extent
        (length,) = struct.unpack("<Q", data[:8])
        header = parse_json(data[8 : 8 + length].decode("utf-8"), what=f"{origin}: safetensors header")
    except Exception as exc:  # safetensors raises its own error types for every malformed file
        raise ValueError(f"{origin}: not a valid safetensors file ({exc})") from exc
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{origin}: not a valid safetensors file (its __metadata__ is not a str -> str map)")
    return tensors, metadata


def load_activation_set(path: str | os.PathLike[str]) -> ActivationSet:
    """Read a file written by :func:`save_activation_set` (never unpickles)."""
    tensors, header = read_safetensors(path)
    return activation_set_from_parts(tensors, header, origin=str(path))
