#!/usr/bin/env bash
# Builds the Basalt boot image under _out/ (or $OUT): the kernel (vmlinuz); our initramfs
# (initramfs.cpio.zst) holding machined as /init, the shared libraries it links
# (glibc's loader and libraries: see "Linking" in README), the kernel modules image/modules
# lists with their dependencies and a generated modules.dep, and a few data files. Nothing
# else: no shell, no interpreter, no tool that runs commands. The image layers (third-party
# daemons: etcd) are squashfs files in a segment of their own (extensions.cpio);
# initramfs.img is what boots: both segments. rootfs/ holds the same files unpacked (the
# layers too), for container nodes.
#
#   hack/image.sh build BINARY   build the image around this machined binary
#   hack/image.sh init BINARY    only replace rootfs/init (for `make reload`)
#   hack/image.sh inputs BINARY  what a build from this binary is a function of (INPUTS)
#   hack/image.sh lock           pin the newest linux-image-cloud-amd64 in image/kernel.lock
#
# IMAGE_ZSTD_LEVEL (default 19, what ships) sets our initramfs's zstd level. Development
# images (`make image`, `make cluster`: a debug machined, rebuilt at every change) take 3:
# level 19 spends ~30 s of CPU on them, level 3 under one, for ~30 % more bytes.
#
# Reproducible: every entry is sorted, owned by root, dated SOURCE_DATE_EPOCH (default: the
# last commit's date) and packed with fixed compression settings, so two builds from the
# same binary in clean directories give bit-identical files.
set -euo pipefail
export LC_ALL=C
umask 022

root="$(cd "$(dirname "$0")/.." && pwd)"
lock="$root/image/kernel.lock"
cache="${BASALT_CACHE:-/var/tmp/basalt-cache}"
level="${IMAGE_ZSTD_LEVEL:-19}"
[[ "$level" =~ ^([1-9]|1[0-9])$ ]] || { echo "image: IMAGE_ZSTD_LEVEL=$level is not a zstd level (1 to 19)" >&2; exit 1; }
out="${OUT:-$root/_out}"

die() { echo "image: $*" >&2; exit 1; }

lock_value() {
  local value
  value="$(sed -n "s/^$2=//p" "$1")"
  [[ -n "$value" ]] || die "$1 has no $2= line"
  echo "$value"
}

cmd_lock() {
  apt-get update -qq
  local package version sha
  package="$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)"
  [[ -n "$package" ]] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
  version="$(apt-cache show "$package" | sed -n 's/^Version: //p' | head -1)"
  sha="$(apt-cache show "$package=$version" | sed -n 's/^SHA256: //p' | head -1)"
  [[ -n "$version" && -n "$sha" ]] || die "apt knows no version or checksum of $package"
  sed -i -e "s/^package=.*/package=$package/" -e "s/^version=.*/version=$version/" \
    -e "s/^sha256=.*/sha256=$sha/" "$lock"
  echo "image: pinned $package $version"
}

# Downloads the package a lock file pins into the cache (once) and checks its checksum.
locked_deb() {
  local lock="$1" package version sha deb
  package="$(lock_value "$lock" package)"
  version="$(lock_value "$lock" version)"
  sha="$(lock_value "$lock" sha256)"
  mkdir -p "$cache"
  deb="$cache/${package}_${version}_amd64.deb"
  if [[ ! -f "$deb" ]] || ! echo "$sha  $deb" | sha256sum --check --status; then
    rm -f "$deb"
    (cd "$cache" && apt-get download -q "$package=$version" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) \
      || die "cannot download $package=$version (run 'make image-lock' if it left the archive)"
    # apt names the file with the version's epoch escaped; use what it wrote.
    local got
    got="$(ls "$cache"/"${package}"_*_amd64.deb | head -1)"
    [[ "$got" == "$deb" ]] || mv "$got" "$deb"
  fi
  echo "$sha  $deb" | sha256sum --check --status \
    || die "$deb does not match the sha256 in $lock"
  echo "$deb"
}

# The dynamic libraries a binary needs, with their loader, as paths on this host.
libraries_of() {
  ldd "$1" | awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }'
}

