#!/usr/bin/env bash
# Make a local base image for the fedlocal Dockerfile without any container registry:
# Debian bookworm (debootstrap) with Python 3.11 in a virtual environment at /opt/venv
# (first on PATH, so `python` and `pip` are the venv's), and, unless WITH_DEPS=0, every
# dependency listed in pyproject.toml pre-installed (torch with its CUDA libraries included,
# ~6 GB), so that building the app image on top of it installs only fedlocal itself:
#
#   deploy/base-image.sh                          # -> localhost/fedlocal-base:bookworm
#   podman build --runtime runc --build-arg BASE_IMAGE=localhost/fedlocal-base:bookworm \
#     --build-arg PIP_OPTIONS="--no-index --no-build-isolation" -t fedlocal:latest .
#
# Usage: deploy/base-image.sh [IMAGE_NAME]   (run as root: debootstrap and chroot need it)
# Environment:
#   ENGINE       podman (default) or docker: the engine that imports the image
#   MIRROR       Debian mirror (default http://deb.debian.org/debian)
#   WITH_DEPS    1 (default) pre-installs pyproject.toml's dependencies; 0 = bare Python
#   BASE_PIP_OPTIONS  extra options for that pip install (e.g. "--find-links /wheels")
#   PIP_CACHE    host folder kept as pip's cache between runs (default ~/.cache/fedlocal-base-pip)
#   CA_BUNDLE    CA certificates pip trusts while installing (default: the host's
#                /etc/ssl/certs/ca-certificates.crt, which knows any TLS proxy the host uses);
#                used for the build only, not left in the image
# The packages come from the Debian mirror and PyPI (or BASE_PIP_OPTIONS), fetched by the
# host (the chroot shares its network). The image carries the label fedlocal.deps = the
# sha256 of the dependency list, so a stale base can be recognised (tests/test_compose.py).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-localhost/fedlocal-base:bookworm}
engine=${ENGINE:-podman}
mirror=${MIRROR:-http://deb.debian.org/debian}
with_deps=${WITH_DEPS:-1}
pip_cache=${PIP_CACHE:-${HOME}/.cache/fedlocal-base-pip}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

[[ $(id -u) == 0 ]] || { echo "base-image.sh: run as root (debootstrap, chroot)" >&2; exit 1; }
for tool in debootstrap "$engine" python3; do
  command -v "$tool" >/dev/null || { echo "base-image.sh: '$tool' is not installed (apt-get install -y debootstrap podman)" >&2; exit 1; }
done

deps=$(python3 deploy/requirements.py pyproject.toml)
deps_hash=$(printf '%s\n' "$deps" | sha256sum | cut -c1-64)
[[ $with_deps == 1 ]] || deps_hash=none

rootfs=$(mktemp -d /var/tmp/fedlocal-rootfs.XXXXXX)
mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
  rm -rf --one-file-system "$rootfs" "$rootfs.log"
}
trap cleanup EXIT

echo "base-image.sh: debootstrap bookworm into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
chroot "$rootfs" env -i PATH=/usr/bin:/bin python3 -m venv /opt/venv

if [[ $with_deps == 1 ]]; then
  echo "base-image.sh: pip install the dependencies of pyproject.toml (torch included: minutes)"
  mkdir -p "$pip_cache" "$rootfs/root/.cache/pip" "$rootfs/proc"
  mount --bind "$pip_cache" "$rootfs/root/.cache/pip"; mounted+=("$rootfs/root/.cache/pip")
  mount -t proc proc "$rootfs/proc"; mounted+=("$rootfs/proc")
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  cp "$ca_bundle" "$rootfs/tmp/ca-bundle.crt"
  printf '%s\n' "$deps" "setuptools>=68" "wheel" >"$rootfs/tmp/requirements.txt"
  # A clean environment: the host's PIP_* settings name host paths.
  # shellcheck disable=SC2086  # BASE_PIP_OPTIONS is a list of options
  chroot "$rootfs" env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/tmp/ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    /opt/venv/bin/pip install -q ${BASE_PIP_OPTIONS:-} -r /tmp/requirements.txt
  chroot "$rootfs" env -i /opt/venv/bin/python -c "import flwr, torch, torchvision; print('base-image.sh: flwr', flwr.__version__, 'torch', torch.__version__)"
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}"; done
  mounted=()
  rm -f "$rootfs/tmp/requirements.txt" "$rootfs/tmp/ca-bundle.crt" "$rootfs/etc/resolv.conf"
fi
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/root/.cache

echo "base-image.sh: importing $image"
tar --numeric-owner -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
  "$engine" import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV VIRTUAL_ENV=/opt/venv' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL fedlocal.deps=$deps_hash" \
    --change 'CMD ["python"]' \
    - "$image" >/dev/null
echo "base-image.sh: made $image (fedlocal.deps=$deps_hash)"
