"""BicKD: Bilateral Contrastive Knowledge Distillation, in plain PyTorch.

Nothing in this package imports Ray, Optuna or MLflow: losses, models, data and the training loop are
usable and testable on their own. `platform/` wires them to a cluster.
"""
