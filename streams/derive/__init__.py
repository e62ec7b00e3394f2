"""Training data from feedback: effective ratings, golden lists, pairs, snapshots."""
