"""Measured boot of an ESXi-like host into its own hardware-like TPM.

The host's TPM is our engine with its state in the host's directory
(``<management home>/hosts/<name>/tpm``, 0600 files). It is manufactured on first boot:
SHA-1 and SHA-256 PCR banks, the default RSA 2048 and ECC P-256 EKs, and their
certificates from the TPM manufacturer's CA (``manufacturer.ManufacturerCA``, not the
VMCA-like CA) in the EK Credential Profile's NV indices.

Every boot starts the TPM (Startup(CLEAR): PCRs reset) and runs the chain, each step logged
in the TCG crypto-agile event log *and* extended into every allocated bank with the same
digests (``vtpm.eventlog.EventLogWriter.measure`` returns what is extended):

======  ==========================================  ===========================================
PCR     what (PC Client Platform Firmware Profile)  events
======  ==========================================  ===========================================
0       platform firmware code (SRTM)               EV_S_CRTM_VERSION, EV_EFI_PLATFORM_FIRMWARE_BLOB2
                                                    per firmware volume
7       Secure Boot policy                          EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot, PK,
                                                    KEK, db, dbx
4       boot manager code                           EV_EFI_ACTION (boot option), then
                                                    EV_EFI_BOOT_SERVICES_APPLICATION (boot loader)
0-7     end of pre-OS                               EV_SEPARATOR each
8       static OS: configuration (as GRUB uses it)  EV_IPL "esxi-version: V", "kernel_cmdline: ...",
                                                    "vib-signature: NAME valid|invalid|unsigned"
9       static OS: what was loaded (as GRUB)        EV_IPL "kernel:NAME", "vib:NAME" (file digests)
5       boot manager data                           EV_EFI_ACTION Exit Boot Services
10      IMA (Linux convention)                      runtime list: boot_aggregate, then every file
======  ==========================================  ===========================================

The host checks each VIB's vendor signature while it boots but does not stop: it boots and
measures what it booted and the result of the check, so a tampered host is caught by
attestation rather than trusted to catch itself.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from durable.atomic import write_atomic
from vmcrypt.trust.images import BootImage, ComponentKind, Tamper, make_image, tampered, vib_signature_valid
from vmcrypt.trust.manufacturer import MANUFACTURER_DIR, ManufacturerCA
from vmcrypt.trust.measurements import CMDLINE_PREFIX, SIGNATURE_PREFIX, VERSION_PREFIX
from vmcrypt.vtpm_provision import ek_public_key
from vtpm.client import EK_CERT_NV_ATTRIBUTES, TpmClient, TpmCommandError
from vtpm.constants import ALG
from vtpm.ek import EkKind, ek_template
from vtpm.engine import Tpm
from vtpm.eventlog import SEPARATOR_DATA, EventLogWriter, EventType
from vtpm.ima import BOOT_AGGREGATE, ImaLogWriter, boot_aggregate
from vtpm.state import TpmState
from vtpm.storage import PlainStateStore

HOST_BANKS = (ALG.SHA1, ALG.SHA256)
HOST_EKS = (EkKind.RSA2048, EkKind.ECC_P256)
TPM_DIR = "tpm"
EVENT_LOG_FILE = "binary_bios_measurements"
IMA_LOG_FILE = "binary_runtime_measurements"
OLD_VERSION = "7.0.3"  # what Tamper.OLD_VERSION boots instead of the image given
FIRMWARE_VERSION = "HWTP UEFI 2.8 build 1130"

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
SIGNATURE_OWNER = uuid.UUID("77fa9abd-0359-4d32-bd60-28f4e78f784b")
SECURE_BOOT_VARIABLES = (("SecureBoot", EFI_GLOBAL_VARIABLE), ("PK", EFI_GLOBAL_VARIABLE),
                         ("KEK", EFI_GLOBAL_VARIABLE), ("db", EFI_IMAGE_SECURITY_DATABASE),
                         ("dbx", EFI_IMAGE_SECURITY_DATABASE))
BOOT_OPTION_ACTION = b"Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES = (b"Exit Boot Services Invocation", b"Exit Boot Services Returned with Success")


class HostBootError(Exception):
    """The host cannot boot: its directory or TPM state is unusable."""


@dataclass
class BootedHost:
    """A host after boot: its TPM running in-process, its logs on disk.

    The PCRs live in this process (a TPM's PCRs do not survive power-off): a host agent in
    another process boots the host there (``boot_host`` again is a reboot with the same
    measurements; the TPM's persistent state is shared through the host's directory)."""

    name: str
    directory: Path
    version: str  # the version of the image it booted (what its log proves)
    tpm: Tpm
    client: TpmClient
    event_log_path: Path
    ima_log_path: Path
    secure_boot: bool
    ek_certificates: dict[EkKind, bytes] = field(default_factory=dict)  # DER, from the TPM's NV

    @property
    def event_log(self) -> bytes:
        """The TCG event log of the last boot, read from disk (what the host hands a verifier)."""
        return self.event_log_path.read_bytes()

    @property
    def ima_log(self) -> bytes:
        """The binary IMA runtime list of the last boot, read from disk."""
        return self.ima_log_path.read_bytes()


# ----------------------------------------------------------------------------- UEFI event data


def variable_data(name: str, guid: uuid.UUID, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA: VariableName GUID, name length (chars), data length, UTF-16LE name, data."""
    unicode_name = name.encode("utf-16-le")
    return guid.bytes_le + struct.pack("<QQ", len(name), len(data)) + unicode_name + data


def signature_list(hashes: list[bytes]) -> bytes:
    """An EFI_SIGNATURE_LIST of SHA-256 entries (what db and dbx hold for binaries)."""
    entry_size = 16 + 32
    return (EFI_CERT_SHA256.bytes_le + struct.pack("<III", 28 + entry_size * len(hashes), 0, entry_size)
            + b"".join(SIGNATURE_OWNER.bytes_le + h for h in hashes))


def firmware_blob2(description: str, base: int, length: int) -> bytes:
    """UEFI_PLATFORM_FIRMWARE_BLOB2: description length (one byte), ASCII description, base and length."""
    text = description.encode("ascii")
    return bytes([len(text)]) + text + struct.pack("<QQ", base, length)


def image_load_event(path: str, length: int, location: int = 0x7E000000) -> bytes:
    """UEFI_IMAGE_LOAD_EVENT with a device path of one media file-path node and the end node."""
    file_path = ("\\" + path).encode("utf-16-le") + b"\0\0"
    device_path = struct.pack("<BBH", 4, 4, 4 + len(file_path)) + file_path + struct.pack("<BBH", 0x7F, 0xFF, 4)
    return struct.pack("<QQQQ", location, length, 0, len(device_path)) + device_path


def ipl_string(prefix: str, value: str) -> tuple[bytes, bytes]:
    """(event data, measured bytes) of a PCR 8 string as GRUB logs one: ``prefix value`` NUL-terminated,
    the digest over ``value`` alone (what tpm2_eventlog checks)."""
    return (prefix + value).encode() + b"\0", value.encode()


FOREIGN_DB_KEY = hashlib.sha256(b"key enrolled by someone else").digest()  # what Tamper.FOREIGN_DB_KEY adds to db


def secure_boot_variables(image: BootImage, enabled: bool, extra_db: tuple[bytes, ...] = ()) -> list[bytes]:
    """The UEFI_VARIABLE_DATA PCR 7 gets, in order: SecureBoot (1 or 0 by ``enabled``), PK, KEK, db (the
    image vendor key's SHA-256, then ``extra_db``) and dbx; the verifier reads them back from the log."""
    vendor = hashlib.sha256(image.manifest.vendor_key).digest()
    values = {"SecureBoot": b"\x01" if enabled else b"\x00",
              "PK": signature_list([hashlib.sha256(b"HWTP platform key").digest()]),
              "KEK": signature_list([hashlib.sha256(b"HWTP key exchange key").digest()]),
              "db": signature_list([vendor, *extra_db]),
              "dbx": signature_list([hashlib.sha256(b"revoked boot loader").digest()])}
    return [variable_data(name, guid, values[name]) for name, guid in SECURE_BOOT_VARIABLES]


# ----------------------------------------------------------------------------- the TPM


def _manufacture(store: PlainStateStore, name: str, manufacturer: ManufacturerCA) -> None:
    tpm = Tpm(TpmState.manufacture(), persist=store.save)
    client = TpmClient(tpm)
    client.startup()
    client.pcr_allocate(list(HOST_BANKS))
    for kind in HOST_EKS:
        cert = manufacturer.issue_ek(ek_public_key(client, kind), f"{name} {kind.value}")
        der = cert.public_bytes(serialization.Encoding.DER)
        index = ek_template(kind).cert_index
        client.nv_define(index, EK_CERT_NV_ATTRIBUTES, len(der))
        client.nv_write(index, der)
    client.shutdown()
    store.save(tpm.state.to_bytes())


def _start_tpm(directory: Path, name: str, manufacturer: ManufacturerCA | None) -> tuple[Tpm, TpmClient]:
    store = PlainStateStore(directory / TPM_DIR)
    if store.load() is None:
        _manufacture(store, name, manufacturer or ManufacturerCA(directory.parent.parent / MANUFACTURER_DIR))
    state = store.load()
    assert state is not None
    tpm = Tpm(state, persist=store.save)  # power on: PCRs at their reset values
    client = TpmClient(tpm)
    client.startup()
    return tpm, client


def read_ek_certificates(client: TpmClient) -> dict[EkKind, bytes]:
    """The DER EK certificates in the TPM's EK Credential Profile NV indices (RSA 2048, ECC P-256); an index
    the TPM does not have is left out, one that holds no readable certificate raises ValueError."""
    found = {}
    for kind in HOST_EKS:
        index = ek_template(kind).cert_index
        try:
            der = client.nv_read(index, client.nv_read_public(index))
        except TpmCommandError:
            continue
        x509.load_der_x509_certificate(der)  # a readable certificate, or ValueError
        found[kind] = der
    return found


# ----------------------------------------------------------------------------- boot


class _Measurer:
    """Logs an event and extends the same digests into the TPM, in every bank."""

    def __init__(self, client: TpmClient) -> None:
        self.client = client
        self.log = EventLogWriter(HOST_BANKS)

    def __call__(self, pcr: int, event_type: int, data: bytes, measured: bytes | None = None) -> None:
        self.client.pcr_extend(pcr, self.log.measure(pcr, event_type, data, measured))


def _measure_boot(measure: _Measurer, image: BootImage, secure_boot: bool, extra_db: tuple[bytes, ...] = ()) -> None:
    manifest = image.manifest
    measure(0, EventType.EV_S_CRTM_VERSION, (FIRMWARE_VERSION + "\0").encode("utf-16-le"))
    base = 0xFF000000
    for component in manifest.by_kind(ComponentKind.FIRMWARE):
        content = image.contents[component.name]
        measure(0, EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2, firmware_blob2(component.name, base, len(content)),
                content)
        base += len(content)
    for variable in secure_boot_variables(image, secure_boot, extra_db):
        measure(7, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, variable)
    measure(4, EventType.EV_EFI_ACTION, BOOT_OPTION_ACTION)
    for pcr in range(8):
        measure(pcr, EventType.EV_SEPARATOR, SEPARATOR_DATA)
    for loader in manifest.by_kind(ComponentKind.BOOTLOADER):
        content = image.contents[loader.name]
        measure(4, EventType.EV_EFI_BOOT_SERVICES_APPLICATION, image_load_event(f"EFI\\BOOT\\{loader.name}",
                                                                                len(content)), content)
    # The boot loader measures the static OS: configuration into PCR 8, what it loads into PCR 9.
    measure(8, EventType.EV_IPL, *ipl_string(VERSION_PREFIX, manifest.version))
    measure(8, EventType.EV_IPL, *ipl_string(CMDLINE_PREFIX, manifest.kernel_cmdline))
    for kernel in manifest.by_kind(ComponentKind.KERNEL):
        measure(9, EventType.EV_IPL, f"kernel:{kernel.name}".encode(), image.contents[kernel.name])
    vendor = manifest.vendor_public_key()
    for vib in manifest.by_kind(ComponentKind.VIB):
        content = image.contents[vib.name]
        if vib.signature is None:
            verdict = "unsigned"
        else:
            verdict = "valid" if vib_signature_valid(vendor, vib.signature, hashlib.sha256(content).digest()) \
                else "invalid"
        measure(8, EventType.EV_IPL, *ipl_string(SIGNATURE_PREFIX, f"{vib.name} {verdict}"))
        measure(9, EventType.EV_IPL, f"vib:{vib.name}".encode(), content)
    for action in EXIT_BOOT_SERVICES:
        measure(5, EventType.EV_EFI_ACTION, action)


def _measure_runtime(client: TpmClient, image: BootImage) -> bytes:
    ima = ImaLogWriter(HOST_BANKS)
    sha256_pcrs = client.pcr_read({ALG.SHA256: range(10)})[ALG.SHA256]
    client.pcr_extend(10, ima.measure(BOOT_AGGREGATE, boot_aggregate(sha256_pcrs, ALG.SHA256)))
    for path in sorted(image.runtime_contents):
        client.pcr_extend(10, ima.measure(path, hashlib.sha256(image.runtime_contents[path]).digest()))
    return ima.to_bytes()


def boot_host(host_dir: str | os.PathLike[str], image: BootImage, *, secure_boot: bool = True,
              tamper: Tamper | str | None = None, manufacturer: ManufacturerCA | None = None,
              name: str | None = None) -> BootedHost:
    """Power on the host in ``host_dir`` and boot ``image`` (optionally tampered) with measured boot.

    The TPM is manufactured on the first boot (EK certificates from ``manufacturer``, by default
    the one in ``<management home>/tpm-manufacturer``, two levels above ``host_dir``). The logs
    are written to the host's directory (0600)."""
    directory = Path(host_dir)
    name = name or directory.name
    extra_db: tuple[bytes, ...] = ()
    if tamper is not None:
        tamper = Tamper(tamper)
        if tamper == Tamper.SECURE_BOOT_OFF:
            secure_boot = False
        elif tamper == Tamper.FOREIGN_DB_KEY:
            extra_db = (FOREIGN_DB_KEY,)
        elif tamper == Tamper.OLD_VERSION:
            image = make_image(OLD_VERSION)
        else:
            image = tampered(image, tamper)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tpm, client = _start_tpm(directory, name, manufacturer)
    measure = _Measurer(client)
    _measure_boot(measure, image, secure_boot, extra_db)
    ima_log = _measure_runtime(client, image)
    event_log_path, ima_log_path = directory / EVENT_LOG_FILE, directory / IMA_LOG_FILE
    write_atomic(event_log_path, measure.log.to_bytes(), mode=0o600)
    write_atomic(ima_log_path, ima_log, mode=0o600)
    return BootedHost(name, directory, image.version, tpm, client, event_log_path, ima_log_path, secure_boot,
                      read_ek_certificates(client))
