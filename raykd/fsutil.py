"""Write-then-swap: a folder or file is either the old complete one or the new complete one.

Every checkpoint, teacher store, teacher-output cache, export, `best/` folder and manifest
is written through `atomic_dir` / `atomic_file`, so a crash, a full disk or Ctrl-C never
leaves a half-written result where a reader would take it for a whole one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_dir(final: Path, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir beside `final`; on success swap it into place, on error remove it.

    The previous `final` stays readable until the new one is complete. With `keep_existing`,
    a `final` that appeared meanwhile (a concurrent writer finished first) is kept and the
    new one dropped.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if keep_existing and final.exists():
            return
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success rename it over `final`, on error remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
