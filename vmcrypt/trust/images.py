"""ESXi-like boot images: versioned manifests of what a host boots, VIBs signed by a vendor key.

An ``ImageManifest`` is what TrustedAdmins import as a "trusted image": for one version,
the ordered boot components (firmware volumes, boot loader, kernel, boot modules/VIBs) with
their SHA-256 digests, the vendor's signature over each VIB, the vendor's public key, and
the digests of the runtime files the image installs (what IMA measures after boot).

A ``BootImage`` is the image itself: the manifest plus the component bytes a host hashes
while it boots (every PCR bank needs its own hash, so the bytes, not only the SHA-256
digest). ``make_image`` builds deterministic images for tests and the demo, and
``tampered`` makes the variants a test boots to be caught by attestation.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vmcrypt.errors import VmcryptError

VIB_SIGNATURE_HASH = hashes.SHA256()
DEFAULT_VIBS = ("esx-base", "esx-update", "vsan", "vsanhealth", "crx", "esx-xserver", "native-misc-drivers",
                "vmkusb", "nvme-pcie", "ntg3", "ne1000", "lsi-msgpt3", "vmw-ahci", "tools-light", "cpu-microcode")
RUNTIME_FILES_PER_VIB = 7  # 15 VIBs x 7 files + boot_aggregate: an IMA list of about 100 entries


class ImageError(VmcryptError):
    """A manifest or image that is malformed or whose signatures do not verify."""


class ComponentKind(str, enum.Enum):
    """What a boot component is; it decides how the host measures it and whether it must be vendor-signed (VIBs)."""

    FIRMWARE = "firmware"
    BOOTLOADER = "bootloader"
    KERNEL = "kernel"
    VIB = "vib"


@dataclass(frozen=True)
class Component:
    """One boot component of a manifest: its kind, name, SHA-256 and (VIBs only) the vendor's signature."""

    kind: ComponentKind
    name: str
    sha256: bytes
    signature: bytes | None = None  # VIBs only: the vendor's ECDSA P-256 signature (DER) over the VIB bytes


@dataclass(frozen=True)
class ImageManifest:
    """One trusted version: its boot components in boot order and its runtime files."""

    version: str
    components: tuple[Component, ...]
    runtime_files: Mapping[str, bytes]  # path -> SHA-256 of the file
    vendor_key: bytes  # the VIB signing key, SubjectPublicKeyInfo DER
    kernel_cmdline: str = ""

    def by_kind(self, kind: ComponentKind) -> tuple[Component, ...]:
        """The components of ``kind``, in boot order."""
        return tuple(c for c in self.components if c.kind == kind)

    def vendor_public_key(self) -> ec.EllipticCurvePublicKey:
        """The VIB signing key; ImageError when the bytes are not a DER SubjectPublicKeyInfo or the key is not
        ECDSA P-256."""
        try:
            key = serialization.load_der_public_key(self.vendor_key)
        except (ValueError, TypeError) as exc:  # cryptography's message names no file: say which image
            raise ImageError(f"image {self.version}: the vendor key is not a DER public key") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ImageError(f"image {self.version}: the vendor key is not ECDSA P-256")
        return key

    def check(self) -> None:
        """Refuse a manifest with a VIB that lacks a valid vendor signature over its digest."""
        key = self.vendor_public_key()
        for vib in self.by_kind(ComponentKind.VIB):
            if vib.signature is None:
                raise ImageError(f"image {self.version}: VIB '{vib.name}' is unsigned")
            if not vib_signature_valid(key, vib.signature, vib.sha256):
                raise ImageError(f"image {self.version}: VIB '{vib.name}' has an invalid vendor signature")

    def to_json(self) -> str:
        """The manifest as JSON (digests in hex, keys and signatures in base64) that ``from_json`` reads back."""
        return json.dumps({
            "version": self.version, "vendor_key": _b64(self.vendor_key), "kernel_cmdline": self.kernel_cmdline,
            "components": [{"kind": c.kind.value, "name": c.name, "sha256": c.sha256.hex(),
                            "signature": None if c.signature is None else _b64(c.signature)}
                           for c in self.components],
            "runtime_files": {path: digest.hex() for path, digest in sorted(self.runtime_files.items())}})

    @classmethod
    def from_json(cls, text: str | bytes) -> "ImageManifest":
        """Read a manifest written by ``to_json`` and ``check`` its VIB signatures: ImageError when the text is
        not JSON, a key is missing or extra, a digest is not 32 bytes, or a VIB is unsigned or badly signed."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImageError("image manifest: not JSON") from exc
        try:
            _exact(data, {"version", "vendor_key", "kernel_cmdline", "components", "runtime_files"}, "manifest")
            components = []
            for entry in data["components"]:
                _exact(entry, {"kind", "name", "sha256", "signature"}, "component")
                components.append(Component(ComponentKind(entry["kind"]), _str(entry["name"]),
                                            _digest(entry["sha256"]),
                                            None if entry["signature"] is None else _unb64(entry["signature"])))
            files = {_str(path): _digest(value) for path, value in data["runtime_files"].items()}
            manifest = cls(_str(data["version"]), tuple(components), files, _unb64(data["vendor_key"]),
                           _str(data["kernel_cmdline"]))
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            raise ImageError(f"image manifest: {exc}") from None
        manifest.check()
        return manifest


def _exact(data: Any, keys: set[str], what: str) -> None:
    if not isinstance(data, dict) or set(data) != keys:
        raise ValueError(f"{what} must be an object with exactly {', '.join(sorted(keys))}")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected text")
    return value


def _digest(value: Any) -> bytes:
    raw = bytes.fromhex(_str(value))
    if len(raw) != 32:
        raise ValueError("a SHA-256 digest is 32 bytes")
    return raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any) -> bytes:
    try:
        return base64.b64decode(_str(value), validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None


def vib_signature_valid(key: ec.EllipticCurvePublicKey, signature: bytes, sha256: bytes) -> bool:
    """Is ``signature`` the vendor's ECDSA signature over the VIB whose SHA-256 is ``sha256``?"""
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    try:
        key.verify(signature, sha256, ec.ECDSA(Prehashed(VIB_SIGNATURE_HASH)))
    except (InvalidSignature, ValueError):
        return False
    return True


