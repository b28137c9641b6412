"""The entry card: a schema-versioned JSON record of what an entry is, where it came from and how to
check its tensors.

Fields (``CARD_SCHEMA`` = ``sparta-zoo-card/2``; format-1 cards are read through :func:`upgrade_card`):

- identity: ``name``, ``version``;
- the activation: ``activation`` (registry name), ``variant`` (Sparta's, else ``None``), ``config``
  (creation options), ``sites`` (the source site table, ``Site.to_dict`` records with ``layout``);
- ``threat_model``: ``{"norm", "eps", "attack"}`` of the headline robust number, ``None`` when unknown;
- provenance: ``arch``, ``dataset``, ``input_size``, ``width``, ``seed``, ``recipe``, ``train_config``,
  ``metrics``, ``command`` (the argv that produced the entry, e.g. ``["sparta", "train", ...]``, or
  ``None``: optional, a card written before it existed has none), ``derived_from`` (``NAME@VERSION`` of
  the entry it came from, or ``None``), ``meta`` (the activation set's whole ``meta``, so a load returns
  what was saved);
- housekeeping: ``created`` (UTC, ISO 8601), ``toolkit_version``, ``license``, ``tags``,
  ``description``;
- integrity: ``file``, ``sha256`` (of that file), ``content_sha256`` (of the tensors themselves,
  independent of how a file lays them out), ``sites_sha256`` (of the site table), ``num_tensors``,
  ``num_parameters``, ``num_sites``.

An exported file carries its card as JSON in the safetensors header under :data:`EXPORT_CARD_KEY`
(:func:`export_header` writes it, :func:`embedded_card` reads it back).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import torch

from transfer.activation_set import ActivationSet
from transfer.atomic import parse_json
from transfer.sites import Site

from .errors import IntegrityError, ZooError
from .names import validate_name
from .threat import threat_model_from_meta, threat_model_of

__all__ = [
    "CARD_SCHEMA",
    "CARD_SCHEMA_V1",
    "CARD_FILE",
    "EXPORT_CARD_KEY",
    "README_FILE",
    "TENSOR_FILE",
    "PROVENANCE_FIELDS",
    "build_card",
    "validate_card",
    "card_summary",
    "content_digest",
    "sites_digest",
    "upgrade_card",
    "activation_set_from_card",
    "check_card_matches",
    "export_header",
    "embedded_card",
]

CARD_SCHEMA = "sparta-zoo-card/2"
CARD_SCHEMA_V1 = "sparta-zoo-card/1"
TENSOR_FILE = "activation.safetensors"  # the files of an entry (and of an HF folder, beside its config.json)
CARD_FILE = "card.json"
README_FILE = "README.md"
EXPORT_CARD_KEY = "sparta.zoo.card"  # the safetensors header key of an exported file's card
DEFAULT_LICENSE = "apache-2.0"

# Copied from the activation set's meta into the card, and overridable through ``card=``.
PROVENANCE_FIELDS = (
    "arch", "dataset", "input_size", "width", "seed", "recipe", "train_config", "metrics", "command",
)  # fmt: skip
# Derived from the tensors and the registry; a caller can never set them.
COMPUTED_FIELDS = (
    "schema", "name", "version", "activation", "variant", "config", "sites", "meta", "created",
    "toolkit_version", "file", "sha256", "content_sha256", "sites_sha256", "num_tensors", "num_parameters",
    "num_sites",
)  # fmt: skip
_HEX64 = re.compile(r"[0-9a-f]{64}")


def content_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's key, dtype, shape and bytes, in key order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sites_digest(sites: list[dict[str, Any]]) -> str:
    """sha256 over the site table as canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(sites, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def upgrade_card(card: dict[str, Any]) -> dict[str, Any]:
    """A format-1 card (``sparta-zoo-card/1``) as format 2; a card of any other schema comes back as it is.

    Format 1 predates ``Site.layout``: every site of such a card was traced and injected as NCHW (the
    toolkit then had no other layout), so each site gets ``layout = "NCHW"``. Its threat model was
    never recorded: ``threat_model = None``. ``sites_sha256`` is taken of the upgraded table; a format-1
    site table was never checksummed, so loading still checks it against the tensors' shapes.
    """
    if not isinstance(card, dict) or card.get("schema") != CARD_SCHEMA_V1:
        return card
    sites = card.get("sites")
    if isinstance(sites, list):
        sites = [{**s, "layout": s.get("layout", "NCHW")} if isinstance(s, dict) else s for s in sites]
    upgraded = {**card, "schema": CARD_SCHEMA, "sites": sites}
    upgraded.setdefault("threat_model", None)
    if isinstance(sites, list) and all(isinstance(s, dict) for s in sites):
        upgraded["sites_sha256"] = sites_digest(sites)
    return upgraded


def _json_safe(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, sort_keys=True, default=str))
    except (TypeError, ValueError) as exc:
        raise ZooError(f"{what} must be JSON-serialisable ({exc})") from exc


