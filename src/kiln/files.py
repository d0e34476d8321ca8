"""Writing outputs so that a reader (or a crash) never sees half of them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the fully written folder ``tmp`` to ``target``, replacing an older ``target``.

    Each step is a rename; the old folder is only deleted once the new one is in place.
    """
    if target.exists():
        old = target.with_name(f".tmp-old-{target.name}-{os.getpid()}")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old)
    else:
        os.rename(tmp, target)
