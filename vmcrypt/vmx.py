"""The ``.vmx`` configuration file: ordered ``key = "value"`` settings.

Keys are case-insensitive (as VMware treats them) but keep their spelling.
Values are double-quoted; ``|`` starts a two-digit hex escape (``|22`` is a
quote, ``|7C`` a bar), which is how VMware stores characters that would
break the line format.

For an encrypted VM the settings split in two: those needed before any key
is available (identity, hardware, ``encryption.keySafe``) stay in clear; all
others are *sensitive* and move, encrypted under the VM's DEK, into
``encryption.data``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vmcrypt.errors import VmError

KEYSAFE = "encryption.keySafe"
ENCRYPTED_DATA = "encryption.data"

# Settings kept in clear in an encrypted VM: what an inventory needs to list,
# register and power on the VM before it can ask a key provider for the key.
CLEAR_PREFIXES = (
    ".encoding",
    "config.version",
    "virtualhw.",
    "displayname",
    "guestos",
    "firmware",
    "nvram",
    "uuid.",
    "vc.uuid",
    "memsize",
    "numvcpus",
    "encryption.",
    "vtpm.",
    "scsi",
    "sata",
    "nvme",
    "ide",
    "ethernet",
    "pcibridge",
    "floppy",
    "usb",
    "svga.",
    "sched.",
    "vmci0.",
    "hpet0.",
    "managedby.",
)

_LINE = re.compile(r'^\s*([^=\s#][^=]*?)\s*=\s*"(.*)"\s*$')
_ESCAPE = re.compile(r"\|([0-9A-Fa-f]{2})")


def is_sensitive(key: str) -> bool:
    """True if ``key`` belongs in ``encryption.data`` when the VM is encrypted."""
    lowered = key.lower()
    return not any(lowered == p.rstrip(".") or lowered.startswith(p) for p in CLEAR_PREFIXES)


def escape_value(value: str) -> str:
    """A value escaped for a .vmx line: ``"``, ``|`` and control characters as ``|XX`` (hex)."""
    out = []
    for ch in value:
        if ch in '"|' or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"|{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_value(value: str) -> str:
    """A .vmx value with its ``|XX`` escapes decoded."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)


@dataclass
class VmxConfig:
    """Ordered settings with case-insensitive lookup."""

    _items: dict[str, tuple[str, str]] = field(default_factory=dict)  # lower key -> (key, value)

    @classmethod
    def parse(cls, text: str, name: str = "<vmx>") -> "VmxConfig":
        """The settings of .vmx text (blank and ``#`` lines skipped); VmError naming ``name`` and the line for one that
        is not ``key = "value"``."""
        config = cls()
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            match = _LINE.match(line)
            if not match:
                raise VmError(f"line {number} is not a 'key = \"value\"' setting", name)
            config[match.group(1)] = unescape_value(match.group(2))
        return config

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, str]]) -> "VmxConfig":
        """A configuration from (key, value) pairs, a later key replacing an earlier one."""
        config = cls()
        for key, value in items:
            config[key] = value
        return config

    def render(self) -> str:
        """The configuration as .vmx text, one ``key = "value"`` line per setting, in order."""
        return "".join(f'{key} = "{escape_value(value)}"\n' for key, value in self.items())

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()][1]

    def __setitem__(self, key: str, value: str) -> None:
        existing = self._items.get(key.lower())
        self._items[key.lower()] = (existing[0] if existing else key, str(value))

    def __delitem__(self, key: str) -> None:
        del self._items[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of ``key`` (keys are case-insensitive), or ``default``."""
        entry = self._items.get(key.lower())
        return entry[1] if entry else default

    def items(self) -> list[tuple[str, str]]:
        """The (key, value) pairs in order, keys as first written."""
        return list(self._items.values())

    def split_sensitive(self) -> tuple["VmxConfig", "VmxConfig"]:
        """(clear part, sensitive part) of these settings."""
        clear, sensitive = VmxConfig(), VmxConfig()
        for key, value in self.items():
            (sensitive if is_sensitive(key) else clear)[key] = value
        return clear, sensitive

    def merged(self, other: "VmxConfig") -> "VmxConfig":
        """A new configuration: these settings with ``other``'s added or replacing them."""
        result = VmxConfig.from_items(self.items())
        for key, value in other.items():
            result[key] = value
        return result
