"""``README.md`` of an entry, in the style of a Hugging Face model card: YAML front matter (tags,
license, datasets, metrics), then what the entry is, how it was trained, its metrics and how to use it.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .threat import describe_threat, headline_metric, ordered_metric_names, threat_model_of

__all__ = ["command_lines", "render_readme"]

_COMMAND_WIDTH = 100  # the most characters a line of a recorded command takes, its backslash included


def _yaml_list(key: str, items: list[str]) -> list[str]:
    if not items:
        return [f"{key}: []"]
    return [f"{key}:"] + [f"- {json.dumps(str(i))}" for i in items]


def _front_matter(card: dict[str, Any]) -> list[str]:
    tags = ["sparta-transfer", "activation-function", "adversarial-robustness", card["activation"]]
    if card.get("variant"):
        tags.append(f"{card['activation']}-{card['variant']}")
    if card.get("arch"):
        tags.append(str(card["arch"]))
    tags += [t for t in card.get("tags", []) if t not in tags]
    datasets = [str(card["dataset"])] if card.get("dataset") else []
    metrics = ["accuracy"] if card.get("metrics") else []
    lines = ["---", "library_name: sparta-transfer", f"license: {json.dumps(card['license'])}"]
    lines += _yaml_list("tags", list(dict.fromkeys(tags)))
    lines += _yaml_list("datasets", datasets)
    lines += _yaml_list("metrics", metrics)
    return [*lines, "---"]


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        return f"`{json.dumps(v, sort_keys=True)}`"
    return f"`{v}`" if v not in (None, "") else "—"


def command_lines(argv: Sequence[str], width: int = _COMMAND_WIDTH) -> list[str]:
    """``argv`` as shell lines to paste: words quoted by :func:`shlex.quote`, an option kept on one line
    with its value, each line but the last ending in `` \\``, broken so that none passes ``width``
    characters (backslash included) unless one option with its value is longer."""
    groups: list[str] = []
    for word in map(shlex.quote, argv):
        joins_option = groups and groups[-1].startswith("-") and " " not in groups[-1] and not word.startswith("-")
        if joins_option:
            groups[-1] += " " + word
        else:
            groups.append(word)
    lines: list[str] = []
    for group in groups:
        if lines and len(lines[-1]) + len(" " + group + " \\") <= width:
            lines[-1] += " " + group
        else:
            lines.append(group if not lines else "    " + group)
    return [line + " \\" for line in lines[:-1]] + lines[-1:]


def _command_section(card: dict[str, Any]) -> list[str]:
    """The command that produced the entry, when the card records one."""
    command = card.get("command")
    if not command:
        return []
    return ["The command that produced it (the card's `command`):", "", "```bash", *command_lines(command), "```", ""]


def _metrics_table(metrics: dict[str, Any] | None) -> list[str]:
    if not metrics:
        return ["No metrics were recorded for this entry."]
    rows = ["| metric | value |", "|---|---|"]
    rows += [f"| {k} | {_value(metrics[k])} |" for k in ordered_metric_names(sorted(metrics))]
    if "clean" in metrics or headline_metric(metrics, None):
        rows += ["", "Accuracies are in percent on the source dataset's test split (`pgd20`: PGD-20 L∞)."]
    return rows


def _recipe_table(card: dict[str, Any]) -> list[str]:
    rows = ["| field | value |", "|---|---|"]
    for key in ("arch", "dataset", "input_size", "width", "seed", "recipe"):
        rows.append(f"| {key} | {_value(card.get(key))} |")
    train_config = card.get("train_config")
    if isinstance(train_config, dict):
        rows += [f"| train_config.{k} | {_value(v)} |" for k, v in sorted(train_config.items())]
    return rows


def _sites_table(card: dict[str, Any]) -> list[str]:
    by_stage: Counter[tuple[int, int]] = Counter((s["stage"], s["channels"]) for s in card["sites"])
    rows = ["| stage | channels | sites |", "|---|---|---|"]
    rows += [f"| {stage} | {channels} | {n} |" for (stage, channels), n in sorted(by_stage.items())]
    return rows


def _threat_line(card: dict[str, Any]) -> str:
    """The card's first line: the threat model (norm, ε, attack) its robust number was measured in."""
    threat = threat_model_of(card)
    dataset = f" on `{card['dataset']}`" if card.get("dataset") else ""
    if threat is None:
        return f"**Threat model:** not recorded{dataset}: the accuracies below do not state their ε."
    metrics = card.get("metrics") or {}
    attack = headline_metric(metrics, threat)
    robust, clean = metrics.get(attack) if attack else None, metrics.get("clean")
    numbers = ""
    if isinstance(robust, int | float):
        numbers = f": {robust:.2f}% robust" + (f", {clean:.2f}% clean" if isinstance(clean, int | float) else "")
    version = metrics.get("autoattack_version")
    aa = f" (official AutoAttack, pyautoattack {version})" if version else ""
    norm = "L∞" if threat["norm"] == "Linf" else threat["norm"]
    eps = describe_threat({**threat, "attack": None}).rpartition("= ")[2]
    exact = f" ({threat['eps']:.4g})" if eps != f"{threat['eps']:.4g}" else ""
    headline = f", robust accuracy under `{attack}`{aa}" if attack else ", no robust accuracy recorded"
    return f"**Threat model:** {norm}, ε = {eps}{exact}{headline}{dataset}{numbers}."


