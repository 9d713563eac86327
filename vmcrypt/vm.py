"""A VM's home directory: which files exist and which of them encryption covers.

Layout of a VM called NAME in directory PATH::

    NAME.vmx         configuration (sensitive part encrypted when the VM is)
    NAME.nvram       firmware variables + vTPM state            (home file)
    vmware*.log      VM logs                                    (home file)
    *.vswp           swap                                       (home file)
    *.vmss, *.vmsn   suspend state, snapshot memory             (home files)
    namespacedb      guest namespace store                      (home file)
    DeployPackage    deployment payload, file or directory      (home file)
    NAME.vmdk        disk descriptor (clear), names its extents
    NAME-flat.vmdk   disk extent                                (only with --disks)
"""

from __future__ import annotations

import enum
import json
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from durable.atomic import fsync_directory, write_atomic
from vmcrypt.errors import VmError
from vmcrypt.nvram import Nvram, default_nvram
from vmcrypt.vmx import VmxConfig

MIN_HW_VERSION = 4
DESCRIPTOR_MAGIC = "# Disk DescriptorFile"
_EXTENT = re.compile(r'^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+\S+\s+"([^"]+)"', re.MULTILINE)
SECTOR = 512


class FileKind(str, enum.Enum):
    """The role of a VM file; part of its container label, so files of one role cannot stand in for another."""

    NVRAM = "nvram"
    LOG = "log"
    SWAP = "swap"
    SUSPEND = "suspend"
    SNAPSHOT_MEMORY = "snapshot-memory"
    NAMESPACEDB = "namespacedb"
    DEPLOY_PACKAGE = "deploy-package"
    DISK = "disk"
    CONFIG = "config"  # .vmx and disk descriptors: never containers, listed for backups


@dataclass(frozen=True)
class VmFile:
    """A file of a VM home and its role."""

    path: Path
    kind: FileKind

    @property
    def label(self) -> str:
        """What the container binds the file to, so files cannot be swapped unnoticed."""
        return f"{self.kind.value}:{self.path.name}"


_HOME_PATTERNS: tuple[tuple[str, FileKind], ...] = (
    ("vmware*.log", FileKind.LOG),
    ("*.vswp", FileKind.SWAP),
    ("*.vmss", FileKind.SUSPEND),
    ("*.vmsn", FileKind.SNAPSHOT_MEMORY),
    ("namespacedb*", FileKind.NAMESPACEDB),
    ("DeployPackage*", FileKind.DEPLOY_PACKAGE),
)


def _regular_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return [path] if path.is_file() and not path.is_symlink() else []


def parse_size(text: str) -> int:
    """'10G', '512M', '4096' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 64M, 10G)")
    return int(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_")


class VmHome:
    """One VM's directory; knows its files but holds no keys."""

    def __init__(self, vmx_path: str | os.PathLike[str]) -> None:
        path = Path(vmx_path).absolute()
        if path.is_dir():
            candidates = sorted(path.glob("*.vmx"))
            if len(candidates) != 1:
                raise VmError(f"expected exactly one .vmx file, found {len(candidates)}", path)
            path = candidates[0]
        if not path.is_file():
            raise VmError("no such VM configuration file", path)
        self.vmx_path = path
        self.directory = path.parent
        self.name = path.stem

    def __repr__(self) -> str:
        return f"<VmHome {self.vmx_path}>"

    @property
    def journal_path(self) -> Path:
        """The operation journal: present while an encrypt/decrypt/rekey is unfinished."""
        return self.directory / f".{self.name}.vmcrypt-journal"

    @property
    def nvram_path(self) -> Path:
        """The VM's ``.nvram`` (firmware variables and the vTPM's state)."""
        return self.directory / f"{self.name}.nvram"

    def home_files(self) -> list[VmFile]:
        """Every home file that exists now (the ``.vmx`` is handled separately)."""
        found: dict[Path, VmFile] = {}
        if self.nvram_path.is_file():
            found[self.nvram_path] = VmFile(self.nvram_path, FileKind.NVRAM)
        for pattern, kind in _HOME_PATTERNS:
            for match in sorted(self.directory.glob(pattern)):
                for path in _regular_files(match):
                    found.setdefault(path, VmFile(path, kind))
        return list(found.values())

    def descriptors(self) -> list[Path]:
        """The text ``.vmdk`` descriptors of the home (data extents are found through them)."""
        result = []
        for path in sorted(self.directory.glob("*.vmdk")):
            try:
                with open(path, "rb") as handle:
                    head = handle.read(len(DESCRIPTOR_MAGIC))
            except OSError:
                continue
            if head == DESCRIPTOR_MAGIC.encode():
                result.append(path)
        return result

    def disk_files(self) -> list[VmFile]:
        """Extent files named by the disk descriptors in the home directory."""
        disks = []
        for descriptor in self.descriptors():
            for match in _EXTENT.finditer(descriptor.read_text(errors="replace")):
                extent = (self.directory / match.group(3)).absolute()
                if extent.parent != self.directory:
                    raise VmError(f"extent {match.group(3)!r} lies outside the VM directory", descriptor)
                if extent.is_file():
                    disks.append(VmFile(extent, FileKind.DISK))
        return disks


