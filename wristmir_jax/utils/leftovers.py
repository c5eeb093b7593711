"""Temporaries of killed runs. Atomic outputs are written under a sibling temporary name that
carries the writer's process id (`.NAME.tmp-<pid>-<random>` folders, `.tmp-<pid>-<random>` files);
a run killed before its final rename leaves one behind. The next atomic write into the same place
removes those whose process is gone (logged, one line each), so reruns leave no strays.
Temporaries of a live process (a concurrent writer on this host) are never touched. Folder
names without a pid (`.NAME.tmp-<random>`) come from versions that did not record one and are
removed too; files without a pid are left alone (`.tmp-x` could be anyone's)."""

from __future__ import annotations

import os
import re
import shutil

from wristmir_jax.utils.log import get_logger

log = get_logger("wristmir.fs")
_PID = re.compile(r"\.tmp-(\d+)-")


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def tmp_prefix(prefix: str) -> str:
    """`.data.tmp-` -> `.data.tmp-<pid>-`: the prefix this process writes under."""
    return f"{prefix}{os.getpid()}-"


def clean_stale(folder: str, prefix: str, *, dirs: bool) -> list[str]:
    """Removes entries of `folder` named `<prefix>...` (folders when dirs, else files) whose
    writer process is gone. Returns the removed paths."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        m = _PID.match(name, len(prefix) - len(".tmp-")) if prefix.endswith(".tmp-") else None
        if (m and pid_alive(int(m.group(1)))) or (m is None and not dirs):
            continue
        path = os.path.join(folder, name)
        if dirs and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif not dirs and os.path.isfile(path):
            try:
                os.remove(path)
            except OSError:
                continue
        else:
            continue
        log.warning("removed %s left by an interrupted run", path)
        removed.append(path)
    return removed
