"""A zoo entry as a Hugging Face–style model folder, and back.

``export_hf_folder`` writes three files, ready for ``huggingface_hub.upload_folder`` (or ``hf upload``):

- ``activation.safetensors``: the entry exactly as ``sparta zoo export`` writes it (tensors, the
  activation-set header and the card embedded), so the file alone is also importable;
- ``README.md``: the entry's model card (YAML front matter the Hub reads: ``library_name``, license,
  tags, datasets; the threat model in its first lines);
- ``config.json``: ``format`` (``sparta-zoo-hf/1``), the fields a reader wants at a glance (activation,
  arch, dataset, threat model, metrics), the sha256 of ``activation.safetensors`` and the whole card.

``read_hf_folder`` checks a folder (a local export, or one fetched with ``hf download``) before anything
is imported: the tensor file against ``config.json``'s sha256, and ``config.json``'s card against the
card embedded in the tensor file. Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfer.atomic import write_text

from .card import TENSOR_FILE, validate_card
from .errors import IntegrityError, ZooError
from .files import read_untrusted, sha256_file
from .readme import render_readme
from .threat import threat_model_of

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["HF_FORMAT", "CONFIG_FILE", "README_FILE", "export_hf_folder", "is_hf_folder", "read_hf_folder"]

HF_FORMAT = "sparta-zoo-hf/1"
CONFIG_FILE = "config.json"
README_FILE = "README.md"
_CARD_KEY = "sparta.zoo.card"  # zoo.registry.EXPORT_CARD_KEY (not imported: the registry imports this module)
_HUB_HINT = """
## Getting this entry from the Hugging Face Hub

```bash
hf download USER/REPO --local-dir DIR   # any folder written by `sparta zoo export NAME DIR --format hf`
sparta zoo import DIR                    # checks the files, then stores the entry in the local zoo
```
"""


def export_hf_folder(
    registry: Registry, name: str, path: str | os.PathLike[str], version: int | str | None = None,
    *, overwrite: bool = False,
) -> Path:
    """Write ``name@version`` of ``registry`` into the folder ``path`` (created if missing; its parent
    must exist). A folder that already holds files is refused unless ``overwrite``, which replaces the
    three files and leaves anything else there (a clone's ``.git``) alone. Returns the folder."""
    ref = registry.resolve(name, version)
    card = registry.info(ref.name, ref.version)
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ZooError(f"{out} is a file; `--format hf` writes a folder: give a new or empty folder")
    if not out.parent.is_dir():
        raise ZooError(f"{path}: directory {out.parent} does not exist; create it first")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ZooError(f"{out} is not empty; give a new or empty folder, or overwrite its files (--force)")
    out.mkdir(exist_ok=True)
    tensor_file = registry.export(ref.name, out / TENSOR_FILE, ref.version, overwrite=True)
    write_text(out / README_FILE, render_readme(card) + _HUB_HINT)
    config = {
        "format": HF_FORMAT,
        "library_name": "sparta-transfer",
        "ref": str(ref),
        **{k: card.get(k) for k in ("activation", "variant", "config", "arch", "dataset", "input_size", "width")},
        "threat_model": threat_model_of(card),
        "metrics": card.get("metrics"),
        "files": {TENSOR_FILE: {"sha256": sha256_file(tensor_file)}},
        "card": card,
    }
    write_text(out / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")  # last: marks it complete
    return out


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder whose ``config.json`` names this format (a training run's folder has a
    ``config.json`` too: its TrainConfig)."""
    config = Path(path) / CONFIG_FILE
    try:
        return config.is_file() and HF_FORMAT in config.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def read_hf_folder(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The checked tensor file of an HF-style folder and the card its ``config.json`` carries.

    Raises :class:`ZooError` for a folder that is not such an export and :class:`IntegrityError` when
    its files do not belong together (edited, truncated or mixed from two exports)."""
    folder = Path(path).expanduser()
    config_path = folder / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ZooError(f"{config_path}: unreadable ({exc}); is {folder} a folder written by "
                       "`sparta zoo export NAME DIR --format hf`?") from exc
    if not isinstance(config, dict) or config.get("format") != HF_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ZooError(f"{config_path}: not a sparta-transfer export (format {found!r}, expected {HF_FORMAT!r}); "
                       f"give the .safetensors file itself, or a folder written by `sparta zoo export --format hf`")
    tensor_file = folder / TENSOR_FILE
    if not tensor_file.is_file():
        raise IntegrityError(f"{folder}: {TENSOR_FILE} is missing (the download or copy is incomplete)")
    expected = ((config.get("files") or {}).get(TENSOR_FILE) or {}).get("sha256")
    actual = sha256_file(tensor_file)
    if actual != expected:
        raise IntegrityError(f"{tensor_file}: sha256 {actual} does not match {CONFIG_FILE}'s {expected}; the file "
                             "is truncated, corrupted or from another export. Nothing was imported")
    card = validate_card(config.get("card"), f"{config_path} (card)")
    _, header = read_untrusted(tensor_file)
    try:
        embedded = json.loads(header.get(_CARD_KEY, "null"))
    except json.JSONDecodeError as exc:
        raise ZooError(f"{tensor_file}: the embedded zoo card is not valid JSON ({exc})") from exc
    if embedded is None or validate_card(embedded, f"{tensor_file} (embedded card)") != card:
        raise IntegrityError(f"{folder}: {CONFIG_FILE}'s card differs from the one embedded in {TENSOR_FILE}; "
                             "the folder was edited after export. Export it again")
    return tensor_file, card
