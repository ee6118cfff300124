"""Upstream's training module ``demucs.grids``: not part of this inference fork."""

from .errors import training_only

training_only(__name__)
