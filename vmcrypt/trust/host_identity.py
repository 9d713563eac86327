"""A host's identity read from its directory: the EK certificates in its TPM's NV (for the export).

The TPM state is opened read-only (no persistence callback): reading NV changes nothing on disk.
"""

from __future__ import annotations

from pathlib import Path

from vmcrypt.errors import VmcryptError
from vmcrypt.trust.host_boot import TPM_DIR, read_ek_certificates
from vtpm.client import TpmClient
from vtpm.engine import Tpm
from vtpm.storage import PlainStateStore


def host_ek_certificates(host_dir: Path) -> list[bytes]:
    """The DER EK certificates of the host's TPM; VmcryptError if the host has no TPM or none."""
    state = PlainStateStore(Path(host_dir) / TPM_DIR).load() if (Path(host_dir) / TPM_DIR).is_dir() else None
    if state is None:
        raise VmcryptError(f"host {Path(host_dir).name} has no TPM in {host_dir} (boot it first)")
    client = TpmClient(Tpm(state))
    client.startup()
    found = list(read_ek_certificates(client).values())
    if not found:
        raise VmcryptError(f"host {Path(host_dir).name}: its TPM holds no EK certificate")
    return found
