"""Files that defend themselves: what a hostile operator with write access to the datastore
and the management home tries, and what each attempt now gets.

Inputs tried (each must be refused with one clear ``error:`` line naming the file and why, no
traceback, every file left byte for byte as it was):

- ``providers.json`` with wrong types, a list, ``null`` or a string.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import snapshot


def refused(result, *phrases: str) -> str:
    """Exit 1, exactly one `error:` line holding every phrase, no traceback; returns the line."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for phrase in phrases:
        assert phrase in errors[0], f"{phrase!r} not in {errors[0]!r}"
    return errors[0]


# ----------------------------------------------------------------------------- 5. inventory and configuration files


def _files_of(*directories: Path) -> dict[str, bytes]:
    """Everything but SQLite's -wal/-shm side files (a reader may create and remove them)."""
    found = {}
    for directory in directories:
        for name, data in snapshot(directory).items():
            if not name.endswith(("-wal", "-shm")):
                found[f"{directory.name}/{name}"] = data
    return found


@pytest.mark.parametrize("config", [{"default": 5, "providers": []}, {"default": None, "providers": {}},
                                    {"default": None, "providers": [{"provider_id": 1, "name": "n", "kind": "native",
                                                                     "settings": {}}]},
                                    [], None, "text"])
def test_providers_json_with_wrong_types(tmp_path: Path, home: Path, vmcrypt_cli, config) -> None:
    vm = tmp_path / "vm1"
    vmcrypt_cli("vm", "create", str(vm), check=True)
    (home / "providers.json").write_text(json.dumps(config))
    before = _files_of(home, vm)
    refused(vmcrypt_cli("provider", "list"), "providers.json", "provider configuration is unreadable")
    refused(vmcrypt_cli("encrypt", str(vm)), "providers.json")
    assert _files_of(home, vm) == before
