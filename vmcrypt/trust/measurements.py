"""Reading a host's logs as facts, and checking those facts against a trusted image.

The verifier first proves the logs (they replay to the PCR values the AK signed); this
module then says what they mean: which firmware, boot loader, kernel and VIBs were
measured with which SHA-256 digests, what the VIB signature checks said, whether Secure
Boot was on, which version booted. Events whose digest is the hash of their own data
(the PCR 8 strings, UEFI variables) are believed only when that holds, so a log cannot
say one thing and extend another. Every problem is a reason naming the component.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from vmcrypt.trust.images import ComponentKind, ImageManifest
from vmcrypt.trust.policy import ImageIndex
from vtpm.constants import ALG
from vtpm.eventlog import Event, EventType
from vtpm.ima import BOOT_AGGREGATE, ImaEntry

# The strings of the static-OS events in PCR 8, as the host's boot loader logs them.
VERSION_PREFIX = "esxi-version: "
CMDLINE_PREFIX = "kernel_cmdline: "
SIGNATURE_PREFIX = "vib-signature: "

# plain ints: compared and looked up for every event of every attestation, where enum members cost more
_SHA256 = int(ALG.SHA256)
_IPL = int(EventType.EV_IPL)
_VARIABLE = int(EventType.EV_EFI_VARIABLE_DRIVER_CONFIG)
_BLOB2 = int(EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2)
_APPLICATION = int(EventType.EV_EFI_BOOT_SERVICES_APPLICATION)
_VARIABLE_HEAD = struct.Struct("<16sQQ")
_SECURE_BOOT_NAME = "SecureBoot".encode("utf-16-le")
# The Secure Boot policy variables PCR 7 holds besides SecureBoot: UTF-16LE name -> name.
SECURE_BOOT_DATABASES = ("PK", "KEK", "db", "dbx")
_DATABASE_NAMES = {name.encode("utf-16-le"): name for name in SECURE_BOOT_DATABASES}
_SIGNATURE_LIST_HEAD = struct.Struct("<16sIII")  # SignatureType, ListSize, HeaderSize, SignatureSize
_SIGNATURE_OWNER_SIZE = 16
_EFI_CERT_SHA256 = bytes.fromhex("2616c4c14c509240aca941f936934328")  # EFI_CERT_SHA256_GUID, as stored (LE)
_MODULE_KINDS = {b"kernel": ComponentKind.KERNEL, b"vib": ComponentKind.VIB}
_SIGNATURE_PREFIX = SIGNATURE_PREFIX.encode()
_VERSION_PREFIX = VERSION_PREFIX.encode()
_CMDLINE_PREFIX = CMDLINE_PREFIX.encode()
_KIND_LABEL = {ComponentKind.FIRMWARE: "firmware", ComponentKind.BOOTLOADER: "boot loader",
               ComponentKind.KERNEL: "kernel", ComponentKind.VIB: "VIB"}


@dataclass
class BootFacts:
    """What a boot log says, once its data-bound events have been checked."""

    version: str | None = None
    secure_boot: bool | None = None
    # PK, KEK, db, dbx as measured: each signature as a SHA-256 (an EFI_CERT_SHA256 entry's hash, the
    # hash of any other entry's data, e.g. a certificate's DER); a variable the log does not measure is missing.
    secure_boot_databases: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    cmdline: str | None = None
    measured: list[tuple[ComponentKind, str, bytes]] = field(default_factory=list)  # kind, name, SHA-256
    signature_checks: dict[str, str] = field(default_factory=dict)  # VIB -> valid / invalid / unsigned
    problems: list[str] = field(default_factory=list)


def _where(event: Event) -> str:
    return f"event {event.number} (PCR {event.pcr} {event.type_name})"


def _firmware_name(data: bytes) -> str | None:
    if not data or len(data) != 1 + data[0] + 16:
        return None
    return data[1:1 + data[0]].decode("ascii", "replace")


def _image_path(data: bytes) -> str | None:
    """The file path of an UEFI_IMAGE_LOAD_EVENT's first media file-path node."""
    if len(data) < 32:
        return None
    (length,) = struct.unpack_from("<Q", data, 24)
    path = data[32:32 + length]
    if len(path) < 4 or path[0] != 4 or path[1] != 4:
        return None
    node = int.from_bytes(path[2:4], "little")
    text = path[4:node].decode("utf-16-le", "replace").rstrip("\0")
    return text.rsplit("\\", 1)[-1]


