"""Reading ``.npz`` files safely from many threads.

numpy parses each array's header with ``ast.literal_eval``; on CPython 3.11, ``compile``
called from several threads at once can fail with ``SystemError: AST constructor
recursion depth mismatch`` (the counter it checks is shared). Agents of a simulated fleet
verify their smoke files in parallel and the controller reads eval sets on several
threads, so every ``.npz`` read goes through one lock here. Pickled arrays are refused.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np

__all__ = ["load_npz"]

_LOCK = threading.Lock()


def load_npz(source: bytes | bytearray | memoryview | str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (bytes or a path), read under the process-wide lock.

    Raises:
        OSError, ValueError, EOFError, zipfile.BadZipFile: not a readable ``.npz``.
    """
    handle = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) \
        else source
    with _LOCK, np.load(handle, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
