"""Mutated VM-encryption files through the readers that open them.

Fixtures are real files made by the real writers in a scratch directory: an
unencrypted VM and an encrypted one (``encrypt_vm`` under a native key
provider), a vTPM section in each ``.nvram``, an encrypted container of every
home-file kind (``.vmss``/``.vmsn`` JSON documents included, a disk without
MAC), a ``.vmx`` with a key safe and ``encryption.data``, an operation
journal, a backup archive and its manifest, ``providers.json`` with a native
and a KMIP provider, and vTPM state (plain, and in a key-file container).

Each input is one of them mutated at one of its layers: bytes (bit flips,
insertions, deletions, truncation, splices), structure (JSON values of the
wrong type, missing and extra keys, deep nesting; key-safe query fields;
tar members renamed, retyped, resized, PAX headers; container header fields
re-encoded under a valid MAC), or the plaintext inside a container,
re-encrypted under the right key so the reader gets past the MAC. The input
is written where the reader looks for it and opened through the public
functions. Every failure must be one of the project's documented errors
(``VmcryptError`` and its subclasses, ``StateError``, ``StateStoreError``)
with a message; any other exception is a finding, with its reproducer. The
file read must not change, and a failed decryption must leave no file
behind. A vTPM state that loads must also run: Startup, a few reads and a
Shutdown(STATE) on it must not make the engine fail.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import io
import json
import os
import random
import shutil
import tarfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmcrypt import container
from vmcrypt.backup import Manifest, backup_vm, check_restorable, verify_backup
from vmcrypt.container import Mac
from vmcrypt.errors import VmcryptError
from vmcrypt.home_json import read_home_json
from vmcrypt.keyref import DataKey, KeyReference
from vmcrypt.keys import KeyManager
from vmcrypt.nvram import Nvram, default_nvram
from vmcrypt.providers.native import NativeKeyProvider
from vmcrypt.providers.registry import CONFIG_FILE, ProviderRegistry
from vmcrypt.vm import FileKind, VmFile, VmHome, VmSpec, create_vm
from vmcrypt.vm_encryption import Journal, Operation, encrypt_vm, read_vmx
from vmcrypt.vm_vtpm import VmNvramStore
from vmcrypt.vmx import ENCRYPTED_DATA, KEYSAFE, VmxConfig
from vmcrypt.vtpm_key_file import EncryptedStateStore
from vtpm import wire
from vtpm.constants import CC, RH, SU, TPMA_NV
from vtpm.engine import Tpm
from vtpm.state import StateError, TpmState
from vtpm.storage import PlainStateStore, StateStoreError

from support.fuzzing import seeds
from support.fuzzing.campaign import Deck, Stopwatch
from support.fuzzing.frames import HANG_SECONDS, NoAnswer, Watchdog, check_response
from support.fuzzing.tpm import EngineErrors, describe_exception

DOCUMENTED = (VmcryptError, StateError, StateStoreError)
MAX_KEPT = 40
MAX_INPUT_KEPT = 8192
NO_ANSWER_SECONDS = 60.0


# ----------------------------------------------------------------------------- mutations


def mutate_bytes(rng: random.Random, data: bytes, pool: list[bytes] = ()) -> tuple[bytes, str]:
    out = bytearray(data)
    op = rng.randrange(10)
    if op == 0 or not out:
        for _ in range(rng.choice((1, 1, 2, 4, 16))):
            if out:
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out), "flip-bits"
    if op == 1:
        out[rng.randrange(len(out))] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x22, 0x5C, 0x7B, 0x5B, 0x3F, 0x26, 0x3D))
        return bytes(out), "set-byte"
    if op == 2:
        at = rng.randrange(len(out) + 1)
        out[at:at] = rng.randbytes(rng.choice((1, 2, 4, 16, 100)))
        return bytes(out), "insert"
    if op == 3:
        at = rng.randrange(len(out))
        del out[at : at + rng.choice((1, 2, 4, 16, 512))]
        return bytes(out), "delete"
    if op == 4:
        return bytes(out[: rng.randrange(len(out) + 1)]), "truncate"
    if op == 5:
        a = rng.randrange(len(out))
        b = min(len(out), a + rng.randrange(1, 600))
        out[b:b] = out[a:b] * rng.choice((1, 2, 8))
        return bytes(out), "duplicate"
    if op == 6:
        a = rng.randrange(len(out))
        n = rng.choice((1, 2, 4, 8, 32))
        out[a : a + n] = rng.choice((b"\x00", b"\xff")) * min(n, len(out) - a)
        return bytes(out), "fill"
    if op == 7 and pool:
        other = rng.choice(pool)
        at = rng.randrange(len(out) + 1)
        start = rng.randrange(len(other) + 1)
        return bytes(out[:at]) + other[start : start + rng.randrange(1, 2048)], "splice"
    if op == 8 and len(out) >= 4:  # a 16- or 32-bit field somewhere set to an edge value
        width = rng.choice((2, 4, 8))
        a = rng.randrange(max(1, len(out) - width))
        value = rng.choice((0, 1, (1 << (8 * width)) - 1, 1 << (8 * width - 1), 0x7F, 0x100, 0x1000))
        out[a : a + width] = value.to_bytes(width, "big")
        return bytes(out), "edge-value"
    return bytes(out) + rng.randbytes(rng.choice((1, 7, 64))), "append"


WEIRD_STRINGS = ("", "x", "\x00", "\ud800", "é", "../../etc/passwd", "/abs/path", "a/b", ".hidden", "ZZ" * 300,
                 "0x41", "-1", "nan", "true", "vm/", "%", "?", "&", "=", "😀")


def random_json_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(16 if depth < 3 else 12)
    values: list[Any] = [None, True, False, 0, -1, 1, 2**31, 2**64 + 1, -(2**63), 1.5, float("inf"), 1e308]
    if choice < len(values):
        return values[choice]
    if choice == 12:
        return rng.choice(WEIRD_STRINGS)
    if choice == 13:
        return [random_json_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if choice == 14:
        return {rng.choice(("a", "", "format", "hex", "0")): random_json_value(rng, depth + 1)}
    return {"hex": rng.choice(("zz", "0", "00" * 64, "", "0g"))}


def _nodes(doc: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(doc, dict):
        for key, value in list(doc.items())[:64]:
            found += _nodes(value, path + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:64]):
            found += _nodes(value, path + (i,))
    return found


def _set(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


def mutate_json(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    """A structural mutation of a JSON document (a byte mutation if it does not parse)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return mutate_bytes(rng, raw)
    op = rng.randrange(9)
    if op == 0:
        depth = rng.choice((50, 900, 2000, 100000))
        opening, closing = rng.choice((("[", "]"), ('{"a":', "}")))
        return (opening * depth + "1" + closing * depth).encode(), "json-deep-nesting"
    if op == 1:
        return json.dumps(random_json_value(rng)).encode(), "json-root"
    nodes = _nodes(doc)
    path = rng.choice(nodes)
    if op in (2, 3, 4):
        doc = _set(doc, path, random_json_value(rng))
        name = "json-value"
    elif op == 5:
        dicts = [p for p in nodes if isinstance(_get(doc, p), dict) and _get(doc, p)]
        if dicts:
            target = _get(doc, rng.choice(dicts))
            del target[rng.choice(list(target))]
        name = "json-drop-key"
    elif op == 6:
        dicts = [p for p in nodes if isinstance(_get(doc, p), dict)]
        if dicts:
            _get(doc, rng.choice(dicts))[rng.choice(("extra", "format", "", "hex", "1"))] = random_json_value(rng)
        name = "json-add-key"
    elif op == 7:
        value = _get(doc, path)
        if isinstance(value, str):
            doc = _set(doc, path, rng.choice((value[:-1], value + "0", value.upper(), value * 2, "zz" + value,
                                              rng.choice(WEIRD_STRINGS))))
        elif isinstance(value, int) and not isinstance(value, bool):
            doc = _set(doc, path, rng.choice((-value, value + 1, value * 1000, str(value), float(value), 2**70)))
        elif isinstance(value, list) and value:
            doc = _set(doc, path, value * rng.choice((0, 2, 100)) if rng.random() < 0.5 else value[::-1])
        name = "json-tweak"
    else:
        raw = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
        return mutate_bytes(rng, raw)[0], "json-then-bytes"
    try:
        return json.dumps(doc, ensure_ascii=rng.random() < 0.7, allow_nan=True).encode(errors="surrogatepass"), name
    except (ValueError, TypeError):
        return mutate_bytes(rng, raw)


