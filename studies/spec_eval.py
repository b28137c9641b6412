"""The ``[eval]`` table of a study: the final test evaluation of every job (attacks, images, batch size, an
evaluation radius for every job) and the optional gradient-masking checks (``sanity``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .spec import SANITY_OPTIONS

if TYPE_CHECKING:
    from .spec_check import Checker

__all__ = ["EVAL_KEYS", "evaluation"]

EVAL_KEYS = ("attacks", "n", "batch_size", "eps", "sanity")
# attacks: the engine's DEFAULT_EVAL_ATTACKS; sanity: None (off), or the options of the gradient-masking
# checks each job then writes to sanity.json (`true` = {}: the defaults; transfer.engine.sanity)
_DEFAULT_EVAL = {"n": None, "batch_size": 256, "eps": None, "sanity": None}


def evaluation(c: Checker, raw: Any) -> dict[str, Any]:
    """``[eval]``, every key checked, with the defaults of the keys it leaves out."""
    from transfer.engine.evaluation import DEFAULT_EVAL_ATTACKS

    defaults = {"attacks": list(DEFAULT_EVAL_ATTACKS), **_DEFAULT_EVAL}
    if not c.typed("eval", raw, dict, "a table"):
        return defaults
    c.unknown("eval", raw, EVAL_KEYS)
    ev = {**defaults, **{k: v for k, v in raw.items() if k in EVAL_KEYS}}
    attacks = ev["attacks"]
    if not isinstance(attacks, list) or not attacks or not all(isinstance(a, str) for a in attacks):
        c.add("eval.attacks", f"expected a non-empty list of attack names, got {attacks!r}")
    else:
        from transfer.engine.attacks import list_attacks, parse_attack

        for a in attacks:
            if a == "clean":
                continue
            try:
                parse_attack(a)
            except ValueError as exc:
                c.add("eval.attacks", f"{a!r}: {exc} (known attacks: clean, {', '.join(list_attacks())})")
    if ev["n"] is not None and (not isinstance(ev["n"], int) or isinstance(ev["n"], bool) or ev["n"] < 1):
        c.add("eval.n", f"expected a positive integer (test images evaluated), got {ev['n']!r}")
    if not isinstance(ev["batch_size"], int) or isinstance(ev["batch_size"], bool) or ev["batch_size"] < 1:
        c.add("eval.batch_size", f"expected a positive integer, got {ev['batch_size']!r}")
    if ev["eps"] is not None and (isinstance(ev["eps"], bool) or not isinstance(ev["eps"], int | float)):
        c.add("eval.eps", f"expected a number (L∞ radius in [0, 1] pixels), got {ev['eps']!r}")
    ev["sanity"] = _sanity(c, ev["sanity"])
    return ev


def _sanity(c: Checker, raw: Any) -> dict[str, Any] | None:
    """``[eval] sanity``: false/absent → None; true → {} (default options); a table of options → itself."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return {}
    if not isinstance(raw, dict):
        c.add("eval.sanity", f"expected true, false or a table of options ({', '.join(SANITY_OPTIONS)}), got {raw!r}")
        return None
    c.unknown("eval.sanity", raw, SANITY_OPTIONS)
    for k, v in raw.items():
        if k == "tolerance":
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                c.add("eval.sanity.tolerance", f"expected a number >= 0 (percentage points), got {v!r}")
        elif k in SANITY_OPTIONS and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            c.add(f"eval.sanity.{k}", f"expected a positive integer, got {v!r}")
    return dict(raw)
