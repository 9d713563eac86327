#!/usr/bin/env bash
# Puts a Debian kernel for the QEMU boot tests into .cache/guest-kernel (once; later runs reuse it):
# the package of linux-image-amd64's current kernel is downloaded with `apt-get download` and unpacked
# with `dpkg-deb -x`, never installed, so no initramfs or bootloader trigger runs on this machine.
# Kept: vmlinuz, its config, modules.builtin and the char-driver modules (the TPM drivers, should a
# kernel build them as modules). tests/support/qemu.py reads this directory.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=.cache/guest-kernel
[ -f "$dest/vmlinuz" ] && exit 0

pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "guest_kernel: apt knows no kernel package behind linux-image-amd64" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"  # apt's download user must be able to write there
(cd "$work" && apt-get download -qq "$pkg" 2>"$work/download.log") || { cat "$work/download.log" >&2; exit 1; }
dpkg-deb -x "$work"/*.deb "$work/root"
version=${pkg#linux-image-}

mkdir -p "$dest.tmp/lib/modules/$version/kernel/drivers"
cp "$work/root/boot/vmlinuz-$version" "$dest.tmp/vmlinuz"
cp "$work/root/boot/config-$version" "$dest.tmp/config"
cp "$work/root/lib/modules/$version/modules.builtin" "$dest.tmp/lib/modules/$version/"
cp -r "$work/root/lib/modules/$version/kernel/drivers/char" "$dest.tmp/lib/modules/$version/kernel/drivers/"
echo "$version" >"$dest.tmp/version"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "guest_kernel: $pkg unpacked into $dest" >&2
