"""A zoo entry as a run's activation set: ``sparta train --activation-from zoo:NAME[@VERSION]``.

The engine never imports ``zoo`` (docs/architecture.md), so the entry is reached the way
``--save-to-zoo`` reaches ``sparta zoo import``: through the dispatcher. ``sparta zoo info REF --json``
resolves the reference to one version and gives its card (with its threat model); ``sparta zoo export
NAME@VERSION FILE`` writes that version, checked against its recorded sha256, into a temporary file,
which ``transfer.load_activation_set`` reads like any activation-set file. Two commands rather than a
hook: no new interface between the layers, and the export re-checks the entry's integrity exactly as a
user's own ``sparta zoo export`` would.

The card's threat model must be the run's (:func:`check_threat_model`): an activation trained against
one ε transferred into a run attacked at another is a different experiment, so it is refused with both
radii named. A card that records no threat model is taken as it is.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from ..activation_set import ActivationSet, load_activation_set
from ..cli import run_command
from ..threat_model import NORM, format_eps

__all__ = ["ZOO_PREFIX", "activation_set_from_zoo", "check_threat_model", "is_zoo_ref"]

ZOO_PREFIX = "zoo:"
_EPS_REL_TOL = 1e-3  # radii within 0.1 % are the same (0.0314 is 8/255), as `sparta zoo list --eps` matches


def is_zoo_ref(text: str) -> bool:
    """Whether an ``--activation-from`` value names a zoo entry (``zoo:NAME[@VERSION]``)."""
    return text.startswith(ZOO_PREFIX)


def _zoo(argv: list[str]) -> str:
    """``sparta zoo ARGV`` in-process; its stdout. A failure is a ``ValueError`` (zoo errors already are)."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = run_command(["zoo", *argv])
    except SystemExit as exc:  # argparse: no `zoo` command (the package is not installed) or a bad argument
        raise ValueError(
            f"`sparta zoo {' '.join(argv)}` is not available (exit {exc.code}); --activation-from "
            "zoo:NAME needs the zoo package installed (pip install -e .)"
        ) from None
    if code:
        raise ValueError(f"`sparta zoo {' '.join(argv)}` failed (exit {code})")
    return out.getvalue()


def activation_set_from_zoo(ref: str) -> tuple[ActivationSet, dict[str, Any] | None]:
    """The activation set of zoo entry ``zoo:NAME[@VERSION]`` (the newest version when none is given), its
    ``source`` set to ``zoo:NAME@VERSION``, and the card's threat model (``None`` if it records none)."""
    name = ref.removeprefix(ZOO_PREFIX)
    if not name:
        raise ValueError("--activation-from zoo: needs an entry name, e.g. zoo:digits-resnet18-sparta-dw@1")
    card = json.loads(_zoo(["info", name, "--json"]))
    pinned = f"{card['name']}@{card['version']}"
    with tempfile.TemporaryDirectory(prefix="sparta-zoo-") as tmp:
        path = Path(tmp) / "entry.safetensors"
        _zoo(["export", pinned, str(path), "--json"])
        aset = load_activation_set(path)
    aset.source = f"{ZOO_PREFIX}{pinned}"
    threat = card.get("threat_model")
    return aset, threat if isinstance(threat, dict) else None


def check_threat_model(source: str, threat: dict[str, Any] | None, eps: float) -> None:
    """A ``ValueError`` naming both when zoo entry ``source``'s threat model is not L∞ at radius ``eps``
    (the run's evaluation radius); nothing to check when the card records none."""
    if threat is None:
        return
    card_eps, norm = threat.get("eps"), str(threat.get("norm") or NORM)
    same_eps = isinstance(card_eps, int | float) and math.isclose(card_eps, eps, rel_tol=_EPS_REL_TOL)
    if norm == NORM and same_eps:
        return
    theirs = f"{norm} eps {format_eps(card_eps) if isinstance(card_eps, int | float) else '?'}"
    raise ValueError(
        f"{source} records the threat model {theirs} (where its robust accuracy was measured); this run's is {NORM} "
        f"eps {format_eps(eps)}. "
        f"Set --eps to the entry's radius to transfer it, or pick an entry of this threat model "
        f"(sparta zoo list --eps {format_eps(eps)})"
    )
