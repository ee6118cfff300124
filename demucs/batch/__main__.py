"""``python -m demucs.batch``: same as the ``demucs-batch`` command."""

from . import main

if __name__ == "__main__":
    main()
