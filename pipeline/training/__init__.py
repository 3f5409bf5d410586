"""The train stage's work: settings, data loading, the parent, the loop, checkpoints and the run's record."""
