"""``python -m streamer``: the command line, which lives in :mod:`streamer.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
