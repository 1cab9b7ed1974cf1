"""Training: the loop, optimizer and schedule, checkpoints, data parallelism, and the fine-tuning recipe."""
