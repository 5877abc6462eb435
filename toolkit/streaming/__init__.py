"""Compressing a model too big for memory: the streaming job, its checkpoints and
its memory budget."""