def reference_strings(manifests: Iterable[ImageManifest]) -> dict[bytes, tuple[bytes, str, bytes]]:
    """Reference values of the PCR 8 strings trusted images make their hosts log (version, kernel
    command line, a valid signature check per VIB): event data -> (prefix, value, SHA-256 of the
    value), read as ``read_boot_log`` reads a string. Computed once per policy, so a boot log's
    usual strings are checked by comparing digests instead of being split and hashed again."""
    table: dict[bytes, tuple[bytes, str, bytes]] = {}
    for manifest in manifests:
        strings = [(VERSION_PREFIX, manifest.version), (CMDLINE_PREFIX, manifest.kernel_cmdline)]
        strings += [(SIGNATURE_PREFIX, f"{c.name} valid") for c in manifest.components if c.kind == ComponentKind.VIB]
        for prefix, value in strings:
            data = (prefix + value).encode() + b"\0"
            space = data.find(b" ")
            if space < 0 or data[-1:] != b"\0":
                continue  # not a well-formed string: such an event takes the full path
            raw = data[space + 1:-1]
            table[data] = data[:space + 1], raw.decode("utf-8"), hashlib.sha256(raw).digest()
    return table


def read_boot_log(events: Iterable[Event],
                  strings: Mapping[bytes, tuple[bytes, str, bytes]] = MappingProxyType({})) -> BootFacts:
    """The facts of a parsed boot log. ``strings`` are ``reference_strings`` of the trusted images:
    a PCR 8 string found there has its digest compared with the reference SHA-256 of its value,
    which is the check the full path makes by hashing. (Runs for every attestation: the usual
    events, PCR 8 and 9 strings, are handled first, and prefixes and labels compared as bytes.)"""
    facts = BootFacts()
    problems, measured, signature_checks = facts.problems, facts.measured, facts.signature_checks
    append, sha256 = measured.append, hashlib.sha256
    for event in events:
        _, _, pcr, kind, digests, data = event
        if kind == _IPL and pcr == 9:
            label, _, name = data.partition(b":")  # ':' is ASCII: as partitioning the decoded text
            component = _MODULE_KINDS.get(label)
            if component is None:
                problems.append(f"event log: {_where(event)} loads an unknown kind of module "
                                f"'{label.decode('utf-8', 'replace')}'")
            else:
                append((component, name.decode("utf-8", "replace"), digests[_SHA256]))
        elif kind == _IPL and pcr == 8:
            # a string ``prefix value\0``, believed only if its SHA-256 digest is the value's hash
            known = strings.get(data)
            if known is not None:
                prefix, value, value_digest = known
                if value_digest != digests.get(_SHA256):
                    problems.append(f"event log: {_where(event)} data does not match its sha256 digest")
                    continue
            else:
                space = data.find(b" ")
                if space < 0 or data[-1:] != b"\0":
                    problems.append(f"event log: {_where(event)} is not a 'prefix: value' string")
                    continue
                raw = data[space + 1:-1]
                if sha256(raw).digest() != digests.get(_SHA256):
                    problems.append(f"event log: {_where(event)} data does not match its sha256 digest")
                    continue
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    problems.append(f"event log: {_where(event)} is not UTF-8")
                    continue
                prefix = data[:space + 1]
            if prefix == _SIGNATURE_PREFIX:
                name, _, verdict = value.rpartition(" ")
                signature_checks[name] = verdict
            elif prefix == _VERSION_PREFIX:
                if facts.version is not None:
                    problems.append(f"version: the event log names a version twice ({_where(event)})")
                facts.version = value
            elif prefix == _CMDLINE_PREFIX:
                facts.cmdline = value
        elif pcr == 0 and kind == _BLOB2:
            append((ComponentKind.FIRMWARE, _firmware_name(data) or f"blob at event {event.number}",
                    digests[_SHA256]))
        elif pcr == 4 and kind == _APPLICATION:
            append((ComponentKind.BOOTLOADER, _image_path(data) or f"application at event {event.number}",
                    digests[_SHA256]))
        elif pcr == 7 and kind == _VARIABLE:
            if len(data) < _VARIABLE_HEAD.size:
                problems.append(f"event log: {_where(event)} is not a UEFI_VARIABLE_DATA")
                continue
            _, name_chars, data_size = _VARIABLE_HEAD.unpack_from(data)
            name_end = _VARIABLE_HEAD.size + 2 * name_chars
            if name_end + data_size != len(data):
                problems.append(f"event log: {_where(event)} sizes do not add up")
                continue
            name = data[_VARIABLE_HEAD.size:name_end]
            database = _DATABASE_NAMES.get(name)
            if name != _SECURE_BOOT_NAME and database is None:
                continue
            label = "SecureBoot" if database is None else database
            if sha256(data).digest() != digests.get(_SHA256):
                problems.append(f"event log: {_where(event)} {label} data does not match its sha256 digest")
                continue
            if database is None:
                facts.secure_boot = data[name_end:] == b"\x01"
                continue
            entries = signature_list_entries(data[name_end:])
            if entries is None:
                problems.append(f"event log: {_where(event)} {label} is not a list of EFI_SIGNATURE_LISTs")
                continue
            facts.secure_boot_databases[database] = entries
    return facts


