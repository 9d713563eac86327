"""Small JSON documents kept as VM home files (.vmsn, .vmss): encrypted when the VM is.

Written under the VM's DEK with the file's own label (so they cannot be swapped
for another file), or in clear for an unencrypted VM; read back with a format
check. Deep rekey, encrypt and decrypt treat them like every other home file.
"""

from __future__ import annotations

import json
from typing import Any

from durable.atomic import write_atomic
from vmcrypt import container
from vmcrypt.errors import VmError
from vmcrypt.keyref import DataKey
from vmcrypt.keys import KeyManager
from vmcrypt.vm import VmFile, VmHome
from vmcrypt.vm_encryption import read_vmx


def write_home_json(target: VmFile, body: dict[str, Any], key: DataKey | None) -> None:
    raw = json.dumps(body).encode()
    if key is None:
        write_atomic(target.path, raw)
    else:
        container.write_file(target.path, raw, key, label=target.label)


def read_home_json(vm: VmHome, target: VmFile, keys: KeyManager, fmt: int, what: str) -> dict[str, Any]:
    """The document, or VmError naming the file: wrong key, damage and unknown formats alike."""
    if container.is_container(target.path):
        reference = read_vmx(vm, None).reference
        if reference is None:
            raise VmError(f"the {what} is encrypted but the VM has no key safe", target.path)
        raw = container.read_file(target.path, keys.unlock(reference))
    else:
        raw = target.path.read_bytes()
    try:
        body = json.loads(raw)
        if not isinstance(body, dict) or body.get("format") != fmt:
            raise ValueError(f"format {body.get('format') if isinstance(body, dict) else None!r}")
        return body
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise VmError(f"the {what} cannot be read ({reason})", target.path) from None
