"""Files written whole or not at all."""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, crash: bool = False) -> None:
    """Writes ``data`` to a temporary file beside ``path``, then renames it
    over ``path`` (``os.replace``), so that a reader sees the old file or the
    whole new one, never a part. The temporary name (``.NAME.PID-THREAD-RANDOM.tmp``)
    differs between processes, threads and machines writing the same
    ``path`` at once, so that they never mix their bytes (the last rename
    wins). A write that fails removes its temporary file and raises.
    ``crash``: a test hook that exits the process with half the temporary
    file written.

    No ``fsync``: a file cut short by a crash of the machine must be caught
    by its reader (a size or checksum).
    """
    tmp = path.with_name(
        f".{path.name}.{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}.tmp"
    )
    try:
        with open(tmp, "wb") as handle:
            if crash:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os._exit(17)
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
