"""Small JSON documents kept as VM home files (.vmsn, .vmss): encrypted when the VM is.

Written under the VM's DEK with the file's own label and the VM's id (so they cannot
be swapped for another file or copied from another VM) and added to the VM's
encryption record; or in clear for an unencrypted VM. Read back with those checks
and a format check. Deep rekey, encrypt and decrypt treat them like every other
home file.
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
from vmcrypt.vm_encryption import read_vmx, set_listed
from vmcrypt.vm_record import check_binding


def write_home_json(vm: VmHome, target: VmFile, body: dict[str, Any], key: DataKey | None) -> None:
    """Write ``body`` as JSON to ``target``: a container under the VM's DEK with the file's label and the VM's id,
    listed in the encryption record, when ``key`` is given; an atomic plain write otherwise."""
    raw = json.dumps(body).encode()
    if key is None:
        write_atomic(target.path, raw)
        return
    record = read_vmx(vm, None, key=key).record
    container.write_file(target.path, raw, key, label=target.label, vm_id=record.vm_id if record else "")
    set_listed(vm, key, target, True)


def read_home_json(vm: VmHome, target: VmFile, keys: KeyManager, fmt: int, what: str) -> dict[str, Any]:
    """The document, or VmError naming the file: wrong key, another file or VM, damage and unknown formats alike."""
    state = read_vmx(vm, keys)
    if container.is_container(target.path):
        if state.reference is None:
            raise VmError(f"the {what} is encrypted but the VM has no key safe", target.path)
        check_binding(target, container.read_header(target.path), state.record.vm_id if state.record else None,
                      {state.reference})
        raw = container.read_file(target.path, keys.unlock(state.reference))
    elif state.reference is not None:
        raise VmError(f"the {what} is not encrypted, but the VM is: it was damaged or replaced", target.path)
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