def _get(doc: Any, path: tuple) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def mutate_keysafe(rng: random.Random, text: str) -> tuple[str, str]:
    scheme, _, query = text.partition("?")
    fields = [part.split("=", 1) for part in query.split("&")]
    op = rng.randrange(8)
    if op == 0 and fields:
        fields.pop(rng.randrange(len(fields)))
    elif op == 1 and fields:
        fields.append(list(rng.choice(fields)))
    elif op == 2 and fields:
        field_ = rng.choice(fields)
        field_[-1] = rng.choice(("", "%", "%zz", "%ff%fe", "a b", "&", "=", "\u00e9", "\ud800", "AAA", "A" * 5000,
                                 "!!!!", "aes-kw", "aes-kwp", "none", "scrypt", "x=y"))
    elif op == 3 and fields:
        fields[rng.randrange(len(fields))] = [rng.choice(("provider", "key", "wrap", "dek", "", "x"))]
    elif op == 4:
        scheme = rng.choice(("", "vmcrypt-keysafe-v2", "VMCRYPT-KEYSAFE-V1", scheme + " ", scheme + "?"))
    elif op == 5:
        return rng.choice(("", "?", scheme, scheme + "?", scheme + "??", "?&&&", scheme + "?=&=")), "keysafe-shape"
    elif op == 6:
        raw, _ = mutate_bytes(rng, text.encode())
        return raw.decode("utf-8", "surrogateescape"), "keysafe-bytes"
    else:
        fields = [[f[0], rng.choice(("%00", "%0A", "%22", "%7C22", "||", "|zz"))] for f in fields]
    return scheme + "?" + "&".join("=".join(f) for f in fields), "keysafe-field"


# ----------------------------------------------------------------------------- tar archives


