"""Training: the Trainer subclass, MPO (schedule, runner, checkpoints), LoRA and the fitting of the
scores' fusion weights."""
