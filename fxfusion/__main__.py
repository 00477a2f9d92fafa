"""``python -m fxfusion``: the same command line as the ``fxfusion`` script (Ctrl-C handled from the first moment)."""

from fxfusion.cli import main

if __name__ == "__main__":
    main()