# ----------------------------------------------------------------------------- creation


@dataclass(frozen=True)
class VmSpec:
    """What ``create_vm`` writes into a new .vmx: name, hardware version, firmware, memory, CPUs,
    an optional flat disk of ``disk_bytes`` and the guest OS identifier."""

    name: str
    hw_version: int = 14
    firmware: str = "efi"
    memory_mb: int = 2048
    cpus: int = 2
    disk_bytes: int = 0
    guest_os: str = "other5xlinux-64"


def _bios_uuid() -> str:
    raw = uuid.uuid4().bytes
    return " ".join(f"{b:02x}" for b in raw[:8]) + "-" + " ".join(f"{b:02x}" for b in raw[8:])


def create_vm(directory: str | os.PathLike[str], spec: VmSpec) -> VmHome:
    """Lay out a new, unencrypted VM in ``directory`` (which must be absent or empty)."""
    target = Path(directory).absolute()
    if spec.hw_version < MIN_HW_VERSION:
        raise VmError(f"hardware version {spec.hw_version} is below the minimum {MIN_HW_VERSION}")
    if spec.firmware not in ("efi", "bios"):
        raise VmError(f"firmware must be 'efi' or 'bios', not {spec.firmware!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,79}", spec.name):
        raise VmError(f"VM name {spec.name!r} must be 1-80 letters, digits, '.', '_', '-' or spaces")
    if target.exists() and any(target.iterdir()):
        raise VmError("directory exists and is not empty", target)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = spec.name
    machine_id = secrets.token_hex(16)

    settings = [
        (".encoding", "UTF-8"),
        ("config.version", "8"),
        ("virtualHW.version", str(spec.hw_version)),
        ("displayName", name),
        ("guestOS", spec.guest_os),
        ("firmware", spec.firmware),
        ("nvram", f"{name}.nvram"),
        ("memSize", str(spec.memory_mb)),
        ("numvcpus", str(spec.cpus)),
        ("uuid.bios", _bios_uuid()),
        ("ethernet0.present", "TRUE"),
        ("ethernet0.virtualDev", "vmxnet3"),
        ("ethernet0.addressType", "generated"),
        ("annotation", f"{name}: created {datetime.now(timezone.utc):%Y-%m-%d}"),
        ("machine.id", machine_id),
        ("guestinfo.hostname", f"{name.lower()}.example.internal"),
        ("tools.syncTime", "FALSE"),
    ]
    if spec.disk_bytes:
        settings += [
            ("scsi0.present", "TRUE"),
            ("scsi0.virtualDev", "pvscsi"),
            ("scsi0:0.present", "TRUE"),
            ("scsi0:0.fileName", f"{name}.vmdk"),
        ]
    write_atomic(target / f"{name}.vmx", VmxConfig.from_items(settings).render().encode())

    nvram = default_nvram() if spec.firmware == "efi" else Nvram()
    write_atomic(target / f"{name}.nvram", nvram.build())

    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    log = (
        f"{now} In(05) vmx Log for VMware ESX pid={os.getpid()} version=vmcrypt\n"
        f"{now} In(05) vmx DICT displayName = \"{name}\"\n"
        f"{now} In(05) vmx DICT machine.id = \"{machine_id}\"\n"
        f"{now} In(05) vmx Hostname={name.lower()}.example.internal\n"
    )
    write_atomic(target / "vmware.log", log.encode())
    namespace = {"namespaces": {"com.vmware.guestinfo": {"hostname": f"{name.lower()}.example.internal"}}}
    write_atomic(target / "namespacedb", json.dumps(namespace, indent=2).encode())

    if spec.disk_bytes:
        _create_flat_disk(target, name, spec.disk_bytes)
    fsync_directory(target)
    return VmHome(target / f"{name}.vmx")


def _create_flat_disk(directory: Path, name: str, size: int) -> None:
    if size % SECTOR:
        raise VmError(f"disk size must be a multiple of {SECTOR} bytes, got {size}")
    extent = directory / f"{name}-flat.vmdk"
    fd = os.open(extent, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    descriptor = (
        f"{DESCRIPTOR_MAGIC}\n"
        "version=1\n"
        f"CID={secrets.randbelow(1 << 32):08x}\n"
        "parentCID=ffffffff\n"
        'createType="vmfs"\n\n'
        "# Extent description\n"
        f'RW {size // SECTOR} VMFS "{extent.name}"\n\n'
        "# The Disk Data Base\n"
        'ddb.adapterType = "lsilogic"\n'
        'ddb.virtualHWVersion = "14"\n'
    )
    write_atomic(directory / f"{name}.vmdk", descriptor.encode())
