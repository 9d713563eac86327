"""Where the management plane keeps its state: the management home directory."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "VMCRYPT_HOME"


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--home`` if given, else ``$VMCRYPT_HOME``, else ``~/.local/share/vmcrypt``; created 0700."""
    home = home_path(explicit)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def home_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the management home is (as ``resolve_home`` finds it), without creating or reading it."""
    if explicit:
        home = Path(explicit)
    elif os.environ.get(ENV_HOME):
        home = Path(os.environ[ENV_HOME])
    else:
        home = Path.home() / ".local" / "share" / "vmcrypt"
    return home.expanduser().absolute()
