"""agelib: the helper package of an open course on facial age estimation.

Chapters import its modules by name (``from agelib import data, settings``) so
that shared code lives once and each notebook keeps only what it teaches.
"""

__version__ = "0.1.0"
