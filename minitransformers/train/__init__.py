"""Training: the loop, optimizer and schedule, checkpoints, data parallelism, and the tasks (the recipes that use them are in recipes/)."""
