"""What a run was made from: the code's git state, DVC's data versions and the run's lineage, DVC's environment."""