def signature_list_entries(data: bytes) -> tuple[bytes, ...] | None:
    """Every signature in a run of EFI_SIGNATURE_LISTs (UEFI 2.8, 32.4.1) as a SHA-256, in order: an
    EFI_CERT_SHA256 entry is one already, any other entry's data is hashed; None when the lists do not
    parse (sizes out of bounds or not adding up)."""
    entries: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _SIGNATURE_LIST_HEAD.size:
            return None
        kind, list_size, header_size, signature_size = _SIGNATURE_LIST_HEAD.unpack_from(data, pos)
        body = list_size - _SIGNATURE_LIST_HEAD.size - header_size
        if (list_size > len(data) - pos or body < 0 or signature_size <= _SIGNATURE_OWNER_SIZE
                or body % signature_size):
            return None
        if kind == _EFI_CERT_SHA256 and signature_size != _SIGNATURE_OWNER_SIZE + 32:
            return None
        start = pos + _SIGNATURE_LIST_HEAD.size + header_size
        for offset in range(start, start + body, signature_size):
            signature = data[offset + _SIGNATURE_OWNER_SIZE:offset + signature_size]
            entries.append(signature if kind == _EFI_CERT_SHA256 else hashlib.sha256(signature).digest())
        pos += list_size
    return tuple(entries)


def check_secure_boot_databases(facts: BootFacts, manifest: ImageManifest) -> list[str]:
    """PCR 7's policy variables against the trusted image: PK, KEK, db and dbx measured, a platform key
    enrolled (no setup mode, where anyone may enroll keys), the image vendor's key in db and nothing
    else (a key enrolled by someone else would let the firmware run what they sign), and that key not
    revoked in dbx. A log that replays is no proof of a sane policy: each of these changes PCR 7
    consistently, so only reading the variables finds them."""
    reasons: list[str] = []
    databases = facts.secure_boot_databases
    for name in SECURE_BOOT_DATABASES:
        if name not in databases:
            reasons.append(f"Secure Boot: the event log has no {name} variable (PCR 7)")
    vendor = hashlib.sha256(manifest.vendor_key).digest()
    version = manifest.version
    if databases.get("PK") == ():
        reasons.append("Secure Boot: PK is empty (setup mode: any key can be enrolled)")
    db = databases.get("db")
    if db is not None:
        if vendor not in db:
            reasons.append(f"Secure Boot: db does not hold trusted image {version}'s vendor key")
        for entry in dict.fromkeys(db):
            if entry != vendor:
                reasons.append(f"Secure Boot: db trusts {entry.hex()[:16]}..., which trusted image {version} "
                               "does not name")
    if vendor in databases.get("dbx", ()):
        reasons.append(f"Secure Boot: dbx revokes trusted image {version}'s vendor key")
    return reasons


