"""Upstream's training module ``demucs.wav``: not part of this inference fork."""

from .errors import training_only

training_only(__name__)
