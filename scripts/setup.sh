#!/usr/bin/env bash
# Installs what building chatnode needs on a fresh Debian/Ubuntu machine:
# clang + libclang-dev (the rocksdb crate's bindgen) and a C++ compiler.
# Idempotent: does nothing when everything is there.
set -euo pipefail

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  need+=(libclang-dev)
fi
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

# lossyfs (the power-loss file system) mounts through /dev/fuse with mount(2) as root; it needs
# no FUSE library or fusermount, only the kernel module.
if [ "$(id -u)" -eq 0 ] && [ ! -e /dev/fuse ]; then
  modprobe fuse 2>/dev/null || echo "setup: no /dev/fuse (modprobe fuse failed): lossyfs's mount tests will be skipped"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust from https://rustup.rs (stable >= 1.85)" >&2
  exit 1
fi

# `make test` runs rustfmt and clippy; rustup's minimal profile has neither.
for tool in fmt clippy; do
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      component=$([ "$tool" = fmt ] && echo rustfmt || echo clippy)
      echo "setup: installing the $component component"
      rustup component add "$component"
    else
      echo "setup: cargo $tool not found and no rustup to add it" >&2
      exit 1
    fi
  fi
done
