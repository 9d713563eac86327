"""support.qemu's initramfs: a newc archive the kernel can unpack, with the TPM modules in load order."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.qemu import GuestError, build_initramfs


def read_newc(archive: bytes) -> dict[str, tuple[int, tuple[int, int], bytes]]:
    """name -> (mode, (rdev major, minor), data) of a newc cpio archive, checking its framing."""
    members, offset = {}, 0
    while True:
        assert archive[offset:offset + 6] == b"070701", offset
        fields = [int(archive[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, name_size = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name_end = offset + 110 + name_size
        name = archive[offset + 110:name_end - 1].decode()
        assert archive[name_end - 1] == 0
        data_start = name_end + (-name_end % 4)
        if name == "TRAILER!!!":
            return members
        members[name] = (mode, rdev, archive[data_start:data_start + size])
        offset = data_start + size + (-size % 4)


def fake_kernel(tmp_path: Path, config: str, modules: dict[str, str]) -> Path:
    kernel = tmp_path / "kernel"
    drivers = kernel / "lib/modules/6.1.0-test/kernel/drivers/char/tpm"
    drivers.mkdir(parents=True)
    (kernel / "config").write_text(config)
    for name, depends in modules.items():
        (drivers / f"{name}.ko").write_bytes(b"\x7fELF\0name=" + name.encode() + b"\0depends=" + depends.encode() + b"\0")
    return kernel


def test_builtin_drivers_need_no_modules(tmp_path: Path) -> None:
    kernel = fake_kernel(tmp_path, "CONFIG_TCG_CRB=y\nCONFIG_TCG_TIS=y\n", {})
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"busybox binary")
    path = build_initramfs(kernel, tmp_path / "cache", busybox)
    members = read_newc(path.read_bytes())
    assert members["dev/console"][:2] == (0o020600, (5, 1))  # the kernel opens it for init's stdio
    assert members["init"][0] == 0o100755 and members["init"][2].startswith(b"#!/bin/busybox sh\n")
    assert b"/sys/class/tpm/tpm0/pcr-" in members["init"][2] and b"binary_bios_measurements" in members["init"][2]
    assert members["bin/busybox"][2] == b"busybox binary"
    assert members["etc/tpm-modules"][2] == b""
    assert build_initramfs(kernel, tmp_path / "cache", busybox) == path  # cached by content


def test_modular_drivers_come_with_their_dependencies_first(tmp_path: Path) -> None:
    kernel = fake_kernel(tmp_path, "CONFIG_TCG_CRB=m\nCONFIG_TCG_TIS=m\n",
                         {"tpm": "rng-core", "rng-core": "", "tpm_tis_core": "tpm", "tpm_tis": "tpm_tis_core,tpm",
                          "tpm_crb": "tpm"})
    (kernel / "lib/modules/6.1.0-test/kernel/drivers/char/tpm/rng-core.ko").rename(
        kernel / "lib/modules/6.1.0-test/kernel/drivers/char/tpm/rng_core.ko")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"bb")
    members = read_newc(build_initramfs(kernel, tmp_path / "cache", busybox).read_bytes())
    order = members["etc/tpm-modules"][2].decode().split()
    assert order == ["rng_core.ko", "tpm.ko", "tpm_crb.ko", "tpm_tis_core.ko", "tpm_tis.ko"]
    assert all(f"lib/modules/{name}" in members for name in order)


def test_a_missing_module_is_named(tmp_path: Path) -> None:
    kernel = fake_kernel(tmp_path, "CONFIG_TCG_CRB=m\n", {"tpm_crb": "tpm"})
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"bb")
    with pytest.raises(GuestError, match="kernel module tpm is not in"):
        build_initramfs(kernel, tmp_path / "cache", busybox)
