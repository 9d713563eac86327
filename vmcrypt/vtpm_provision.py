"""Manufacturing a VM's vTPM: PCR banks, EKs and their certificates, stored in the VM's .nvram.

Like a TPM vendor's factory: the EKs (RSA 2048 and ECC P-256 by default) are created
from the new endorsement seed, certified by the management CA, and the certificates are
written to the profile's NV indices with platform authorization. The vTPM never talks
to the CA afterwards; reissuing replaces the certificates, never the EK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.ca import CertificateAuthority
from certs.ek import TpmIdentity
from certs.validate import EkCertificateError, validate_ek_certificate
from durable.atomic import write_atomic
from vmcrypt.errors import VmError
from vmcrypt.keys import KeyManager
from vmcrypt.vm import VmHome
from vmcrypt.vm_encryption import encrypt_vm, read_vmx, render_vmx
from vmcrypt.vm_lock import lock_vm
from vmcrypt.vm_vtpm import VmNvramStore
from vtpm.client import EK_CERT_NV_ATTRIBUTES, TpmClient, TpmCommandError
from vtpm.commands.capability import FIRMWARE_VERSION, MANUFACTURER, SPEC_LEVEL, SPEC_REVISION
from vtpm.constants import ALG, RH
from vtpm.ek import EkKind, ek_template
from vtpm.engine import Tpm
from vtpm.objects import LoadedObject, Public
from vtpm.state import TpmState

DEFAULT_EKS = (EkKind.RSA2048, EkKind.ECC_P256)
DEFAULT_BANKS = (ALG.SHA1, ALG.SHA256)
MIN_HW_VERSION = 14
IDENTITY = TpmIdentity(int.from_bytes(MANUFACTURER, "big"), "vmcrypt-vtpm", FIRMWARE_VERSION[0], "2.0",
                       SPEC_LEVEL, SPEC_REVISION)


@dataclass(frozen=True)
class ProvisionedEk:
    """An EK certificate written into a vTPM: the EK kind, its NV index and the certificate."""
    kind: EkKind
    nv_index: int
    certificate: x509.Certificate


def ek_public_key(client: TpmClient, kind: EkKind) -> Any:
    """Create the EK of ``kind`` from the endorsement seed and return its public key."""
    handle, public = client.create_primary(RH.ENDORSEMENT, ek_template(kind).template)
    client.flush(handle)
    return LoadedObject(Public.parse(public), None, RH.ENDORSEMENT, b"").public_key()


def provision_ek_certificates(client: TpmClient, ca: CertificateAuthority, subject: str,
                              kinds: tuple[EkKind, ...] = DEFAULT_EKS, *, replace: bool = False,
                              vm_path: str | None = None) -> list[ProvisionedEk]:
    """Issue a certificate for each EK kind from ``ca`` and write it into the EK certificate index of the vTPM behind
    ``client``; with ``replace``, a certificate already there is superseded first."""
    done = []
    for kind in kinds:
        template = ek_template(kind)
        cert = ca.issue_ek(ek_public_key(client, kind), IDENTITY, f"{subject} {kind.value}", vm_path)
        der = cert.public_bytes(serialization.Encoding.DER)
        if replace:
            previous = _stored_certificate(client, template.cert_index)
            if previous is not None:
                ca.supersede(previous)
                client.nv_undefine(template.cert_index)
        client.nv_define(template.cert_index, EK_CERT_NV_ATTRIBUTES, len(der))
        client.nv_write(template.cert_index, der)
        done.append(ProvisionedEk(kind, template.cert_index, cert))
    return done


def _stored_certificate(client: TpmClient, index: int) -> x509.Certificate | None:
    try:
        size = client.nv_read_public(index)
    except TpmCommandError:
        return None  # not there yet
    try:
        return x509.load_der_x509_certificate(client.nv_read(index, size))
    except ValueError:
        return None  # unreadable: replaced all the same


def manufacture(ca: CertificateAuthority, subject: str, banks: tuple[int, ...] = DEFAULT_BANKS,
                vm_path: str | None = None) -> tuple[TpmState, list[ProvisionedEk]]:
    """A new vTPM: fresh seeds, the VM's PCR banks, EK certificates; shut down cleanly."""
    tpm = Tpm(TpmState.manufacture())
    client = TpmClient(tpm)
    client.startup()
    client.pcr_allocate(list(banks))
    eks = provision_ek_certificates(client, ca, subject, vm_path=vm_path)
    client.shutdown()
    return tpm.state, eks


