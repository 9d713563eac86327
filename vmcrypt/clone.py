"""Cloning a VM: a new VM with the source's hardware, EFI variables and disk contents.

By default the clone gets a new identity: new VM identifiers, its own KEK and DEK
when the source is encrypted, and, when the source has a vTPM, a newly
manufactured vTPM (new seeds, new EKs, new EK certificates). ``exact=True``
copies the vTPM state instead, so the clone answers as the same TPM; the vTPM
section is written only after the clone is encrypted, never in clear.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from certs.ca import CertificateAuthority
from durable.atomic import write_atomic
from vmcrypt import container, disk_stream
from vmcrypt.errors import VmError
from vmcrypt.keys import KeyManager
from vmcrypt.nvram import Nvram
from vmcrypt.vm import VmHome, VmSpec, create_vm
from vmcrypt.vm_encryption import encrypt_vm, read_vmx
from vmcrypt.vm_lock import lock_vm
from vmcrypt.vm_vtpm import VmNvramStore
from vmcrypt.vtpm_provision import add_vtpm, set_vtpm_present


def _plain_disk_size(path: Path) -> int:
    return container.read_header(path).plaintext_length if container.is_container(path) else path.stat().st_size


def clone_vm(source: VmHome, directory: Path, name: str, keys: KeyManager, ca: CertificateAuthority,
             *, exact: bool = False) -> VmHome:
    """Make ``name`` in ``directory`` a copy of ``source`` (see the module: a new identity unless ``exact``),
    encrypted under the source's provider when the source is; the source stays locked meanwhile.

    VmError for a source with more than one disk, VmBusyError while the source is in use; on any
    failure the half-made clone's directory is removed."""
    with lock_vm(source, "clone"):
        return _clone(source, directory, name, keys, ca, exact)


def _clone(source: VmHome, directory: Path, name: str, keys: KeyManager, ca: CertificateAuthority,
           exact: bool) -> VmHome:
    state = read_vmx(source, keys)
    settings = state.settings
    key = keys.unlock(state.reference) if state.reference else None
    disks = source.disk_files()
    if len(disks) > 1:
        raise VmError("only VMs with at most one virtual disk can be cloned", source.vmx_path)
    spec = VmSpec(name=name, hw_version=int(settings.get("virtualHW.version", "14")),
                  firmware=(settings.get("firmware") or "bios").lower(),
                  memory_mb=int(settings.get("memSize", "2048")), cpus=int(settings.get("numvcpus", "2")),
                  disk_bytes=_plain_disk_size(disks[0].path) if disks else 0,
                  guest_os=settings.get("guestOS", "other5xlinux-64"))
    with VmNvramStore.open(source.vmx_path, home=str(keys.registry.home)) as store:
        nvram = Nvram.parse(store.read_plain())
    vtpm_section = nvram.vtpm_state
    had_vtpm = vtpm_section is not None
    clone = create_vm(directory, spec)
    try:
        nvram.vtpm_state = None
        write_atomic(clone.nvram_path, nvram.build())
        if disks:
            (target,) = clone.disk_files()
            if key is not None and container.is_container(disks[0].path):  # sparse: holes read as zeros
                disk_stream.decrypt_disk(disks[0].path, key, destination=target.path)
            else:  # a plain disk, of a plain VM or of one whose disks are not encrypted
                disk_stream.copy_sparse(disks[0].path, target.path)
        if state.reference is not None or had_vtpm:
            provider = state.reference.provider_id if state.reference else None  # same provider as the source
            encrypt_vm(clone, keys, provider=provider, include_disks=bool(disks) and state.reference is not None)
        if had_vtpm and exact:
            with VmNvramStore.open(clone.vmx_path, home=str(keys.registry.home)) as store:
                store.load()
                store.save(vtpm_section)
            set_vtpm_present(clone, keys, True)
        elif had_vtpm:
            add_vtpm(clone, keys, ca)
    except BaseException:
        shutil.rmtree(clone.directory, ignore_errors=True)  # nothing half-made stays behind
        raise
    return clone