export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}"

# The inputs of a build, one line each: the binary, SOURCE_DATE_EPOCH, the zstd level, and
# the files of the repository that shape the image.
inputs() {
  echo "binary $(sha256sum < "$1" | cut -d' ' -f1)"
  echo "epoch $SOURCE_DATE_EPOCH"
  echo "zstd-level $level"
  (cd "$root" && sha256sum hack/image.sh image/*)
}

cmd_build() {
  local binary="$1"
  [[ -x "$binary" ]] || die "$binary is not an executable (build machined first)"

  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  local deb kernel tree="$work/tree"
  deb="$(locked_deb "$lock")"
  dpkg-deb -x "$deb" "$work/kernel"
  kernel="$(ls "$work/kernel/lib/modules")"
  [[ -n "$kernel" ]] || die "$deb holds no modules directory"
  depmod -b "$work/kernel" "$kernel"

  mkdir -p "$tree"/{proc,sys,dev,run,tmp,etc/basalt,system/state,system/etc}

  # machined, as /init, without its debug information.
  strip --strip-debug -o "$tree/init" "$binary"
  local lib
  for lib in $(libraries_of "$binary"); do
    mkdir -p "$tree$(dirname "$lib")"
    cp -L "$lib" "$tree$lib"
  done

  # The listed modules and everything they depend on, then a modules.dep for just those.
  local name modpath
  grep -v '^\s*\(#\|$\)' "$root/image/modules" > "$tree/etc/basalt/modules"
  while read -r name; do
    modprobe -d "$work/kernel" -S "$kernel" --show-depends "$name" \
      | awk '$1 == "insmod" { print $2 }' > "$work/deps" \
      || die "module $name is not in $kernel"
    while read -r modpath; do
      mkdir -p "$tree$(dirname "${modpath#"$work/kernel"}")"
      cp "$modpath" "$tree${modpath#"$work/kernel"}"
    done < "$work/deps"
  done < "$tree/etc/basalt/modules"
  cp "$work/kernel/lib/modules/$kernel"/modules.{order,builtin,builtin.modinfo} "$tree/lib/modules/$kernel/"
  depmod -b "$tree" "$kernel"
  find "$tree/lib/modules/$kernel" -maxdepth 1 -type f ! -name modules.dep -delete

  # Written by the node (network.EtcFilesController) on a tmpfs of its own.
  ln -s /system/etc/hosts "$tree/etc/hosts"
  ln -s /system/etc/resolv.conf "$tree/etc/resolv.conf"
  printf 'NAME=Basalt\nID=basalt\nPRETTY_NAME="Basalt"\nVERSION_ID=%s\n' \
    "$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)" > "$tree/etc/os-release"

  # Modes from this script alone, not from the caller's umask or the host's files: only
  # /init and the loader (which the kernel maps for it) are executable.
  find "$tree" -type d -exec chmod 0755 {} +
  find "$tree" -type f -exec chmod 0644 {} +
  chmod 0755 "$tree/init" "$tree"/lib64/ld-linux-*.so.*

  mkdir -p "$out"
  find "$tree" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  # Every core: zstd's output does not depend on the number of threads (checked: -T1,
  # -T2 and -T0 give the same bytes).
  (cd "$tree" && find . -print0 | sort -z \
    | cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) \
    | zstd -q "-$level" -T0 -f -o "$out/initramfs.cpio.zst"
  cp "$work/kernel/boot/vmlinuz-$kernel" "$out/vmlinuz"

  # The etcd layer: Debian's etcd in a squashfs of its own (third-party files, counted
  # apart from ours), in an uncompressed initramfs segment of its own that the kernel
  # unpacks before ours; machined mounts it at /system/extensions/etcd.
  local layer="$work/layers/etcd" segment="$work/segment"
  build_layer_etcd "$layer" "$tree"
  mkdir -p "$segment/system/extensions"
  mksquashfs "$layer" "$segment/system/extensions/etcd.sqsh" -noappend -quiet -no-progress \
    -comp zstd -all-root >/dev/null
  chmod 0644 "$segment/system/extensions/etcd.sqsh"
  find "$segment" -type d -exec chmod 0755 {} +
  find "$segment" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  (cd "$segment" && find . -print0 | sort -z \
    | cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) > "$out/extensions.cpio"
  # What boots: the layers' segment, then ours (the kernel unpacks them in turn).
  cat "$out/extensions.cpio" "$out/initramfs.cpio.zst" > "$out/initramfs.img"

  # The same files unpacked: what container nodes run (`osctl cluster create`), the
  # layers unpacked where a machine mounts them.
  rm -rf "$out/rootfs"
  cp -a "$tree" "$out/rootfs"
  mkdir -p "$out/rootfs/system/extensions"
  cp -a "$layer" "$out/rootfs/system/extensions/etcd"
  touch -d "@$SOURCE_DATE_EPOCH" "$out"/{vmlinuz,initramfs.cpio.zst,extensions.cpio,initramfs.img}
  (cd "$out" && sha256sum vmlinuz initramfs.cpio.zst extensions.cpio initramfs.img > SHA256SUMS)
  # What the build is a function of: another build from the same inputs must give the
  # same SHA256SUMS (the reproducibility test builds once more and compares).
  inputs "$binary" > "$out/INPUTS"
  echo "image: $out/vmlinuz ($kernel), $out/initramfs.img: ours $(stat -c %s "$out/initramfs.cpio.zst") bytes (initramfs.cpio.zst), layers $(stat -c %s "$out/extensions.cpio") bytes (extensions.cpio)"
}

# The etcd layer's files in LAYER: etcd, and a manifest. Every library it links must be
# in the image TREE already (it links only glibc).
build_layer_etcd() {
  local layer="$1" tree="$2" deb lib
  deb="$(locked_deb "$root/image/etcd.lock")"
  dpkg-deb -x "$deb" "$work/etcd"
  mkdir -p "$layer/usr/bin"
  cp "$work/etcd/usr/bin/etcd" "$layer/usr/bin/etcd"
  for lib in $(libraries_of "$layer/usr/bin/etcd"); do
    [[ -e "$tree$lib" ]] || die "etcd needs $lib, which the image lacks"
  done
  printf 'name: etcd\nversion: %s\nsource: Debian %s\n' \
    "$(lock_value "$root/image/etcd.lock" version)" "$(lock_value "$root/image/etcd.lock" package)" \
    > "$layer/manifest.yaml"
  find "$layer" -type d -exec chmod 0755 {} +
  find "$layer" -type f -exec chmod 0644 {} +
  chmod 0755 "$layer/usr/bin/etcd"
  find "$layer" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# Puts BINARY (stripped) at _out/rootfs/init, leaving the rest: the inner loop's step
# (`make reload`), a second where a whole build takes twenty. The libraries it links
# must be the ones already there (the same toolchain and host), which is checked.
cmd_init() {
  local binary="$1" lib
  [[ -x "$binary" ]] || die "$binary is not an executable (build machined first)"
  [[ -f "$out/rootfs/init" ]] || die "no $out/rootfs: run make image first"
  for lib in $(libraries_of "$binary"); do
    [[ -e "$out/rootfs$lib" ]] || die "$binary needs $lib, which $out/rootfs lacks: run make image"
  done
  strip --strip-debug -o "$out/rootfs/init.new" "$binary"
  chmod 0755 "$out/rootfs/init.new"
  mv -f "$out/rootfs/init.new" "$out/rootfs/init"
  echo "image: $out/rootfs/init from $binary"
}

case "${1:-}" in
  build) [[ $# -eq 2 ]] || die "usage: hack/image.sh build BINARY"; cmd_build "$2" ;;
  init) [[ $# -eq 2 ]] || die "usage: hack/image.sh init BINARY"; cmd_init "$2" ;;
  inputs) [[ $# -eq 2 ]] || die "usage: hack/image.sh inputs BINARY"; inputs "$2" ;;
  lock) cmd_lock ;;
  *) die "usage: hack/image.sh build BINARY | lock" ;;
esac