def build_card(
    aset: ActivationSet,
    *,
    name: str,
    version: int,
    sha256: str,
    toolkit_version: str,
    overrides: dict[str, Any] | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """The card of ``aset`` stored as ``name@version``.

    ``overrides`` (extra fields, e.g. ``{"dataset": "digits", "description": "..."}``) are merged over
    what is derived from ``aset.meta``; provenance fields they set are written into ``meta`` as well, so
    a loaded set agrees with its card.
    """
    overrides = dict(overrides or {})
    forbidden = sorted(set(overrides) & set(COMPUTED_FIELDS))
    if forbidden:
        raise ZooError(
            f"card fields {forbidden} are computed from the activation set and the registry and cannot be "
            f"given; settable fields are {list(PROVENANCE_FIELDS)}, 'derived_from', 'license', 'tags', "
            "'description' and any new key"
        )
    overrides = _json_safe(overrides, "card fields")
    meta = _json_safe(dict(aset.meta), "the activation set's meta")
    meta.update({k: overrides[k] for k in PROVENANCE_FIELDS if k in overrides})
    tags = overrides.pop("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ZooError(f"card field 'tags' must be a list of strings, got {tags!r}")
    derived = overrides.pop("derived_from", meta.get("derived_from"))
    if derived is None and aset.source.startswith("zoo:"):
        derived = aset.source.removeprefix("zoo:")
    card: dict[str, Any] = {
        "schema": CARD_SCHEMA,
        "name": validate_name(name),
        "version": int(version),
        "activation": aset.activation,
        "variant": aset.config.get("variant"),
        "config": _json_safe(dict(aset.config), "the activation config"),
        "sites": [s.to_dict() for s in aset.sites],
        **{k: meta.get(k) for k in PROVENANCE_FIELDS},
        "derived_from": derived,
        # given, else what the run recorded (zoo.threat), else None
        "threat_model": overrides.pop("threat_model", None) or threat_model_from_meta(meta),
        "meta": meta,
        "created": created or datetime.now(UTC).isoformat(timespec="seconds"),
        "toolkit_version": toolkit_version,
        "license": overrides.pop("license", DEFAULT_LICENSE),
        "tags": tags,
        "description": overrides.pop("description", ""),
        "file": TENSOR_FILE,
        "sha256": sha256,
        "content_sha256": content_digest(aset.tensors),
        "sites_sha256": sites_digest([s.to_dict() for s in aset.sites]),
        "num_tensors": len(aset.tensors),
        "num_parameters": aset.num_parameters,
        "num_sites": len(aset.sites),
    }
    card.update({k: v for k, v in overrides.items() if k not in PROVENANCE_FIELDS})
    return validate_card(card, f"the card of {name}@{version}")  # a bad field is refused before any write


_TYPES: dict[str, type | tuple[type, ...]] = {
    "schema": str, "name": str, "version": int, "activation": str, "config": dict, "sites": list,
    "meta": dict, "created": str, "toolkit_version": str, "file": str, "sha256": str,
    "content_sha256": str, "sites_sha256": str, "num_tensors": int, "num_parameters": int, "num_sites": int,
    "variant": (str, type(None)), "derived_from": (str, type(None)), "metrics": (dict, type(None)),
    "tags": list, "license": str, "description": str,
}  # fmt: skip


def validate_card(card: Any, origin: str) -> dict[str, Any]:
    """Check a card read from ``origin`` against the schema (a format-1 card upgraded first, see
    :func:`upgrade_card`); return it or raise :class:`ZooError`."""
    if not isinstance(card, dict):
        raise ZooError(f"{origin}: a zoo card is a JSON object, got {type(card).__name__}")
    card = upgrade_card(card)
    schema = card.get("schema")
    if schema != CARD_SCHEMA:
        raise ZooError(
            f"{origin}: unsupported card schema {schema!r} (this toolkit reads {CARD_SCHEMA!r} and "
            f"{CARD_SCHEMA_V1!r}); upgrade sparta-transfer or re-import the activation set"
        )
    missing = sorted(set(_TYPES) - set(card))
    if missing:
        raise ZooError(f"{origin}: card lacks the fields {missing}")
    wrong = [f"{k} ({type(card[k]).__name__})" for k, t in _TYPES.items() if not isinstance(card[k], t)]
    if wrong or isinstance(card["version"], bool) or card["version"] < 1:
        raise ZooError(f"{origin}: card fields of the wrong type: {wrong or ['version']}")
    validate_name(card["name"])
    for key in ("sha256", "content_sha256", "sites_sha256"):
        if not _HEX64.fullmatch(card[key]):
            raise ZooError(f"{origin}: card field {key!r} is not a sha256 hex digest")
    if card["file"] != TENSOR_FILE:
        raise ZooError(f"{origin}: card names the tensor file {card['file']!r}, expected {TENSOR_FILE!r}")
    stale = [k for k in PROVENANCE_FIELDS if card.get(k) != card["meta"].get(k)]
    if stale:
        raise ZooError(f"{origin}: card fields {stale} disagree with the card's meta")
    try:
        [Site.from_dict(d) for d in card["sites"]]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ZooError(f"{origin}: malformed site table in the card ({exc})") from exc
    if sites_digest(card["sites"]) != card["sites_sha256"]:
        raise IntegrityError(
            f"{origin}: the site table does not match the card's sites_sha256: it was edited after the entry "
            "was stored (a changed site would silently re-route injections). Nothing was loaded; restore "
            "the card, or remove the entry and store it again"
        )
    _check_threat_model(card.get("threat_model"), origin)
    _check_command(card.get("command"), origin)
    return card


def _check_threat_model(value: Any, origin: str) -> None:
    """``None`` (unknown) or an object with ``norm``, ``eps`` and ``attack``."""
    if value is None:
        return
    if not isinstance(value, dict) or not {"norm", "eps", "attack"} <= set(value):
        raise ZooError(
            f"{origin}: card field 'threat_model' must be null or an object with norm, eps and attack, got {value!r}"
        )


def _check_command(value: Any, origin: str) -> None:
    """``None`` (not recorded; also a card older than the field) or the argv, a non-empty list of strings."""
    if value is None:
        return
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise ZooError(
            f"{origin}: card field 'command' must be null or the command's argv as a non-empty list of strings "
            f'(e.g. ["sparta", "train", "--dataset", "digits"]), got {value!r}'
        )


def activation_set_from_card(card: dict[str, Any], tensors: dict[str, torch.Tensor], source: str) -> ActivationSet:
    """Rebuild the stored set from its card and tensors, checking that they belong together."""
    aset = ActivationSet(
        activation=card["activation"],
        config=dict(card["config"]),
        sites=[Site.from_dict(d) for d in card["sites"]],
        tensors=dict(tensors),
        meta=dict(card["meta"]),
        source=source,
    )
    try:
        aset.validate()
    except ValueError as exc:
        raise IntegrityError(f"{source}: {exc}; remove the entry and store it again") from exc
    if content_digest(aset.tensors) != card["content_sha256"]:
        raise IntegrityError(f"{source}: the tensors do not match the card's content_sha256")
    return aset


def check_card_matches(card: dict[str, Any], aset: ActivationSet, origin: str) -> None:
    """Raise :class:`IntegrityError` unless ``card`` describes exactly the tensors and sites of ``aset``."""
    problems = []
    if card["activation"] != aset.activation:
        problems.append(f"activation {card['activation']!r} != {aset.activation!r}")
    if card["config"] != _json_safe(aset.config, "config"):
        problems.append(f"config {card['config']} != {aset.config}")
    if card["sites"] != [s.to_dict() for s in aset.sites]:
        problems.append("the site tables differ")
    if card["content_sha256"] != content_digest(aset.tensors):
        problems.append("the tensors differ from those the card's content_sha256 was taken of")
    if problems:
        raise IntegrityError(
            f"{origin}: the embedded card does not match the file's activation set: {'; '.join(problems)}"
        )


def card_summary(card: dict[str, Any]) -> dict[str, Any]:
    """The short form ``list`` returns: identity, activation, provenance, threat model (read off the meta
    for a card stored before the field existed) and headline metrics."""
    keys = ("name", "version", "activation", "variant", "arch", "dataset", "metrics", "num_sites",
            "num_parameters", "derived_from", "created")  # fmt: skip
    return {
        "ref": f"{card['name']}@{card['version']}",
        **{k: card.get(k) for k in keys},
        "threat_model": threat_model_of(card),
    }


def export_header(card: dict[str, Any]) -> dict[str, str]:
    """The header entry that makes an activation-set file an exported zoo entry: the card as JSON."""
    return {EXPORT_CARD_KEY: json.dumps(card, sort_keys=True)}


def embedded_card(header: dict[str, str], origin: str) -> dict[str, Any] | None:
    """The validated card a file's header carries under :data:`EXPORT_CARD_KEY`; ``None`` for a plain
    activation-set file. Its JSON is depth-bounded before parsing."""
    if EXPORT_CARD_KEY not in header:
        return None
    try:
        card = parse_json(header[EXPORT_CARD_KEY], what=f"{origin}: the embedded zoo card")
    except ValueError as exc:
        raise ZooError(str(exc)) from None
    return validate_card(card, f"{origin} (embedded card)")
