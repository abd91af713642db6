"""Training: the Lightning Trainer, run folders, hardware, launchers, callbacks and loggers."""
