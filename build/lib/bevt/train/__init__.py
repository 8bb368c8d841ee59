"""Training: the one loop, the stage tasks, optimizer and schedule, checkpoints, distributed set-up, logging."""