def _backbone_size(card: dict[str, Any]) -> str:
    """The example backbone's size arguments: the source's width (a ``dw`` or ``full`` Sparta holds one
    parameter per channel, so it fits only the widths it was trained at) and input size."""
    size = f"input_size={card.get('input_size') or 32}"
    return size + (f", width={card['width']}" if isinstance(card.get("width"), int) else "")


def render_readme(card: dict[str, Any]) -> str:
    """The model-card text of one entry, from its card alone."""
    ref = f"{card['name']}@{card['version']}"
    variant = f" (variant `{card['variant']}`)" if card.get("variant") else ""
    source = f" of `{card['arch']}`" if card.get("arch") else ""
    trained = f", trained on `{card['dataset']}`" if card.get("dataset") else ""
    derived = f"\n\nDerived from the zoo entry `{card['derived_from']}`." if card.get("derived_from") else ""
    body = [
        *_front_matter(card),
        "",
        f"# {card['name']} (version {card['version']})",
        "",
        _threat_line(card),
        "",
        f"Trained `{card['activation']}` activation{variant} for the {card['num_sites']} activation sites"
        f"{source}{trained}: {card['num_parameters']} parameters in {card['num_tensors']} tensors, stored "
        "apart from the backbone, whose weights are not part of this entry. It can be injected, frozen, "
        "into another backbone of the same widths (another depth, another dataset); `portable` variants "
        f"fit any width.{derived}",
        *([f"\n{card['description']}"] if card.get("description") else []),
        "",
        "## How it was trained",
        "",
        *_command_section(card),
        *_recipe_table(card),
        "",
        "## Metrics",
        "",
        *_metrics_table(card.get("metrics")),
        "",
        "## Sites",
        "",
        *_sites_table(card),
        "",
        "## How to use",
        "",
        "```python",
        "import transfer",
        "import zoo",
        "",
        f'model = transfer.create_backbone("resnet34", num_classes=10, {_backbone_size(card)})',
        f'report = transfer.inject(model, zoo.Registry().load("{card["name"]}"), policy="stage", freeze=True)',
        "print(report)  # every target site and the source site that fed it",
        "```",
        "",
        f"From the command line: `sparta zoo info {ref}`, `sparta zoo export {ref} FILE.safetensors`.",
        "",
        "## Files",
        "",
        f"- `{card['file']}`: the tensors (safetensors, sha256 `{card['sha256']}`)",
        "- `card.json`: this card as data (schema `" + card["schema"] + "`)",
        "",
        f"Created {card['created']} with sparta-transfer {card['toolkit_version']}.",
        "",
    ]
    return "\n".join(body)
