"""Files written whole or not at all.

Checkpoints, caches, packs, splits and records are read back by later runs, often hours
later: a crash, a full disk or Ctrl-C halfway through a write must never leave half a
file under the real name, where the next run would trust it. Every writer in agelib
goes through :func:`written_whole`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def written_whole(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, renamed onto ``path`` when the block
    ends without an error (an atomic step on one file system) and removed when it fails.

    The temporary name carries the process id, so two processes writing the same file
    (two kernels building one cache) never write into each other's copy.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     target = Path(folder) / "notes.txt"
    ...     with written_whole(target) as tmp:
    ...         _ = tmp.write_text("all of it")
    ...     print(target.read_text(), sorted(p.name for p in target.parent.iterdir()))
    all of it ['notes.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
