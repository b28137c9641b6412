"""A zoo entry as a Hugging Face–style model folder, and back.

``write_hf_folder`` writes three files, ready for ``huggingface_hub.upload_folder`` (or ``hf upload``):

- ``activation.safetensors``: the entry exactly as ``sparta zoo export`` writes it (tensors, the
  activation-set header and the card embedded), so the file alone is also importable;
- ``README.md``: the entry's model card (YAML front matter the Hub reads: ``library_name``, license,
  tags, datasets; the threat model in its first lines);
- ``config.json``: ``format`` (``sparta-zoo-hf/1``), the fields a reader wants at a glance (activation,
  arch, dataset, threat model, metrics), the sha256 of ``activation.safetensors`` and the whole card.

``read_hf_folder`` checks a folder (a local export, or one fetched with ``hf download``) before anything
is imported: the tensor file's bytes against ``config.json``'s sha256 (the very bytes then parsed), and
``config.json``'s card against the card embedded in the tensor file. Nothing here touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from transfer.activation_set import ActivationSet, save_activation_set
from transfer.atomic import write_json, write_text

from .card import README_FILE, TENSOR_FILE, embedded_card, export_header, validate_card
from .errors import IntegrityError, ZooError
from .files import parse_untrusted, regular_file_bytes, sha256_bytes, sha256_file
from .readme import render_readme
from .threat import threat_model_of

__all__ = ["HF_FORMAT", "CONFIG_FILE", "is_hf_config", "read_hf_folder", "write_hf_folder"]

HF_FORMAT = "sparta-zoo-hf/1"
CONFIG_FILE = "config.json"
_HUB_HINT = """
## Getting this entry from the Hugging Face Hub

```bash
hf download USER/REPO --local-dir DIR   # any folder written by `sparta zoo export NAME DIR --format hf`
sparta zoo import DIR                    # checks the files, then stores the entry in the local zoo
```
"""


def write_hf_folder(
    path: str | os.PathLike[str], aset: ActivationSet, card: dict[str, Any], *, overwrite: bool = False
) -> Path:
    """Write the entry ``card`` describes (its activation set ``aset``) into the folder ``path`` (created
    if missing; its parent must exist). A folder that already holds files is refused unless ``overwrite``,
    which replaces the three files and leaves anything else there (a clone's ``.git``) alone."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ZooError(f"{out} is a file; `--format hf` writes a folder: give a new or empty folder")
    if not out.parent.is_dir():
        raise ZooError(f"{path}: directory {out.parent} does not exist; create it first")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ZooError(f"{out} is not empty; give a new or empty folder, or overwrite its files (--force)")
    out.mkdir(exist_ok=True)
    tensor_file = save_activation_set(aset, out / TENSOR_FILE, extra=export_header(card))
    write_text(out / README_FILE, render_readme(card) + _HUB_HINT)
    config = {
        "format": HF_FORMAT,
        "library_name": "sparta-transfer",
        "ref": f"{card['name']}@{card['version']}",
        **{k: card.get(k) for k in ("activation", "variant", "config", "arch", "dataset", "input_size", "width")},
        "threat_model": threat_model_of(card),
        "metrics": card.get("metrics"),
        "files": {TENSOR_FILE: {"sha256": sha256_file(tensor_file)}},
        "card": card,
    }
    write_json(out / CONFIG_FILE, config, sort_keys=True)  # last: marks the folder complete
    return out


def is_hf_config(config: Any, origin: str) -> bool:
    """Whether a folder's parsed ``config.json`` is this export's (a training run's folder has a
    ``config.json`` too: its TrainConfig); a later format of this export is refused with what to do."""
    found = config.get("format") if isinstance(config, dict) else None
    if isinstance(found, str) and found.startswith("sparta-zoo-hf/") and found != HF_FORMAT:
        raise ZooError(
            f"{origin}: export format {found!r} is newer than this toolkit reads ({HF_FORMAT!r}); "
            "upgrade sparta-transfer"
        )
    return found == HF_FORMAT


def read_hf_folder(
    folder: Path, config: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any]]:
    """The tensors, header and card of the HF-style ``folder`` whose parsed ``config.json`` is ``config``.

    Raises :class:`IntegrityError` when its files do not belong together (edited, truncated, or mixed
    from two exports) and :class:`ZooError` for a tensor file that is a link or a special file."""
    config_path, tensor_file = folder / CONFIG_FILE, folder / TENSOR_FILE
    try:
        data = regular_file_bytes(tensor_file)
    except FileNotFoundError:
        raise IntegrityError(
            f"{folder}: {TENSOR_FILE} is missing (the download or copy is incomplete); nothing was imported"
        ) from None
    expected = ((config.get("files") or {}).get(TENSOR_FILE) or {}).get("sha256")
    actual = sha256_bytes(data)
    if actual != expected:
        raise IntegrityError(
            f"{tensor_file}: sha256 {actual} does not match {CONFIG_FILE}'s {expected}; the file "
            "is truncated, corrupted or from another export. Nothing was imported"
        )
    card = validate_card(config.get("card"), f"{config_path} (card)")
    tensors, header = parse_untrusted(data, str(tensor_file))
    if embedded_card(header, str(tensor_file)) != card:
        raise IntegrityError(
            f"{folder}: {CONFIG_FILE}'s card differs from the one embedded in {TENSOR_FILE}; "
            "the folder was edited after export. Export it again"
        )
    return tensors, header, card