class VendorKey:
    """The image vendor's VIB signing key (ECDSA P-256)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._key = private_key

    @classmethod
    def generate(cls) -> "VendorKey":
        """A fresh P-256 key, held in memory only."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_der(self) -> bytes:
        """The public key as SubjectPublicKeyInfo DER, the form a manifest's ``vendor_key`` takes."""
        return self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, vib: bytes) -> bytes:
        """The ECDSA-SHA256 signature (DER) over the VIB's bytes that ``vib_signature_valid`` accepts."""
        return self._key.sign(vib, ec.ECDSA(VIB_SIGNATURE_HASH))


@dataclass(frozen=True)
class BootImage:
    """A bootable image: its manifest and the bytes of each component and runtime file."""

    manifest: ImageManifest
    contents: Mapping[str, bytes]  # component name -> bytes
    runtime_contents: Mapping[str, bytes]  # path -> bytes

    @property
    def version(self) -> str:
        """The manifest's version."""
        return self.manifest.version


def _blob(kind: str, name: str, version: str, size: int = 4096) -> bytes:
    """Deterministic stand-in bytes for a component (a real image ships the files)."""
    seed = f"{kind}:{name}:{version}".encode()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:size])


_VENDOR: list[VendorKey] = []


def default_vendor() -> VendorKey:
    """One vendor key per process, for tests and the demo (generated on first use, never stored)."""
    if not _VENDOR:
        _VENDOR.append(VendorKey.generate())
    return _VENDOR[0]


