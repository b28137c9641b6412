"""What ``Registry.import_file`` reads, checked before anything is stored.

A source is one of:

- a file written by ``Registry.export`` (its card comes along and must describe its tensors);
- a plain activation-set file, such as a training run's ``activation.safetensors``;
- a run directory holding one (its ``config.json`` is the run's TrainConfig);
- a folder written by ``export(..., format="hf")`` (``zoo.hf``): its ``config.json`` must parse and
  the tensor file's sha256 match the one recorded there.

A folder whose ``config.json`` cannot be read (cut short, a FIFO, a link, nested too deep) is refused
rather than guessed at: it may be a half-copied Hugging Face export, whose checks would then be skipped.
Every file is read through ``zoo.files`` (regular files only, safetensors only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transfer.activation_set import ActivationSet, activation_set_from_parts

from .card import COMPUTED_FIELDS, PROVENANCE_FIELDS, TENSOR_FILE, check_card_matches, embedded_card
from .errors import ZooError
from .files import read_json_file, read_untrusted
from .hf import CONFIG_FILE, is_hf_config, read_hf_folder
from .names import derive_name

__all__ = ["ImportSource", "read_import_source"]


@dataclass
class ImportSource:
    """An activation set to store, with what its exported card (if any) carries over: the fields to keep
    (``overrides``), the creation time, and the name it was exported under (else one derived from it)."""

    aset: ActivationSet
    default_name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    created: str | None = None


def read_import_source(path: str | os.PathLike[str]) -> ImportSource:
    """The checked activation set in ``path`` (a file or a folder, see the module docstring)."""
    src = Path(path).expanduser()
    if src.is_dir():
        config_path = src / CONFIG_FILE
        if os.path.lexists(config_path):
            config = _folder_config(config_path, src)
            if is_hf_config(config, str(config_path)):
                tensors, header, _ = read_hf_folder(src, config)
                return _source(tensors, header, str(src / TENSOR_FILE))
        if not os.path.lexists(src / TENSOR_FILE):
            raise FileNotFoundError(f"{src} is a directory without an {TENSOR_FILE}; give the file itself")
        src = src / TENSOR_FILE
    tensors, header = read_untrusted(src)
    return _source(tensors, header, str(src))


def _folder_config(config_path: Path, folder: Path) -> Any:
    try:
        return read_json_file(config_path)
    except ZooError as exc:
        raise ZooError(
            f"{exc}; {folder} may be a Hugging Face export copied or downloaded only in part (copy it again), "
            "or give the .safetensors file itself. Nothing was imported"
        ) from None


def _source(tensors: dict[str, torch.Tensor], header: dict[str, str], origin: str) -> ImportSource:
    aset = activation_set_from_parts(tensors, header, origin=origin)
    card = embedded_card(header, origin)
    if card is None:
        meta = aset.meta
        return ImportSource(
            aset, derive_name(meta.get("dataset"), meta.get("arch"), aset.activation, aset.config.get("variant"))
        )
    check_card_matches(card, aset, origin)
    aset.meta, aset.source = dict(card["meta"]), ""
    # provenance travels in the card's meta; the rest (derived_from, license, tags, ...) as fields
    overrides = {k: v for k, v in card.items() if k not in COMPUTED_FIELDS and k not in PROVENANCE_FIELDS}
    return ImportSource(aset, card["name"], overrides, card["created"])
