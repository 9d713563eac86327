"""Where the management plane keeps its state: the management home directory."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "VMCRYPT_HOME"


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--home`` if given, else ``$VMCRYPT_HOME``, else ``~/.local/share/vmcrypt``; created 0700."""
    if explicit:
        home = Path(explicit)
    elif os.environ.get(ENV_HOME):
        home = Path(os.environ[ENV_HOME])
    else:
        home = Path.home() / ".local" / "share" / "vmcrypt"
    home = home.expanduser().absolute()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home