def make_image(version: str, *, vendor: VendorKey | None = None, vibs: tuple[str, ...] = DEFAULT_VIBS,
               files_per_vib: int = RUNTIME_FILES_PER_VIB) -> BootImage:
    """An ESXi-like image of ``version``: 4 firmware volumes, boot loader, kernel, signed VIBs."""
    vendor = vendor or default_vendor()
    contents: dict[str, bytes] = {}
    components = []

    def add(kind: ComponentKind, name: str, signed: bool = False) -> None:
        data = _blob(kind.value, name, version)
        contents[name] = data
        components.append(Component(kind, name, hashlib.sha256(data).digest(), vendor.sign(data) if signed else None))

    for volume in ("SEC", "PEI", "DXE", "SMM"):
        add(ComponentKind.FIRMWARE, f"uefi-{volume.lower()}")
    add(ComponentKind.BOOTLOADER, "mboot64.efi")
    add(ComponentKind.KERNEL, "b.b00")
    for vib in vibs:
        add(ComponentKind.VIB, vib, signed=True)
    runtime = {f"/opt/{vib}/lib/file{i:02d}.so": _blob("file", f"{vib}/{i}", version, 512)
               for vib in vibs for i in range(files_per_vib)}
    manifest = ImageManifest(version, tuple(components),
                             {path: hashlib.sha256(data).digest() for path, data in runtime.items()},
                             vendor.public_der, kernel_cmdline=f"vmkBootVerify=TRUE version={version}")
    return BootImage(manifest, contents, runtime)


class Tamper(str, enum.Enum):
    """What a test can do to an image before a host boots it."""

    MODIFIED_VIB = "modified-vib"  # one VIB's bytes changed, its (now wrong) signature kept
    UNSIGNED_VIB = "unsigned-vib"  # an extra VIB without a vendor signature
    SECURE_BOOT_OFF = "secure-boot-off"  # handled by boot_host: the firmware boots with Secure Boot disabled
    OLD_VERSION = "old-version"  # handled by the caller: boot an image of an older version
    FOREIGN_DB_KEY = "foreign-db-key"  # handled by boot_host: the firmware's db also trusts a key the image does not name


def tampered(image: BootImage, tamper: Tamper | str, vib: str | None = None) -> BootImage:
    """A copy of ``image`` with one VIB modified or an unsigned VIB added (other tampers change nothing here)."""
    tamper = Tamper(tamper)
    components = list(image.manifest.components)
    contents = dict(image.contents)
    if tamper == Tamper.MODIFIED_VIB:
        name = vib or image.manifest.by_kind(ComponentKind.VIB)[0].name
        index = next(i for i, c in enumerate(components) if c.kind == ComponentKind.VIB and c.name == name)
        data = bytearray(contents[name])
        data[100] ^= 0xFF
        contents[name] = bytes(data)
        components[index] = dataclasses.replace(components[index], sha256=hashlib.sha256(data).digest())
    elif tamper == Tamper.UNSIGNED_VIB:
        name = vib or "unsigned-community-driver"
        data = _blob("vib", name, image.version)
        contents[name] = data
        components.append(Component(ComponentKind.VIB, name, hashlib.sha256(data).digest(), None))
    else:
        return image
    manifest = dataclasses.replace(image.manifest, components=tuple(components))
    return BootImage(manifest, contents, image.runtime_contents)


def image_from_manifest(manifest: ImageManifest) -> BootImage:
    """The bootable image a manifest made by ``make_image`` describes (its stand-in bytes are deterministic),
    so a host process can boot exactly the image a Trust Authority trusts; ImageError when a component or
    file is not the stand-in the manifest's digest names (a manifest of a real image has no bytes here)."""
    contents = {c.name: _blob(c.kind.value, c.name, manifest.version) for c in manifest.components}
    runtime = {}
    for path in manifest.runtime_files:
        parts = path.split("/")  # /opt/VIB/lib/fileNN.so
        number = parts[4][4:-3] if len(parts) == 5 else ""
        if parts[:2] != ["", "opt"] or not number.isdigit() or parts[4] != f"file{number}.so":
            raise ImageError(f"image {manifest.version}: runtime file {path} is not one this host can produce")
        runtime[path] = _blob("file", f"{parts[2]}/{int(number)}", manifest.version, 512)
    for component in manifest.components:
        if hashlib.sha256(contents[component.name]).digest() != component.sha256:
            raise ImageError(f"image {manifest.version}: no bytes for component '{component.name}' match its digest")
    for path, digest in manifest.runtime_files.items():
        if hashlib.sha256(runtime[path]).digest() != digest:
            raise ImageError(f"image {manifest.version}: no bytes for runtime file {path} match its digest")
    return BootImage(manifest, contents, runtime)
