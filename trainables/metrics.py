"""The per-epoch metrics every training run records (one place; no heavy imports, so the
study and the reports can read the names without importing torch)."""

EPOCH_METRICS = (
    "train_loss",  # mean training loss over the epoch's minibatches
    "val_loss",  # mean validation loss
    "val_acc",  # validation accuracy in [0, 1]
    "grad_norm",  # mean gradient norm before clipping
    "grad_norm_max",  # max gradient norm before clipping
    "detached_fraction",  # fraction of steps whose h_{t-1} was blocked
    "epoch_seconds",  # wall-clock seconds of the epoch's training
)
