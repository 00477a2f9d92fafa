"""``python -m fxfusion``: the same command line as the ``fxfusion`` script."""

from fxfusion.cli.app import main

if __name__ == "__main__":
    main()
