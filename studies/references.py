"""Which row of a study a difference is taken to: ReLU by default, SiLU as the second reference, or any
baseline activation or row label a user names."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

__all__ = ["REFERENCES", "REFERENCE_ROW", "present_references", "reference_row"]

REFERENCE_ROW = "ReLU"
# The reference rows a study reports differences to: ReLU, and SiLU — Sparta's initialisation, the
# control that separates spatial attention from smoothness (Xie et al., smooth adversarial training).
REFERENCES = ("relu", "silu")


def _baseline_row(results: pd.DataFrame, activation: str) -> str | None:
    """The row of the baseline jobs that train ``activation`` fresh (``sparta``: Sparta in place)."""
    if "activation" not in results.columns:
        return None
    match = results["activation"].astype(str).str.lower() == activation.lower()
    if "kind" in results.columns:
        match &= results["kind"] == "baseline"
    rows = [str(r) for r in dict.fromkeys(results.loc[match, "row"])]
    # configurations of one activation (Sparta 1×1, Sparta full, …) label it with more words: the plain one
    return min(rows, key=len) if rows else None


def reference_row(results: pd.DataFrame, reference: str | None = None) -> str | None:
    """The row label differences are taken to. ``reference`` is a row label (``SiLU``) or the activation
    of a baseline row (``relu``, ``silu``, ``pssilu``), case-insensitive; ``None`` means ReLU if the
    table has it (else no reference). A ``reference`` the table has no row for is a ``ValueError``."""
    labels = [str(r) for r in dict.fromkeys(results["row"])]
    wanted = REFERENCE_ROW if reference is None else str(reference).strip()
    by_case = {label.lower(): label for label in labels}
    found = by_case.get(wanted.lower()) or _baseline_row(results, wanted)
    if found is None and reference is not None:
        raise ValueError(
            f"reference row {reference!r} is not in the study; its rows are: {', '.join(labels)} "
            f"(give a row label or a baseline activation such as relu or silu, and list it under baselines)"
        )
    return found


def present_references(results: pd.DataFrame, references: Sequence[str] = REFERENCES) -> list[str]:
    """The ``references`` (activation names or row labels) the table has a row for, in order."""
    present = []
    for ref in references:
        try:
            reference_row(results, ref)
        except ValueError:
            continue
        present.append(ref)
    return present
