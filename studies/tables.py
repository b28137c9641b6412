"""Transfer matrices as the tables a paper needs: Markdown, LaTeX or CSV, with their intervals and verdicts
(``sparta study matrix DIR --format md|latex|csv``), and per-class accuracy from the per-image bits
(``--per-class``).

Cells read as the printed matrices do: ``mean ± std`` over seeds, or with ``diff`` the paired difference to
the reference, its 95 % interval and its verdict (``studies.stats``). Labels are escaped for the format:
``|`` in Markdown; LaTeX's special characters and the Unicode the labels use (← × ± † ε β₀ ≈ ∞).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .matrix import NOT_CONVERGED_MARK, TransferMatrix

__all__ = ["FORMATS", "format_table", "latex_escape", "per_class_accuracy", "per_class_table", "render"]

FORMATS = ("text", "md", "latex", "csv")
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip
_LATEX_UNICODE = {
    "←": r"$\leftarrow$", "→": r"$\rightarrow$", "×": r"$\times$", "±": r"$\pm$", "†": r"$^\dagger$",
    "ε": r"$\varepsilon$", "β": r"$\beta$", "₀": r"$_0$", "≈": r"$\approx$", "∞": r"$\infty$", "−": "-",
    "Δ": r"$\Delta$",
}  # fmt: skip


def latex_escape(text: str) -> str:
    """``text`` safe inside a LaTeX table cell."""
    return "".join(_LATEX_UNICODE.get(ch, _LATEX_SPECIAL.get(ch, ch)) for ch in str(text))


def _md_escape(text: str) -> str:
    return str(text).replace("|", r"\|")


def render(cells: pd.DataFrame, fmt: str, caption: str) -> str:
    """A frame of cell texts (index: row labels) as a ``text``, ``md``, ``latex`` or ``csv`` table."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "text":
        return f"{caption}:\n{cells.to_string()}\n"
    if fmt == "csv":
        return f"# {caption}\n{cells.to_csv()}"
    rows = [(str(r), [str(v) for v in cells.loc[r]]) for r in cells.index]
    if fmt == "md":
        head = "| row | " + " | ".join(_md_escape(c) for c in cells.columns) + " |"
        rule = "|---|" + "---:|" * len(cells.columns)
        body = ["| " + " | ".join(_md_escape(v) for v in (r, *values)) + " |" for r, values in rows]
        return "\n".join([head, rule, *body, "", f"*{_md_escape(caption)}*"]) + "\n"
    spec = "l" + "r" * len(cells.columns)
    lines = [
        r"\begin{table}",
        r"\centering",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(["row", *(latex_escape(c) for c in cells.columns)]) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(v) for v in (r, *values)) + r" \\" for r, values in rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(caption)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def format_table(tm: TransferMatrix, fmt: str, *, diff: bool = False, digits: int = 1) -> str:
    """One matrix as a table (``csv``: the two-level-header frame with every statistic)."""
    if fmt == "csv":
        return tm.to_frame().to_csv()
    cells = tm.formatted(digits=digits, diff=diff)
    if diff and tm.reference is not None:
        cells = cells.drop(index=tm.reference)
    what = f"{tm.metric}, minus {tm.reference} [95 % interval] verdict" if diff else f"{tm.metric}, mean ± std"
    return render(cells, fmt, f"{what} ({tm.threat_summary()}); {NOT_CONVERGED_MARK}: some runs had not plateaued")


def per_class_accuracy(study_dir: str | os.PathLike[str], jobs: Sequence, metric: str) -> pd.DataFrame:
    """Accuracy (percent) under ``metric`` per test class, from each finished job's per-image bits and its
    test labels (the job's test split, rebuilt from its config): one line per (row, column, seed, class).
    Jobs without per-image bits for ``metric`` are left out."""
    from transfer.engine.config import TrainConfig
    from transfer.engine.per_image import PER_IMAGE_FILE, load_per_image, with_ensembles
    from transfer.engine.training import load_test_data

    from .jobs import job_dir, read_result

    labels: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    records = []
    for job in jobs:
        path = job_dir(study_dir, job.id) / PER_IMAGE_FILE
        if read_result(study_dir, job.id) is None or not path.is_file():
            continue
        bits = with_ensembles(load_per_image(path))
        if metric not in bits:
            continue
        config = TrainConfig.from_dict(job.train)
        key = repr((config.dataset, config.test_subset, config.input_size, config.in_chans, config.data_dir))
        if key not in labels:
            test = load_test_data(config)
            labels[key] = (test.labels.numpy(), test.info.classes or tuple(map(str, range(test.num_classes))))
        y, names = labels[key]
        if len(y) != bits.n:
            raise ValueError(
                f"job {job.id}: its per-image file holds {bits.n} images, its test split {len(y)}; "
                "the data changed since it ran"
            )
        correct = bits[metric]
        for shown in job.rows():
            for c, name in enumerate(names):
                mask = y == c
                if mask.any():
                    records.append(
                        {
                            "row": shown["row"],
                            "column": shown["column"],
                            "seed": job.seed,
                            "class": name,
                            "accuracy": 100.0 * float(correct[mask].mean()),
                            "n": int(mask.sum()),
                        }
                    )
    return pd.DataFrame.from_records(records, columns=["row", "column", "seed", "class", "accuracy", "n"])


def per_class_table(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows × classes of one column: mean accuracy over seeds."""
    sel = frame[frame["column"] == column]
    table = sel.groupby(["row", "class"], sort=False)["accuracy"].mean().unstack("class")
    return table.loc[list(dict.fromkeys(sel["row"])), list(dict.fromkeys(sel["class"]))]
