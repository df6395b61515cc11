"""Training: the contrastive loss, accumulation, schedules and the Ray Train loop."""
