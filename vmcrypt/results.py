"""What an operation returns, as plain data: the JSON the service answers and the command line prints.

The same rows come out of the management service and of the local
administrator's command line, so ``--json`` looks the same either way and the
text the command line prints is made from them.
"""

from __future__ import annotations

from typing import Any

from vmcrypt.backup import Manifest
from vmcrypt.inventory import AuditEntry, VmRecord
from vmcrypt.power import PowerState
from vmcrypt.vm import VmHome
from vmcrypt.vm_encryption import OperationResult


def vm_row(record: VmRecord) -> dict[str, Any]:
    """A VM as the inventory has it; the vTPM's process id stays inside the service."""
    row = {k: v for k, v in record.__dict__.items() if k != "vtpm_pid"}
    row["power_state"] = PowerState(record.power_state).value
    return row


def operation_row(result: OperationResult, home: VmHome) -> dict[str, Any]:
    """The JSON row of a VM operation's result: operation, VM, whether it resumed, changed files, key provider and key
    id."""
    return {
        "operation": result.operation.value,
        "vm": home.name,
        "resumed": result.resumed,
        "changed": [str(f.path.relative_to(home.directory)) for f in result.changed],
        "changed_kinds": [f.kind.value for f in result.changed],
        "key_provider_id": result.reference.provider_id if result.reference else None,
        "key_id": result.reference.key_id if result.reference else None,
    }


def operation_text(data: dict[str, Any], verb: str) -> str:
    """The text a person reads for an ``operation_row``, headed by ``verb``."""
    lines = [f"{verb} {data['vm']}" + (" (resumed an interrupted run)" if data["resumed"] else "")]
    for kind, path in zip(data["changed_kinds"], data["changed"]):
        lines.append(f"  {kind:16} {path}")
    if not data["changed"]:
        lines.append("  no file needed to change")
    if data["key_id"]:
        lines.append(f"key provider {data['key_provider_id']}, key {data['key_id']}")
    return "\n".join(lines)


def created_row(home: VmHome) -> dict[str, Any]:
    """The JSON row of a newly created VM: name, .vmx path and the files of its home."""
    return {"vm": home.name, "vmx": str(home.vmx_path), "files": sorted(p.name for p in home.directory.iterdir())}


def manifest_row(manifest: Manifest) -> dict[str, Any]:
    """A backup manifest as a JSON row, its files included."""
    return {**manifest.__dict__, "files": [e.__dict__ for e in manifest.files]}


def audit_rows(entries: list[AuditEntry]) -> list[dict[str, Any]]:
    """Audit log entries as JSON rows."""
    return [e.__dict__ for e in entries]
