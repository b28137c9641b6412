"""Reading what the figures need from a study directory (``docs/architecture.md``, "Study
directories"): the spec name, the planned jobs and their states, the results table, each job's
training history, and which jobs hold a Sparta worth drawing gate maps of.

Everything here tolerates a study that is still running or partly failed: what is missing is
reported as absent, not raised, except a directory that is no study directory at all.
"""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from studies.jobs import Job
from studies.results import load_results

from .curves import load_history

__all__ = ["NotAStudyError", "StudyView", "open_study"]

_MARKERS = ("study.toml", "plan.json", "results.csv", "results.parquet")


class NotAStudyError(FileNotFoundError):
    """The directory given is not a study directory."""


@dataclass
class StudyView:
    """A read-only view of one study directory."""

    root: Path
    name: str
    jobs: list[Job] = field(default_factory=list)
    results: pd.DataFrame | None = None
    states: dict[str, str] = field(default_factory=dict)

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def job_ids(self) -> list[str]:
        """Planned jobs in plan order, else the job directories present."""
        if self.jobs:
            return [j.id for j in self.jobs]
        jobs = self.root / "jobs"
        return sorted(p.name for p in jobs.iterdir() if p.is_dir()) if jobs.is_dir() else []

    def seeds(self) -> list[int]:
        if self.jobs:
            return sorted({j.seed for j in self.jobs})
        if self.results is not None and "seed" in self.results:
            return sorted({int(s) for s in self.results["seed"].dropna()})
        return []

    def status_counts(self) -> dict[str, int]:
        """Number of jobs per state (``done``, ``running``, ``failed``, ``interrupted``, ``pending``)."""
        return dict(Counter(self.states.get(j, "pending") for j in self.job_ids()))

    def job_label(self, job_id: str) -> str:
        """``row → column, seed s`` for a job of the plan or results table; else its id."""
        info = self._job_info(job_id)
        if info is None:
            return job_id
        return f"{info['row']} → {info['column']}, seed {info['seed']}"

    def job_row(self, job_id: str) -> str:
        """The matrix row (activation source) of a job; its id when the study does not say."""
        info = self._job_info(job_id)
        return str(info["row"]) if info is not None else job_id

    def _job_info(self, job_id: str) -> dict[str, Any] | None:
        for job in self.jobs:
            if job.id == job_id:
                return {"row": job.row, "column": job.column, "seed": job.seed, "activation": job.activation}
        if self.results is not None and "job_id" in self.results:
            hit = self.results.loc[self.results["job_id"].astype(str) == job_id]
            if len(hit):
                first = hit.iloc[0]
                return {k: first.get(k, "") for k in ("row", "column", "seed", "activation")}
        return None

    def histories(self) -> dict[str, list[dict[str, Any]]]:
        """``history.json`` of every job that has one, by job id (plan order)."""
        out = {}
        for jid in self.job_ids():
            try:
                history = load_history(self.job_dir(jid))
            except (FileNotFoundError, ValueError):
                continue
            if history:
                out[jid] = history
        return out

    def sparta_runs(self) -> list[str]:
        """Jobs whose model holds Sparta and whose run directory is there: one per (row, column) —
        the lowest seed — in plan order."""
        picked: dict[tuple[str, str], tuple[int, str]] = {}
        for jid in self.job_ids():
            run = self.job_dir(jid)
            if not (run / "config.json").is_file() or not (run / "checkpoint.pt").is_file():
                continue
            info = self._job_info(jid)
            activation = str(info["activation"]) if info else _config_activation(run)
            if "sparta" not in activation.lower():
                continue
            key = (str(info["row"]), str(info["column"])) if info else (jid, "")
            seed = int(info["seed"]) if info else 0
            if key not in picked or seed < picked[key][0]:
                picked[key] = (seed, jid)
        return [jid for _, jid in picked.values()]


def _config_activation(run_dir: Path) -> str:
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(config.get("activation", "")) if isinstance(config, dict) else ""


def _spec_name(root: Path, plan: dict[str, Any] | None) -> str:
    if plan and isinstance(plan.get("name"), str):
        return plan["name"]
    try:
        spec = tomllib.loads((root / "study.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return root.name
    name = spec.get("name")
    return str(name) if name else root.name


def _read_plan(root: Path) -> tuple[dict[str, Any] | None, list[Job]]:
    try:
        plan = json.loads((root / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, []
    if not isinstance(plan, dict) or not isinstance(plan.get("jobs"), list):
        return None, []
    try:
        return plan, [Job.from_dict(j) for j in plan["jobs"]]
    except TypeError:  # a plan written by another version of studies: use what the directories say
        return plan, []


def _states(root: Path, jobs: list[Job], ids: list[str]) -> dict[str, str]:
    if jobs:
        try:
            from studies.runner import job_states

            return {jid: info["state"] for jid, info in job_states(root, jobs).items()}
        except ImportError:  # the runner is optional for reading; fall back to the files themselves
            pass
    states = {}
    for jid in ids:
        run = root / "jobs" / jid
        if (run / "result.json").is_file():
            states[jid] = "done"
            continue
        try:
            status = json.loads((run / "status.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            status = {}
        states[jid] = str(status.get("state", "pending")) if isinstance(status, dict) else "pending"
    return states


def open_study(study_dir: Path | str) -> StudyView:
    """A view of ``study_dir``; :class:`NotAStudyError` if it is not a study directory."""
    root = Path(study_dir).expanduser()
    if not root.is_dir():
        raise NotAStudyError(f"{root} does not exist or is not a directory")
    if not any((root / m).is_file() for m in _MARKERS):
        raise NotAStudyError(
            f"{root} is not a study directory: it has none of {', '.join(_MARKERS)}. "
            "Point `sparta plot` at the --out directory of `sparta study run CONFIG --out DIR`."
        )
    plan, jobs = _read_plan(root)
    try:
        results = load_results(root)
    except FileNotFoundError:
        results = None
    view = StudyView(root=root, name=_spec_name(root, plan), jobs=jobs, results=results)
    view.states = _states(root, jobs, view.job_ids())
    return view
