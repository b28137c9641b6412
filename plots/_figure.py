"""What every figure module shares: Agg-backed figures, atomic multi-format saving, label wrapping and
metric names.

Figures are built as :class:`matplotlib.figure.Figure` objects with an Agg canvas attached, never
through ``pyplot``: nothing global is switched (an importing notebook keeps its own backend) and no
figure is left registered in pyplot's figure manager to leak memory in a long study.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from transfer.atomic import atomic_write
from transfer.attack_names import parse_apgd_t

__all__ = [
    "FORMATS",
    "new_figure",
    "save_figure",
    "parse_formats",
    "wrap_label",
    "metric_title",
    "eps_label",
    "slug",
]

FORMATS = ("png", "pdf", "svg")
_DPI = 150


def new_figure(width: float, height: float, **kwargs: object) -> Figure:
    """A figure of ``width`` × ``height`` inches drawn by Agg, independent of pyplot's state."""
    fig = Figure(figsize=(width, height), **kwargs)
    FigureCanvasAgg(fig)
    return fig


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """``"png,pdf"`` or ``("png", "pdf")`` → a checked, de-duplicated tuple of file formats."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in items if f.strip()))
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise ValueError(f"unknown figure format(s) {bad or list(items)}; choose from {', '.join(FORMATS)}")
    return out


def save_figure(fig: Figure, stem: Path | str, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``stem.<fmt>`` for every format, each atomically (temp file + ``os.replace``),
    and return the paths written."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in parse_formats(formats):
        target = stem.with_name(f"{stem.name}.{fmt}")
        written.append(
            atomic_write(target, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=_DPI, metadata=_metadata(fmt)))
        )
    return written


def _metadata(fmt: str) -> dict[str, str | None]:
    """No creation date in PDF/SVG, so an unchanged figure gives byte-identical files."""
    if fmt == "pdf":
        return {"Creator": "sparta-transfer plots", "CreationDate": None}
    if fmt == "svg":
        return {"Creator": "sparta-transfer plots", "Date": None}
    return {"Software": "sparta-transfer plots"}


_BREAKS = re.compile(r"\s+(?=←|\[|\()")


def wrap_label(label: str, width: int = 18) -> str:
    """Break a long row/column label for a heatmap axis: first before ``←``, ``[`` and ``(`` (the parts
    of an activation-source label), then after spaces or slashes, to at most ``width`` characters a
    line where the words allow."""
    label = str(label).strip()
    if len(label) <= width:
        return label
    lines: list[str] = []
    for part in _BREAKS.split(label):
        line = ""
        for token in re.split(r"(?<=[ /])", part):
            if line and len((line + token).rstrip()) > width:
                lines.append(line.rstrip())
                line = ""
            line += token
        lines.append(line.rstrip())
    return "\n".join(lines)


_NAMES = {
    "clean": "Clean", "fgsm": "FGSM", "cw": "CW-∞", "aa": "AutoAttack", "aa-rand": "AutoAttack (rand)",
    "apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "apgd-ce+t": "APGD-CE+T (worst case)", "square": "Square",
}  # fmt: skip


def metric_title(metric: str, eps: float | None = None) -> str:
    """``pgd20`` → ``PGD-20``, ``pgd20-l2`` → ``PGD-20 (L2)``, ``clean`` → ``Clean``; with ``eps`` the
    radius follows: ``pgd20``, 8/255 → ``PGD-20 (L∞ ε = 8/255)``."""
    from transfer.threat_model import format_eps

    m = re.fullmatch(r"pgd(\d+)(?:-(l2|linf))?", metric.lower())
    norm = "L∞"
    if m:
        name = f"PGD-{m.group(1)}"
        norm = "L2" if m.group(2) == "l2" else norm
        if eps is None:
            return name + (f" ({m.group(2).upper()})" if m.group(2) else "")
    elif metric.lower() not in _NAMES and (apgd := parse_apgd_t(metric.lower())):
        worst_case, targets = apgd
        name = f"APGD-{'CE+T' if worst_case else 'T'} ({targets} targets{', worst case' if worst_case else ''})"
    else:
        name = _NAMES.get(metric.lower(), metric)
    return name if eps is None else f"{name} ({norm} ε = {format_eps(eps)})"


def eps_label(eps: float | None) -> str:
    """``ε = 8/255`` for a column label, ``""`` when the radius is unknown."""
    from transfer.threat_model import format_eps

    return "" if eps is None else f"ε = {format_eps(eps)}"


def slug(text: str) -> str:
    """A file-name-safe form of a job id or metric name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "unnamed"