@functools.lru_cache(maxsize=4)
def _read_members(archive: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The members of a (pristine) archive; cached, the callers copy the TarInfo before changing it."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]


def mutate_tar(rng: random.Random, archive: bytes) -> tuple[bytes, str]:
    """Rebuild the archive with one member changed: its manifest, name, type, size or PAX headers."""
    members = [(replace_info(m), data) for m, data in _read_members(archive)]
    op = rng.randrange(9)
    i = rng.randrange(len(members))
    info, data = members[i]
    fmt = tarfile.USTAR_FORMAT
    if op == 0:
        manifest = next(k for k, (m, _) in enumerate(members) if m.name == "manifest.json")
        raw, name = mutate_json(rng, members[manifest][1])
        members[manifest] = (members[manifest][0], raw)
    elif op == 1:
        info.name = rng.choice(("vm/../escape", "/vm/abs", "vm/", "vm/.hidden", "vm/a/b", "manifest.json", "vm",
                                "vm/" + "n" * 200, members[0][0].name, "vm/\udcff"))
        name, fmt = "tar-member-name", tarfile.PAX_FORMAT
    elif op == 2:
        info.type = rng.choice((tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE,
                                b"Z", tarfile.CONTTYPE))
        info.linkname = rng.choice(("manifest.json", "/etc/passwd", "vm/x", ""))
        name = "tar-member-type"
    elif op == 3:
        members.pop(i)
        name = "tar-drop-member"
    elif op == 4:
        members.insert(rng.randrange(len(members) + 1), (replace_info(info), data))
        name = "tar-duplicate-member"
    elif op == 5:
        info.pax_headers = {rng.choice(("size", "path", "mtime", "uid", "linkpath", "hdrcharset", "GNU.sparse.size")):
                            rng.choice(("x", "-1", "1e9", "", "99999999999999999999", "\udcff", "12 34"))}
        name, fmt = "tar-pax-header", tarfile.PAX_FORMAT
    elif op == 6:
        data = data[: rng.randrange(len(data) + 1)] if rng.random() < 0.5 else data + b"\x00" * rng.choice((1, 512))
        members[i] = (info, data)
        name = "tar-member-content"
    elif op == 7:
        fmt = rng.choice((tarfile.GNU_FORMAT, tarfile.PAX_FORMAT))
        info.name = info.name + "/" + "x" * rng.choice((90, 200))
        name = "tar-long-name"
    else:
        raw, name = mutate_bytes(rng, archive)
        return raw, "tar-" + name
    out = io.BytesIO()
    try:
        with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
            for member, content in members:
                member.size = len(content) if member.isfile() or member.type not in tarfile.SUPPORTED_TYPES else 0
                tar.addfile(member, io.BytesIO(content) if member.size else None)
    except (ValueError, UnicodeError, tarfile.TarError):  # the writer refused this member; mutate bytes instead
        raw, name = mutate_bytes(rng, archive)
        return raw, "tar-" + name
    raw = out.getvalue()
    if rng.random() < 0.2:
        raw = mutate_bytes(rng, raw)[0]
        name += "+bytes"
    return raw, name


def replace_info(info: tarfile.TarInfo) -> tarfile.TarInfo:
    copy = tarfile.TarInfo(info.name)
    for attr in ("size", "mode", "type", "linkname", "mtime", "uid", "gid", "uname", "gname"):
        setattr(copy, attr, getattr(info, attr))
    copy.pax_headers = dict(info.pax_headers)
    return copy


# ----------------------------------------------------------------------------- containers


def remac_header(rng: random.Random, blob: bytes, dek: bytes) -> tuple[bytes, str]:
    """Change one header field and recompute the MAC with the right key: the reader gets past the MAC."""
    header = container.parse_header(blob)
    fields = dict(
        magic=container.MAGIC, version=container.FORMAT_VERSION, header_length=0, cipher=int(header.cipher),
        mac=int(header.mac), unit_size=header.unit_size, generation=header.generation,
        plaintext_length=header.plaintext_length, salt=header.salt, key_check=header.key_check, label=header.label,
        provider_id=header.reference.provider_id, key_id=header.reference.key_id,
        wrap_algorithm=int(header.reference.wrap_algorithm), wrapped_dek=header.reference.wrapped_dek,
    )
    name = rng.choice(("unit_size", "plaintext_length", "generation", "label", "provider_id", "key_id",
                       "wrap_algorithm", "wrapped_dek", "mac", "cipher", "header_length"))
    values: dict[str, tuple] = {
        "unit_size": (0, 1, 16, 511, 512, 513, 1024, 3000, 1 << 20, 1 << 21, 0xFFFFFFFF),
        "plaintext_length": (0, 1, 15, 17, header.plaintext_length + 1, header.plaintext_length - 1,
                             header.plaintext_length + 16, header.plaintext_length - 16, 2**63, 2**64 - 1),
        "generation": (0, 2**64 - 1),
        "label": ("", "nvram:other.nvram", "x" * 1000, "\u00e9\u00e9"),
        "provider_id": ("", "other", "x" * 300),
        "key_id": ("", "missing", "\u00e9"),
        "wrap_algorithm": (0, 2, 3, 4, 255),
        "wrapped_dek": (b"", b"\x00" * 40, b"\x00" * 7),
        "mac": (0, 2, 255),
        "cipher": (0, 2, 0xFFFF),
        "header_length": (0,),
    }
    fields[name] = rng.choice(values[name])
    length_lie = name == "header_length"
    fields["header_length"] = 0
    try:
        raw = container._HEADER_V1.build(fields)
    except Exception:  # noqa: BLE001 - a value the layout cannot hold: fall back to byte mutations
        return mutate_bytes(rng, blob)[0], "container-bytes"
    length = len(raw) if not length_lie else rng.choice((len(raw) - 1, len(raw) + 16, 20, 10_000_000))
    fields["header_length"] = length
    raw = container._HEADER_V1.build(fields)
    raw = raw[:length] if length < len(raw) else raw + bytes(min(length, len(raw) + 64) - len(raw))
    body_end = header.header_length + header.ciphertext_length
    ciphertext = blob[header.header_length : body_end]
    keys = container._derive(dek, header.salt)
    mac = hmac.new(keys.mac_key, raw + ciphertext, hashlib.sha256).digest() if fields["mac"] == Mac.HMAC_SHA256 else b""
    return raw + ciphertext + mac, f"container-header-{name}"


# ----------------------------------------------------------------------------- the fixtures


def _state_fixture() -> bytes:
    """A vTPM state with NV indices, a persistent key, a changed clock and saved PCRs (Shutdown(STATE))."""
    tpm = Tpm()
    tpm.execute(0, wire.STARTUP_CLEAR)
    tpm.execute(0, wire.nv_define_space(0x01000001, TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD
                                        | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA, 16))
    tpm.execute(0, wire.nv_write(0x01000001, b"fuzz nv contents"))
    params = seeds.writer().sized(seeds.sensitive_create()).sized(seeds.ecc_storage()).b(b"").count(0)
    response = tpm.execute(0, seeds.Frame(CC.CreatePrimary, [RH.OWNER], [seeds.AuthEntry()], params).build()[0])
    handle = int.from_bytes(response[10:14], "big")
    tpm.execute(0, seeds.Frame(CC.EvictControl, [RH.OWNER, handle], [seeds.AuthEntry()],
                               seeds.writer().u32(0x81000001)).build()[0])
    tpm.execute(0, wire.pcr_extend(16, {0x000B: bytes(32)}))
    tpm.execute(0, wire.shutdown(SU.STATE))
    return tpm.state.to_bytes()


@dataclass
class Fixtures:
    root: Path
    keys: KeyManager
    plain_vm: VmHome
    vm: VmHome  # encrypted
    dek: bytes
    inputs: dict[str, list[bytes]] = field(default_factory=dict)


def build_fixtures(root: Path) -> Fixtures:
    """Real files from the real writers, under ``root``."""
    home = root / "home"
    home.mkdir(parents=True)
    registry = ProviderRegistry(home)
    keys = KeyManager(registry)
    registry.add_native(make_default=True)
    for path in (root / "ca.pem", root / "cert.pem", root / "key.pem"):
        path.write_text("not a real certificate\n")
    registry.add_kmip("kmip-cluster", ["127.0.0.1:5696", "kmip.example:5696"], root / "ca.pem", root / "cert.pem",
                      root / "key.pem")
    state = _state_fixture()

    plain = create_vm(root / "plain-vm", VmSpec("plain"))
    nvram = default_nvram()
    nvram.vtpm_state = state
    plain.nvram_path.write_bytes(nvram.build())

    vm = create_vm(root / "vm", VmSpec("fuzz", disk_bytes=64 * 1024))
    vm.nvram_path.write_bytes(nvram.build())
    for name, text in (("fuzz.vswp", b"swap" * 300), ("DeployPackage", b"payload"), ("namespacedb2", b"{}")):
        (vm.directory / name).write_bytes(text)
    (vm.directory / "fuzz.vmss").write_text(json.dumps({"format": 1, "vm": "fuzz", "tpm_started": True,
                                                        "saved_pcrs": {"11": ["00" * 32]}, "suspended": "now"}))
    (vm.directory / "fuzz-Snapshot1.vmsn").write_text(json.dumps({"format": 1, "vm": "fuzz", "taken": "now",
                                                                  "nvram": base64.b64encode(nvram.build()).decode()}))
    vmx = VmxConfig.parse(vm.vmx_path.read_text())
    vmx["vtpm.present"] = "TRUE"
    vm.vmx_path.write_text(vmx.render())
    encrypt_vm(vm, keys, include_disks=True)
    reference = read_vmx(vm, None).reference
    assert reference is not None
    dek = keys.unlock(reference).dek
    fx = Fixtures(root, keys, plain, vm, dek)

    # the journal of an interrupted rekey
    Journal(Operation.SHALLOW_REKEY, reference.to_keysafe(), True).save(vm)
    journal = vm.journal_path.read_bytes()
    vm.journal_path.unlink()

    archive = root / "fuzz.tar"
    manifest = backup_vm(vm, keys, archive)
    state_store = root / "state-key-file"
    EncryptedStateStore(state_store, dek).save(state)

    fx.inputs = {
        "nvram": [nvram.build(), default_nvram().build(), Nvram().build()],
        "nvram-container": [vm.nvram_path.read_bytes()],
        "home-file": [f.path.read_bytes() for f in vm.home_files() + vm.disk_files()],
        "keysafe": [reference.to_keysafe().encode(), KeyReference("p", "k").to_keysafe().encode()],
        "vmx": [vm.vmx_path.read_bytes(), plain.vmx_path.read_bytes()],
        "vmx-data": [_vmx_data_plaintext(fx)],
        "journal": [journal],
        "manifest": [manifest.to_json()],
        "backup-archive": [archive.read_bytes()],
        "providers": [registry.config_path.read_bytes()],
        "vtpm-state": [state, TpmState.manufacture().to_bytes()],
        "vtpm-state-container": [(state_store / "tpm2-state.vmc").read_bytes()],
    }
    return fx


def _vmx_data_plaintext(fx: Fixtures) -> bytes:
    clear = VmxConfig.parse(fx.vm.vmx_path.read_text())
    return container.decrypt_bytes(base64.b64decode(clear[ENCRYPTED_DATA]), fx.dek)


# ----------------------------------------------------------------------------- the readers


class WrittenError(AssertionError):
    """A reader changed the file it read, or left a file behind."""


def _listing(directory: Path) -> dict[str, tuple[int, int, int]]:
    with os.scandir(directory) as entries:
        return {e.name: (e.stat().st_size, e.stat().st_mtime_ns, e.inode()) for e in entries if e.is_file()}


def replace_file(path: Path, data: bytes) -> None:
    """A new file with ``data`` (unlinked first: truncating a file ext4 has data for forces a flush, 20 times slower)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with open(path, "wb") as handle:
        handle.write(data)


class Readers:
    """One method per target: write the input where the reader looks, open it, check nothing was written."""

    def __init__(self, fx: Fixtures, scratch: Path) -> None:
        self.fx = fx
        self.scratch = scratch
        self.errors = EngineErrors()
        self.vm_copy = self._copy_vm(fx.vm, scratch / "vm")
        self.plain_copy = self._copy_vm(fx.plain_vm, scratch / "plain-vm")
        self.registry_home = scratch / "registry-home"
        self.registry_home.mkdir()
        os.symlink(fx.keys.registry.home / "native", self.registry_home / "native")
        self.state_dir = scratch / "state"
        self.state_dir.mkdir()
        self.out = scratch / "out"
        self.out.mkdir()
        self.reference = read_vmx(fx.vm, None).reference
        self.key = fx.keys.unlock(self.reference)
        self.plain_vmx = self.plain_copy.vmx_path.read_bytes()
        self.encrypted_vmx = self.vm_copy.vmx_path.read_bytes()

    @staticmethod
    def _copy_vm(vm: VmHome, target: Path) -> VmHome:
        shutil.copytree(vm.directory, target)
        return VmHome(target / vm.vmx_path.name)

    def _write(self, path: Path, data: bytes) -> None:
        replace_file(path, data)

    @staticmethod
    def _look(directory: Path, path: Path | None) -> tuple[frozenset[str], tuple[int, int, int] | None]:
        """The names in ``directory`` and the size, mtime and inode of the file read."""
        names = frozenset(os.listdir(directory))
        if path is None:
            return names, None
        st = os.stat(path)
        return names, (st.st_size, st.st_mtime_ns, st.st_ino)

    def _guard(self, directory: Path, what: str, read: Callable[[], object], path: Path | None = None) -> None:
        """Run ``read``; the file it reads must stay as it was, and no file may appear or vanish next to it."""
        before = self._look(directory, path)
        try:
            read()
        finally:
            after = self._look(directory, path)
            if after != before:
                added, removed = sorted(after[0] - before[0]), sorted(before[0] - after[0])
                changed = "" if after[1] == before[1] else f"; {path} changed"
                raise WrittenError(f"{what}: files appeared {added[:3]} or vanished {removed[:3]}{changed}")

    # --------------------------------------------------------------- targets

    def nvram(self, data: bytes) -> None:
        vm = self.plain_copy
        self._write(vm.nvram_path, data)

        def read() -> None:
            nvram = Nvram.parse(data)
            nvram.efi_variables  # noqa: B018 - parsing the EFI variable store is the point
            store = VmNvramStore(vm, None)
            state = store.load()
            if state is not None:
                self.use_state(state)

        self._guard(vm.directory, "nvram", read, vm.nvram_path)

    def nvram_container(self, data: bytes, verify: bool = False) -> None:
        vm = self.vm_copy
        self._write(vm.nvram_path, data)

        def read() -> None:
            container.read_header(vm.nvram_path)
            if verify:
                container.verify_file(vm.nvram_path, self.fx.keys.header_key)
            store = VmNvramStore(vm, self.key)
            state = store.load()
            if state is not None:
                self.use_state(state)

        self._guard(vm.directory, "nvram-container", read, vm.nvram_path)

    def home_file(self, data: bytes, kind: FileKind, name: str, decrypt: bool = False) -> None:
        """Open an encrypted home file; with ``decrypt`` also decrypt_file it elsewhere (atomic, fsync'd: slower)."""
        vm = self.vm_copy
        path = vm.directory / name
        self._write(path, data)

        def read() -> None:
            header = container.read_header(path)
            if header.mac == Mac.NONE:
                container.verify_key(path, self.fx.keys.header_key)
            else:
                container.read_file(path, self.fx.keys.header_key)
                container.verify_file(path, self.fx.keys.header_key)
            if kind in (FileKind.SUSPEND, FileKind.SNAPSHOT_MEMORY):
                read_home_json(vm, VmFile(path, kind), self.fx.keys, 1, kind.value)

        self._guard(vm.directory, f"home file {name}", read, path)
        if not decrypt:
            return
        destination = self.out / "decrypted"
        before = _listing(self.out)
        try:
            container.decrypt_file(path, self.fx.keys.header_key, destination)
        except DOCUMENTED:
            if _listing(self.out) != before:
                raise WrittenError(f"decrypt_file of {name} failed but left {sorted(_listing(self.out))}") from None
            raise
        finally:
            destination.unlink(missing_ok=True)

    def keysafe(self, text: str) -> None:
        KeyReference.from_keysafe(text)
        vm = self.plain_copy
        original = self.plain_vmx
        try:
            replace_file(vm.vmx_path, original + f'{KEYSAFE} = "{text}"\n'.encode("utf-8", "surrogatepass"))
            self._guard(vm.directory, "keysafe", lambda: read_vmx(vm, None), vm.vmx_path)
        finally:
            replace_file(vm.vmx_path, original)

    def vmx(self, data: bytes) -> None:
        vm = self.vm_copy
        original = vm.vmx_path.read_bytes()
        self._write(vm.vmx_path, data)
        try:
            def read() -> None:
                read_vmx(vm, None)
                state = read_vmx(vm, self.fx.keys)
                if state.reference is not None:
                    self.fx.keys.unlock(state.reference)

            self._guard(vm.directory, "vmx", read, vm.vmx_path)
        finally:
            replace_file(vm.vmx_path, original)

    def vmx_data(self, plaintext: bytes) -> None:
        vm = self.vm_copy
        original = self.encrypted_vmx
        blob = container.encrypt_bytes(plaintext, self.key, label="vmx-encryption-data", unit_size=512)
        lines = [line if not line.lower().startswith(ENCRYPTED_DATA.lower())
                 else f'{ENCRYPTED_DATA} = "{base64.b64encode(blob).decode()}"' for line in original.decode().splitlines()]
        replace_file(vm.vmx_path, ("\n".join(lines) + "\n").encode())
        try:
            self._guard(vm.directory, "vmx encryption.data", lambda: read_vmx(vm, self.fx.keys), vm.vmx_path)
        finally:
            replace_file(vm.vmx_path, original)

    def journal(self, data: bytes) -> None:
        vm = self.vm_copy
        self._write(vm.journal_path, data)
        try:
            def read() -> None:
                journal = Journal.load(vm)
                if journal is not None:
                    journal.target_reference  # noqa: B018
                    f"{journal.operation.value} {journal.started} {journal.include_disks}"  # noqa: B018

            self._guard(vm.directory, "journal", read, vm.journal_path)
        finally:
            vm.journal_path.unlink(missing_ok=True)

    def manifest(self, data: bytes) -> None:
        Manifest.from_json(data, self.scratch / "archive.tar")

    def backup_archive(self, data: bytes, restore_check: bool = True) -> None:
        path = self.scratch / "archive.tar"
        self._write(path, data)

        def read() -> None:
            verify_backup(path)
            if restore_check:
                check_restorable(path, self.fx.keys)

        self._guard(self.scratch, "backup archive", read, path)

    def providers(self, data: bytes) -> None:
        self._write(self.registry_home / CONFIG_FILE, data)

        def read() -> None:
            registry = ProviderRegistry(self.registry_home)
            registry.configs()
            registry.default_id()
            for ident in ("native", "kmip-cluster", self.reference.provider_id):
                try:
                    provider = registry.get(ident)
                except VmcryptError:
                    continue
                if isinstance(provider, NativeKeyProvider) and ident == self.reference.provider_id:
                    KeyManager(registry).unlock(self.reference)

        self._guard(self.registry_home, "providers.json", read, self.registry_home / CONFIG_FILE)

    def vtpm_state(self, data: bytes) -> None:
        self._write(self.state_dir / "tpm2-state.json", data)

        def read() -> None:
            TpmState.from_bytes(data)
            state = PlainStateStore(self.state_dir).load()
            if state is not None:
                self.use_state(state)

        self._guard(self.state_dir, "vTPM state", read, self.state_dir / "tpm2-state.json")

    def vtpm_state_container(self, data: bytes) -> None:
        directory = self.scratch / "state-key-file"
        directory.mkdir(exist_ok=True)
        self._write(directory / "tpm2-state.vmc", data)

        def read() -> None:
            state = EncryptedStateStore(directory, self.fx.dek).load()
            if state is not None:
                self.use_state(state)

        self._guard(directory, "encrypted vTPM state", read, directory / "tpm2-state.vmc")

    # --------------------------------------------------------------- a loaded state must run

    def use_state(self, state: TpmState) -> None:
        """Startup, reads and Shutdown(STATE) on a state that loaded: the engine must not fail on it."""
        with self.errors:
            tpm = Tpm(state)
            for command in STATE_PROBES:
                response = tpm.execute(0, command)
                problem = check_response(command, response)
                records = self.errors.take()
                if records:
                    signature, text = describe_exception(records[0])
                    raise LoadedStateFails(f"{signature}: the engine failed on a loaded state", text)
                if problem:
                    raise LoadedStateFails(f"{problem[1]} (command {command.hex()})", "")
            tpm.power_cycle()
            for command in (wire.STARTUP_STATE, wire.STARTUP_CLEAR):
                response = tpm.execute(0, command)
                records = self.errors.take()
                if records:
                    signature, text = describe_exception(records[0])
                    raise LoadedStateFails(f"{signature}: the engine failed on a loaded state", text)
            TpmState.from_bytes(tpm.state.to_bytes())


class LoadedStateFails(AssertionError):
    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


STATE_PROBES = (
    wire.STARTUP_CLEAR,  # PCR banks, NV (orderly, clear-on-startup), counters
    wire.get_capability(1, 0x01000000, 64),  # NV indices
    wire.get_capability(1, 0x81000000, 64),  # persistent objects
    wire.get_capability(6, 0x200, 64),  # variable properties (lockout, counters)
    wire.pcr_read({0x000B: range(8)}),
    wire.nv_read(0x01000001, 16),
    wire.build_command(CC.ReadPublic, [0x81000001]),
    wire.build_command(CC.ReadClock),
    wire.shutdown(SU.STATE),
)


# ----------------------------------------------------------------------------- the campaign


@dataclass
class FileFinding:
    target: str
    mutation: str
    exception: str
    message: str
    input_hex: str
    traceback: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FileReport:
    seed: int
    total: int = 0
    per_target: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)  # target/accepted, target/refused
    mutations: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)  # documented exception types
    unexpected: int = 0
    hangs: int = 0
    written: int = 0
    loaded_state_failures: int = 0
    empty_messages: int = 0
    signatures: Counter = field(default_factory=Counter)
    findings: list[FileFinding] = field(default_factory=list)
    elapsed: float = 0.0
    prepare_seconds: float = 0.0

    @property
    def findings_count(self) -> int:
        return self.unexpected + self.hangs + self.written + self.loaded_state_failures + self.empty_messages

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "total": self.total,
            "elapsed_seconds": round(self.elapsed, 2),
            "prepare_seconds": round(self.prepare_seconds, 2),
            "inputs_per_second": round(self.total / self.elapsed, 1) if self.elapsed else 0.0,
            "per_target": dict(sorted(self.per_target.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "refusals": dict(self.refusals.most_common()),
            "mutations": dict(self.mutations.most_common()),
            "unexpected": self.unexpected,
            "hangs": self.hangs,
            "written": self.written,
            "loaded_state_failures": self.loaded_state_failures,
            "empty_messages": self.empty_messages,
            "findings_total": self.findings_count,
            "signatures": dict(self.signatures.most_common()),
            "findings": [f.to_dict() for f in self.findings],
        }


HOME_KINDS = {".nvram": FileKind.NVRAM, ".vswp": FileKind.SWAP, ".vmss": FileKind.SUSPEND, ".vmsn": FileKind.SNAPSHOT_MEMORY,
              ".log": FileKind.LOG, "namespacedb": FileKind.NAMESPACEDB, "DeployPackage": FileKind.DEPLOY_PACKAGE,
              "-flat.vmdk": FileKind.DISK}


def _home_kind(name: str) -> FileKind:
    for suffix, kind in HOME_KINDS.items():
        if name.endswith(suffix) or name.startswith(suffix):
            return kind
    return FileKind.NAMESPACEDB


class FileCampaign:
    def __init__(self, count: int, seed: int, workdir: Path,
                 progress: Callable[[FileReport], None] | None = None, targets: tuple[str, ...] = ()) -> None:
        self.targets = targets
        self.count = count
        self.rng = random.Random(seed)
        self.report = FileReport(seed)
        self.workdir = Path(workdir)
        self.progress = progress

    def run(self) -> FileReport:
        clock = Stopwatch(self.report, self.progress)
        fx = build_fixtures(self.workdir / "fixtures")
        readers = Readers(fx, self.workdir / "scratch")
        self.fx, self.readers = fx, readers
        self.home_names = [f.path.name for f in fx.vm.home_files() + fx.vm.disk_files()]
        self.pool = [item for items in fx.inputs.values() for item in items]
        clock.prepared()
        deck = Deck(self.rng, [t for t in fx.inputs if not self.targets or t in self.targets])
        self.watchdog = Watchdog(NO_ANSWER_SECONDS).start()
        with clock:
            try:
                for n in range(self.count):
                    self._one(deck.draw())
                    if n % 1000 == 999:
                        clock.tick()
            finally:
                self.watchdog.close()
        return self.report

    def _mutate(self, target: str) -> tuple[bytes, str, dict[str, Any]]:
        rng = self.rng
        extra: dict[str, Any] = {}
        if target == "home-file":
            i = rng.randrange(len(self.home_names))
            name = self.home_names[i]
            base = (self.fx.vm.directory / name).read_bytes()  # the pristine fixture, never written
            extra["name"] = name
            extra["decrypt"] = rng.random() < 0.08  # decrypt_file writes and fsyncs: the slow part, now and then
            return self._mutate_container(base, lambda raw: mutate_bytes(rng, raw, self.pool)) + (extra,)
        base = rng.choice(self.fx.inputs[target])
        if target in ("journal", "manifest", "providers", "vtpm-state", "vmx-data"):
            data, name = mutate_json(rng, base) if rng.random() < 0.75 else mutate_bytes(rng, base, self.pool)
        elif target == "keysafe":
            text, name = mutate_keysafe(rng, base.decode())
            return text.encode("utf-8", "surrogatepass"), name, extra
        elif target == "nvram":
            data, name = self._mutate_nvram(base)
        elif target == "nvram-container":
            data, name = self._mutate_container(base, self._mutate_nvram)
            extra["verify"] = rng.random() < 0.3  # also the streaming verify_file (the store reads it whole)
        elif target == "vtpm-state-container":
            data, name = self._mutate_container(base, lambda raw: mutate_json(rng, raw))
        elif target == "backup-archive":
            data, name = mutate_tar(rng, base)
            extra["restore_check"] = rng.random() < 0.5  # check_restorable reads the archive again
        else:  # vmx
            data, name = mutate_bytes(rng, base, self.pool) if rng.random() < 0.5 else self._mutate_vmx(base)
        return data, name, extra

    def _mutate_vmx(self, base: bytes) -> tuple[bytes, str]:
        rng = self.rng
        lines = base.decode().splitlines()
        i = rng.randrange(len(lines))
        key, _, value = lines[i].partition(" = ")
        if key.lower() == KEYSAFE.lower() or rng.random() < 0.3:
            keysafe = self.fx.inputs["keysafe"][0].decode()
            text, name = mutate_keysafe(rng, keysafe)
            lines[i] = f'{KEYSAFE} = "{text}"'
        elif key.lower() == ENCRYPTED_DATA.lower():
            blob = value.strip('"')
            lines[i] = f'{key} = "{rng.choice((blob[:-4], blob + "==", "!" + blob, blob[: len(blob) // 2], ""))}"'
            name = "vmx-encrypted-data"
        else:
            lines[i] = rng.choice((f"{key} = {value}", f'{key} = "{value}', f"{key}", f'= "{value}"', f'{key} = "a"b"',
                                   f'{key} = "|zz|2"', f'{key}="\u00e9"'))
            name = "vmx-line"
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"), name

    def _mutate_nvram(self, base: bytes) -> tuple[bytes, str]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            return mutate_bytes(rng, base, self.pool)
        nvram = Nvram.parse(base)
        tag = rng.choice(list(nvram.sections) or [b"EFIV"])
        section = nvram.sections.get(tag, b"")
        if tag == b"VTPM" and roll < 0.8:
            nvram.sections[tag], name = mutate_json(rng, section)
        elif roll < 0.9:
            nvram.sections[tag], name = mutate_bytes(rng, section, self.pool)
        else:
            nvram.sections[rng.choice((b"XXXX", b"VTPM", b"EFIV", b"\x00\x00\x00\x00"))] = rng.choice(self.pool)[:4096]
            name = "add-section"
        return nvram.build(), f"nvram-section-{name}"

    def _mutate_container(self, blob: bytes, inner: Callable[[bytes], tuple[bytes, str]]) -> tuple[bytes, str]:
        """Mutate the container's bytes, one header field under a valid MAC, or the plaintext under the right key."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.35:
            data, name = mutate_bytes(rng, blob, self.pool)
            return data, "container-" + name
        if roll < 0.6:
            return remac_header(rng, blob, self.fx.dek)
        header = container.parse_header(blob)
        plain = container.decrypt_bytes(blob, self.fx.dek) if header.mac == Mac.HMAC_SHA256 else _xts_plain(blob, self.fx.dek)
        mutated, name = inner(plain)
        key = DataKey(self.fx.dek, header.reference)  # every fixture container is under the VM's DEK
        out = io.BytesIO()
        container.encrypt_stream(io.BytesIO(mutated), out, key, label=header.label, plaintext_length=len(mutated),
                                 unit_size=header.unit_size, mac=header.mac,
                                 header_align=container.DISK_HEADER_ALIGN if header.mac == Mac.NONE else 0)
        return out.getvalue(), "plaintext-" + name

    def _one(self, target: str) -> None:
        report = self.report
        data, mutation, extra = self._mutate(target)
        report.total += 1
        report.per_target[target] += 1
        report.mutations[mutation.split("+")[0]] += 1
        hangs = report.hangs
        began = time.perf_counter()
        try:
            self._read(target, data, extra)
        except DOCUMENTED as exc:
            report.outcomes[f"{target}/refused"] += 1
            report.refusals[type(exc).__name__] += 1
            if not str(exc).strip():
                report.empty_messages += 1
                self._finding(target, mutation, exc, data, "an error without a message")
        except NoAnswer as exc:
            report.hangs += 1
            self._finding(target, mutation, exc, data, str(exc))
        except WrittenError as exc:
            report.written += 1
            self._finding(target, mutation, exc, data, str(exc))
        except LoadedStateFails as exc:
            report.loaded_state_failures += 1
            self._finding(target, mutation, exc, data, str(exc), exc.text)
        except Exception as exc:  # noqa: BLE001 - anything undocumented is the finding
            report.unexpected += 1
            self._finding(target, mutation, exc, data, str(exc)[:500])
        else:
            report.outcomes[f"{target}/accepted"] += 1
        seconds = time.perf_counter() - began
        if seconds > HANG_SECONDS and report.hangs == hangs:
            report.hangs += 1
            self._finding(target, mutation, NoAnswer(f"took {seconds:.2f} s"), data, f"took {seconds:.2f} s")

    def _read(self, target: str, data: bytes, extra: dict[str, Any]) -> None:
        readers = self.readers
        with self.watchdog:
            if target == "home-file":
                readers.home_file(data, _home_kind(extra["name"]), extra["name"], extra["decrypt"])
            elif target == "keysafe":
                readers.keysafe(data.decode("utf-8", "surrogatepass"))
            elif target == "nvram-container":
                readers.nvram_container(data, extra["verify"])
            elif target == "backup-archive":
                readers.backup_archive(data, extra["restore_check"])
            else:
                getattr(readers, target.replace("-", "_"))(data)

    def _finding(self, target: str, mutation: str, exc: BaseException, data: bytes, message: str, text: str = "") -> None:
        tb = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in tb if "/vmcrypt/" in f.filename or "/vtpm/" in f.filename] or tb
        where = f"{Path(ours[-1].filename).parent.name}/{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        signature = f"{target}: {type(exc).__name__} at {where}"
        if isinstance(exc, LoadedStateFails):
            signature = f"{target}: {message.split(':')[0]}"
        self.report.signatures[signature] += 1
        if self.report.signatures[signature] == 1 and len(self.report.findings) < MAX_KEPT:
            text = text or "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
            self.report.findings.append(FileFinding(target, mutation, type(exc).__name__, message,
                                                    data[:MAX_INPUT_KEPT].hex(), text))


def _xts_plain(blob: bytes, dek: bytes) -> bytes:
    """The plaintext of a container without a MAC (a disk)."""
    header = container.parse_header(blob)
    keys = container._derive(dek, header.salt)
    body = blob[header.header_length : header.header_length + header.ciphertext_length]
    return keys.xts.decrypt_units(0, body, header.unit_size)[: header.plaintext_length]


def run_file_campaign(count: int, seed: int, workdir: Path, **options: Any) -> FileReport:
    return FileCampaign(count, seed, workdir, **options).run()
