"""The adversarial-training engine: datasets, attacks, recipes, the training loop, evaluation and run
directories. It builds on the portable core (``transfer.activations``, ``transfer.inject``, …), which
never imports it."""
