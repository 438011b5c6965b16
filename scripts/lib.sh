# Shared by scripts/demo and scripts/test: find the repository, install what a fresh Debian 12 machine lacks.
# shellcheck shell=bash

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export REPO_ROOT

# Debian packages the build, the demo and the tests need.
SYSTEM_PACKAGES=(
  pkg-config
  libgstreamer1.0-dev
  libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-base-apps
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
  python3-venv
  python3-pip
  chromium
)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Prints the free space where the build goes, and what the two target directories take; with a minimum in GiB,
# warns when less is free, so that a full disk is named before a compiler dies of it.
disk_report() { # [minimum-free-GiB]
  local avail_kib
  avail_kib=$(df -Pk "$REPO_ROOT" | awk 'NR == 2 { print $4 }')
  local used=""
  [ -d "$REPO_ROOT/target" ] && used+=" target/ $(du -sh "$REPO_ROOT/target" 2>/dev/null | cut -f1)"
  [ -d "$REPO_ROOT/fuzz/target" ] && used+=" fuzz/target/ $(du -sh "$REPO_ROOT/fuzz/target" 2>/dev/null | cut -f1)"
  say "disk: $((avail_kib / 1024)) MiB free;${used:- nothing built yet}"
  if [ -n "${1:-}" ] && [ "$avail_kib" -lt $(($1 * 1024 * 1024)) ]; then
    say "warning: less than $1 GiB free; the build and tests may fail with 'No space left on device'"
  fi
}

# Installs the missing Debian packages with apt-get, through sudo when not root. Node.js and npm (for the viewer's
# browser test) come from Debian unless some npm is on the PATH already.
ensure_system_packages() {
  local missing=() p
  for p in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  command -v npm >/dev/null || missing+=(nodejs npm)
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing system packages: ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; return 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}
