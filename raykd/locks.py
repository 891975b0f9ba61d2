"""One study per name at a time: an advisory lock file held for the study's whole life.

Two `raykd tune` of one study would both pass the "already exists" check and then fight
over the same Tune state and MLflow parent run. `fcntl.flock` is released by the kernel
when the holder exits, however it exits (Ctrl-C, SIGKILL, a crash), so a stale lock file
never blocks a later run. The file stays (unlinking a lock file races with a new holder).
"""

from __future__ import annotations

import fcntl
import functools
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from raykd.errors import UserError

LOCK_FILE = ".lock"


@contextmanager
def held_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block, or raise one UserError naming the holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{what} is running already ({holder}; lock {path}): wait for it to finish, or pick "
                        "another name with --set name=...") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def study_guard(dir_of: Callable[[Any], Path]) -> Callable:
    """Decorate `run_study(cfg, ..., address=...)`: before anything else, a GPU asked for must
    exist (`pipeline.check_devices`), the study folder must be writable, and no other process
    may run this study; the lock is held until run_study returns or raises."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            from raykd.pipeline import check_devices, check_writable, ray_is_local

            check_devices(cfg, ray_is_local(kwargs.get("address")))
            sdir = dir_of(cfg)
            check_writable(sdir, "storage_path")
            with held_lock(sdir / LOCK_FILE, f"study {cfg.name}"):
                return fn(cfg, *args, **kwargs)

        return wrapper

    return decorate