def check_image(facts: BootFacts, image: ImageIndex, ima: Iterable[ImaEntry], boot_aggregate: bytes | None,
                require_secure_boot: bool = True) -> list[str]:
    """Every way the booted host differs from the trusted image (empty when it is that image)."""
    reasons = list(facts.problems)
    version = image.manifest.version
    if require_secure_boot:
        if facts.secure_boot is None:
            reasons.append("Secure Boot: the event log has no SecureBoot variable (PCR 7)")
        elif not facts.secure_boot:
            reasons.append("Secure Boot: off (the SecureBoot variable measured into PCR 7 is not 1)")
        else:
            reasons.extend(check_secure_boot_databases(facts, image.manifest))
    if image.components and image.components == set(facts.measured):
        # exactly the image's components with its digests: only the VIB signature checks can fail
        signature_checks = facts.signature_checks
        for kind, name, _ in facts.measured:
            if kind == ComponentKind.VIB:
                verdict = signature_checks.get(name)
                if verdict is None:
                    reasons.append(f"VIB '{name}': no vendor signature check was measured")
                elif verdict != "valid":
                    reasons.append(f"VIB '{name}': vendor signature check at boot: {verdict}")
    else:
        _check_components(facts, image, reasons)
    _check_runtime(facts, image, ima, boot_aggregate, reasons)
    return reasons


def _check_components(facts: BootFacts, image: ImageIndex, reasons: list[str]) -> None:
    """Every measured component against the image, and every image component measured."""
    version = image.manifest.version
    seen: dict[ComponentKind, set[str]] = {kind: set() for kind in ComponentKind}
    for kind, name, digest in facts.measured:
        label = _KIND_LABEL[kind]
        trusted = image.by_kind[kind].get(name)
        seen[kind].add(name)
        if trusted is None:
            reasons.append(f"{label} '{name}' is not part of trusted image {version}")
        elif trusted != digest:
            reasons.append(f"{label} '{name}': measured digest {digest.hex()[:16]}... is not the trusted image "
                           f"{version}'s {trusted.hex()[:16]}...")
        if kind == ComponentKind.VIB:
            verdict = facts.signature_checks.get(name)
            if verdict is None:
                reasons.append(f"VIB '{name}': no vendor signature check was measured")
            elif verdict != "valid":
                reasons.append(f"VIB '{name}': vendor signature check at boot: {verdict}")
    for kind, names in image.by_kind.items():
        for name in names.keys() - seen[kind]:
            reasons.append(f"{_KIND_LABEL[kind]} '{name}' of trusted image {version} was not measured")


def _check_runtime(facts: BootFacts, image: ImageIndex, ima: Iterable[ImaEntry], boot_aggregate: bytes | None,
                   reasons: list[str]) -> None:
    """The kernel command line and the IMA entries the image check still needs."""
    version = image.manifest.version
    if facts.cmdline != image.manifest.kernel_cmdline:
        reasons.append(f"kernel command line: '{facts.cmdline}' is not the trusted image {version}'s")
    files = image.manifest.runtime_files
    for entry in ima:
        if entry.path == BOOT_AGGREGATE and entry.number == 1:
            if boot_aggregate is not None and entry.file_digest != boot_aggregate:
                reasons.append("IMA log: boot_aggregate does not match PCRs 0-9 of the boot log")
            continue
        trusted_file = files.get(entry.path)
        if trusted_file is None:
            reasons.append(f"IMA: file {entry.path} is not part of trusted image {version}")
        elif trusted_file != entry.file_digest:
            reasons.append(f"IMA: file {entry.path} does not match trusted image {version}")
