"""``python -m agelib``: see :mod:`agelib.cli`."""

from agelib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
