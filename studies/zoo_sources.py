"""Zoo entries as study sources: ``[[sources]] zoo = "NAME[@VERSION]"`` — an activation set trained before,
stored in the user's zoo (``zoo.Registry()``: ``$SPARTA_ZOO``, else the user cache; bundled entries too).

Such a source trains nothing: it has no source job, and its transfers inject the stored set, frozen, under
the study's policies. So that a plan stays what it was while new versions of the entry are stored, the
reference is pinned to one version where the spec is read (``NAME`` → ``NAME@3``); the pinned reference is in
each transfer job's id, in its ``extra["zoo_source"]`` and config (``transfer_source``), in its
``result.json`` and in the results table's ``source_job`` column (``zoo:NAME@3``).

The entry's card gives the source's activation and options (its arch and dataset are shown where known). Its
threat model must be each target's: an activation trained and measured against one ε, transferred into a
model attacked at another, is another experiment, so a mismatch is refused at plan time
(:func:`threat_problem`), naming both radii and the key to change. A card without a threat model is taken as
it is (as ``sparta train --activation-from zoo:NAME`` takes it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .spec import SourceSpec

if TYPE_CHECKING:
    from transfer.activation_set import ActivationSet

    from .spec_check import Checker

__all__ = ["ZOO_PREFIX", "load_zoo_source", "threat_problem", "user_zoo", "zoo_source"]

ZOO_PREFIX = "zoo:"


def user_zoo() -> Any:
    """The user's zoo, where zoo sources are looked up (``$SPARTA_ZOO``; bundled entries included)."""
    from zoo.registry import Registry

    return Registry()


def zoo_source(c: Checker, key: str, table: dict[str, Any]) -> SourceSpec | None:
    """A ``[[sources]]`` block with ``zoo``: the entry resolved to one version, its activation from its card.
    Any other key is a problem: the card fixes the activation, and the source trains nothing."""
    from zoo.errors import ZooError

    for other in table:
        if other != "zoo":
            c.add(
                f"{key}.{other}",
                "a zoo source takes its activation from the entry's card and trains nothing; "
                'remove the key (a zoo source has only zoo = "NAME[@VERSION]")',
            )
    ref = table["zoo"]
    if not isinstance(ref, str) or not ref.removeprefix(ZOO_PREFIX).strip():
        c.add(f"{key}.zoo", f'expected a zoo entry, "NAME" or "NAME@VERSION" (see `sparta zoo list`), got {ref!r}')
        return None
    try:
        card = user_zoo().info(ref.removeprefix(ZOO_PREFIX).strip())
    except ZooError as exc:
        c.add(f"{key}.zoo", str(exc))
        return None
    options = dict(card["config"])
    variant = options.pop("variant", None)
    return SourceSpec(
        str(card.get("arch") or ""),
        str(card.get("dataset") or ""),
        card["activation"],
        variant,
        options,
        {},
        zoo=f"{card['name']}@{card['version']}",
    )


def load_zoo_source(ref: str) -> ActivationSet:
    """The stored set of a pinned zoo source ``NAME@VERSION`` (checked against its sha256 as it is read)."""
    return user_zoo().load(ref)


def threat_problem(source_key: str, ref: str, target_key: str, column: str, train: dict[str, Any]) -> str | None:
    """Why zoo source ``ref`` cannot go into a job evaluated as ``train`` (a resolved config) says, or None:
    the card's threat model must be L∞ at the job's evaluation radius (to 0.1 %)."""
    from transfer.threat_model import evaluation_eps, format_eps
    from zoo.threat import threat_matches, threat_model_of

    threat = threat_model_of(user_zoo().info(ref))
    eps = evaluation_eps(train)
    if threat is None or eps is None or threat_matches(threat, eps=eps, norm="Linf"):
        return None
    theirs = float(threat["eps"])
    where = "[eval]" if train.get("eval_eps") is not None else f"[train] or {target_key}.train"
    return (
        f"{source_key}.zoo: {ZOO_PREFIX}{ref} records the threat model {threat.get('norm') or 'Linf'} eps "
        f"{format_eps(theirs)} (where its robust accuracy was measured), but {target_key} ({column}) is "
        f"evaluated at Linf eps {format_eps(eps)}: set eps = {theirs:.6g} in {where} to transfer it, or pick "
        f"an entry of that threat model (sparta zoo list --eps {format_eps(eps)})"
    )
