"""Model configurations of the tests: the ones of :mod:`demucs.configs`."""
from demucs.configs import (  # noqa: F401
    HTDEMUCS, HTDEMUCS_6S, SOURCES_4, SOURCES_6, TINY_HTDEMUCS, TINY_HTDEMUCS_MAG,
)
