"""``demucs.wdemucs.WDemucs``: upstream's old name for :class:`demucs.hdemucs.HDemucs`,
kept so that code (and pickles) naming it still resolve."""

from .hdemucs import HDemucs

__all__ = ["WDemucs"]

WDemucs = HDemucs
