"""The zoo: a registry of trained activation sets stored apart from backbones.

``Registry().save(name, aset)`` stores an :class:`~transfer.ActivationSet` as the next version of
``name`` (tensors in safetensors, a JSON card, a README model card); ``Registry().load(name)`` gives it
back, checksum-verified, ready for ``transfer.inject``. See ``docs/zoo.md``.
"""

from .card import CARD_SCHEMA, EXPORT_CARD_KEY, card_summary, validate_card
from .errors import EntryNotFoundError, IntegrityError, InvalidNameError, ZooError
from .names import EntryRef, parse_ref, validate_name
from .registry import Registry
from .roots import default_root

__all__ = [
    "CARD_SCHEMA",
    "EXPORT_CARD_KEY",
    "EntryNotFoundError",
    "EntryRef",
    "IntegrityError",
    "InvalidNameError",
    "Registry",
    "ZooError",
    "card_summary",
    "default_root",
    "parse_ref",
    "validate_card",
    "validate_name",
]
