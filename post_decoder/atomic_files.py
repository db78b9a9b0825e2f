"""Writing files and folders so that a crash never leaves a torn or half-written one.

Every command in the project writes its results through these two helpers: the new content goes
to a temporary sibling first and is renamed over the target only when it is complete (a rename
within one folder is atomic on POSIX), and on any failure the temporary is removed.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_file(path: str):
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed
    and `path` is untouched. Its extension is kept (savers such as matplotlib's read it)."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    stem, extension = os.path.splitext(os.path.basename(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{stem}.tmp-", suffix=extension, dir=folder)
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


@contextmanager
def atomic_directory(directory: str):
    """Yield a temporary sibling folder; on success it replaces `directory` (the old one is removed
    only after the new one is complete), on failure it is deleted and `directory` is untouched."""
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the result follows the user's umask
    previous = None
    if os.path.exists(directory):
        previous = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
        os.rmdir(previous)
        os.rename(directory, previous)
    os.rename(staging, directory)
    if previous:
        shutil.rmtree(previous, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
