"""Training: the loop, its settings' machinery, resumable run state, callbacks, weight averaging,
validation, data-parallel processes, fine-tuning and gradient statistics."""
