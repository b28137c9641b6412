"""The adversarial-training engine: datasets, attacks, recipes, the training loop, evaluation and run
directories. It builds on the portable core (``transfer.activations``, ``transfer.inject``, …), which
never imports it.

Importing any engine module runs this first: ``attacks`` holds the attack registry, ``autoattack``
registers the official AutoAttack's specs in it, ``dataset_sources`` registers the datasets in
``data``'s registry, ``dataset_files`` the ``folder:``/``npz:`` names and ``dataset_synthetic`` the
``synthetic:`` names (a rehearsal's stand-ins), so ``create_attack("aa")``,
``parse_attack("apgd-t3")``, ``create_dataset("digits")`` and ``create_dataset("folder:PATH")`` work
whichever engine module was imported.
"""

from . import attacks, autoattack, dataset_files, dataset_sources, dataset_synthetic  # noqa: F401
