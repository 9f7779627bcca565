"""Fine-tuning: one trainer (loop, checkpoints, resume, DDP) and one module per method (``methods/``)."""