def add_vtpm(vm: VmHome, keys: KeyManager, ca: CertificateAuthority) -> list[ProvisionedEk]:
    """Give a VM a vTPM: it must be EFI with hardware version 14+, and it gets encrypted first."""
    with lock_vm(vm, "add a vTPM"):
        return _add_vtpm(vm, keys, ca)


def _add_vtpm(vm: VmHome, keys: KeyManager, ca: CertificateAuthority) -> list[ProvisionedEk]:
    state = read_vmx(vm, None)
    settings = state.settings
    hw = int(settings.get("virtualHW.version", "0") or 0)
    if hw < MIN_HW_VERSION:
        raise VmError(f"a vTPM needs virtual hardware version {MIN_HW_VERSION} or later (this VM has {hw})", vm.vmx_path)
    if (settings.get("firmware") or "bios").lower() != "efi":
        raise VmError("a vTPM needs EFI firmware", vm.vmx_path)
    if state.reference is None:
        encrypt_vm(vm, keys)
    with VmNvramStore.open(vm.vmx_path, home=str(keys.registry.home)) as store:
        if store.load() is not None:
            raise VmError("the VM already has a vTPM", vm.vmx_path)
        tpm_state, eks = manufacture(ca, vm.name, vm_path=str(vm.vmx_path.resolve()))
        store.save(tpm_state.to_bytes())
    set_vtpm_present(vm, keys, True)
    return eks


def set_vtpm_present(vm: VmHome, keys: KeyManager, present: bool) -> None:
    """Record in the .vmx whether the VM has a vTPM device."""
    with lock_vm(vm, "change the vTPM setting"):
        full = read_vmx(vm, keys)
        full.settings["vtpm.present"] = "TRUE" if present else "FALSE"
        write_atomic(vm.vmx_path, render_vmx(full.settings, keys.unlock(full.reference) if full.reference else None,
                                             full.record))


def _vm_tpm(store: VmNvramStore, vm: VmHome, *, persist: bool) -> tuple[Tpm, TpmClient]:
    """The VM's vTPM in-process, started; with ``persist`` its changes go back to the .nvram."""
    state = store.load()
    if state is None:
        raise VmError("the VM has no vTPM", vm.vmx_path)
    tpm = Tpm(state, persist=store.save if persist else None)
    client = TpmClient(tpm)
    client.startup()
    return tpm, client


def reissue_ek_certificates(vm: VmHome, keys: KeyManager, ca: CertificateAuthority) -> list[ProvisionedEk]:
    """New EK certificates from the current CA; the EKs themselves do not change."""
    with lock_vm(vm, "reissue EK certificates"), VmNvramStore.open(vm.vmx_path, home=str(keys.registry.home)) as store:
        tpm, client = _vm_tpm(store, vm, persist=False)
        eks = provision_ek_certificates(client, ca, vm.name, DEFAULT_EKS, replace=True,
                                        vm_path=str(vm.vmx_path.resolve()))
        client.shutdown()
        store.save(tpm.state.to_bytes())  # one atomic write: old certificates or new ones, never none
    return eks


def verify_ek_certificates(vm: VmHome, keys: KeyManager, trust_store: list[x509.Certificate],
                           intermediates: list[x509.Certificate],
                           crls: list[x509.CertificateRevocationList] = ()) -> list[dict[str, Any]]:
    """Each EK certificate in the VM's vTPM checked against its EK and the trust store."""
    results = []
    with lock_vm(vm, "verify EK certificates"), VmNvramStore.open(vm.vmx_path, home=str(keys.registry.home)) as store:
        tpm, client = _vm_tpm(store, vm, persist=False)  # checking changes nothing
        for kind in DEFAULT_EKS:
            index = ek_template(kind).cert_index
            cert = _stored_certificate(client, index)
            if cert is None:
                results.append({"ek": kind.value, "nv_index": f"0x{index:08x}", "valid": False,
                                "reason": "no readable certificate in NV"})
                continue
            try:
                info = validate_ek_certificate(cert, ek_public_key(client, kind), trust_store,
                                               intermediates=intermediates, crls=crls)
                results.append({"ek": kind.value, "nv_index": f"0x{index:08x}", "valid": True, **info})
            except EkCertificateError as exc:
                results.append({"ek": kind.value, "nv_index": f"0x{index:08x}", "valid": False, "reason": exc.reason})
    return results
