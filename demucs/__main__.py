"""`python -m demucs`: same as the `demucs` command."""
from .separate import main

if __name__ == "__main__":
    main()
