"""Upstream's training module ``demucs.distrib``: not part of this inference fork."""

from .errors import training_only

training_only(__name__)
