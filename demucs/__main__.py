"""`python -m demucs`: same as the `demucs` command."""

from .separate import console_main

if __name__ == "__main__":
    console_main()
