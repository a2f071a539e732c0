#!/usr/bin/env bash
# Builds the images docker-compose.yml runs, on a machine whose Docker
# engine can pull nothing: no registry, only Debian's package mirror.
#
#   busmq-local/debian:12    Debian 12 minbase + ca-certificates, made by
#                            debootstrap and `docker import`
#   busmq-local/redis:7      the same rootfs with Debian's redis-server
#   busmq-local/busmq:latest busmq, busmq-broker, busmq-storage and busmq-http built on
#                            this host, packed by deploy/docker/Dockerfile.prebuilt
#
# The two base images are made once per machine: each is skipped when it
# exists, and its rootfs tarball is kept in $BUSMQ_IMAGE_CACHE
# (/var/cache/busmq-images) so that a removed image is imported again
# without a debootstrap. The busmq image is rebuilt only when the binaries
# changed (their size and time are a label of the image).
#
# Then: docker-compose -f docker-compose.yml -f deploy/docker/compose.local.yml up -d
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: deploy/local-images.sh [--force] [--binaries DIR] [--base-only]

  --binaries DIR  where busmq, busmq-broker, busmq-storage and busmq-http are (default:
                  target/release or target/debug, whichever holds the newer
                  busmq-broker)
  --force         rebuild every image and rootfs tarball
  --base-only     only the Debian and Redis base images

environment: BUSMQ_IMAGE (busmq-local/busmq:latest), BUSMQ_BASE_IMAGE
(busmq-local/debian:12), BUSMQ_REDIS_IMAGE (busmq-local/redis:7),
BUSMQ_IMAGE_CACHE (/var/cache/busmq-images), DEBIAN_MIRROR (the mirror
apt uses here)
EOF
}

force=0
base_only=0
binaries=""
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --base-only) base_only=1 ;;
    --binaries) binaries="${2:?--binaries needs a directory}"; shift ;;
    --binaries=*) binaries="${1#--binaries=}" ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

base_image="${BUSMQ_BASE_IMAGE:-busmq-local/debian:12}"
redis_image="${BUSMQ_REDIS_IMAGE:-busmq-local/redis:7}"
busmq_image="${BUSMQ_IMAGE:-busmq-local/busmq:latest}"
cache="${BUSMQ_IMAGE_CACHE:-/var/cache/busmq-images}"
suite=bookworm
started=$SECONDS

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

step() { printf '[local-images %3ds] %s\n' "$((SECONDS - started))" "$*"; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The mirror apt already uses, so this works wherever apt-get does.
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v -- '-security' | head -n 1 | tr -d ' ' || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# Removes a rootfs work tree, first releasing what debootstrap may have
# left mounted in it (proc, sys, a bind of /dev) when it failed: rm must
# never reach into the host's /dev.
remove_tree() {
  local mnt
  awk -v w="$1/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r \
    | while read -r mnt; do $sudo umount -l "$mnt" || true; done
  $sudo rm -rf --one-file-system "$1"
}

# Makes the rootfs tarballs in $cache: the Debian base, and the base with
# redis-server installed through the chroot's apt (run on the host: a
# container here may not reach the mirror).
make_rootfs_tarballs() {
  if ! command -v debootstrap >/dev/null; then
    step "installing debootstrap (Debian package)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq debootstrap >/dev/null
  fi
  local mirror work root redis
  mirror=$(debian_mirror)
  $sudo mkdir -p "$cache/debs"
  work=$($sudo mktemp -d "$cache/rootfs.XXXXXX")
  # shellcheck disable=SC2064 # expand $work now: it is local
  trap "remove_tree '$work'" EXIT
  root="$work/debian"
  redis="$work/redis"

  step "debootstrap $suite (minbase) from $mirror"
  $sudo debootstrap --variant=minbase --include=ca-certificates --components=main \
    --cache-dir="$cache/debs" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { $sudo cat "$work/debootstrap.log" >&2; exit 1; }

  step "installing redis-server into a copy of the rootfs"
  $sudo cp -a "$root" "$redis"
  # Name resolution as on the host, for the mirror only (docker gives each
  # container its own /etc/hosts and /etc/resolv.conf anyway).
  local f
  for f in hosts resolv.conf; do
    if [ -e "$redis/etc/$f" ] || [ -L "$redis/etc/$f" ]; then
      $sudo mv "$redis/etc/$f" "$redis/etc/$f.orig"
    fi
    $sudo cp -L "/etc/$f" "$redis/etc/$f"
  done
  # Keeps the package scripts from starting a redis-server on the host.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$redis/usr/sbin/policy-rc.d" >/dev/null
  $sudo chmod 0755 "$redis/usr/sbin/policy-rc.d"
  local apt_opts=(-o Acquire::Check-Valid-Until=false -o Acquire::Check-Date=false)
  if ! { $sudo chroot "$redis" apt-get "${apt_opts[@]}" update -qq \
    && $sudo env DEBIAN_FRONTEND=noninteractive chroot "$redis" apt-get "${apt_opts[@]}" \
      install -y -qq --no-install-recommends redis-server redis-tools; } >"$work/apt.log" 2>&1; then
    $sudo cat "$work/apt.log" >&2
    exit 1
  fi
  $sudo rm -f "$redis/usr/sbin/policy-rc.d"
  for f in hosts resolv.conf; do
    $sudo rm -f "$redis/etc/$f"
    if [ -e "$redis/etc/$f.orig" ] || [ -L "$redis/etc/$f.orig" ]; then
      $sudo mv "$redis/etc/$f.orig" "$redis/etc/$f"
    fi
  done
  $sudo mkdir -p "$redis/data"
  $sudo chroot "$redis" chown redis:redis /data

  local dir
  for dir in "$root" "$redis"; do
    # What an image never reads: package caches, lists, documentation.
    $sudo chroot "$dir" apt-get clean
    $sudo rm -rf --one-file-system "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin \
      "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
      "$dir"/var/log/*.log "$dir"/var/log/apt/* "$dir"/tmp/*
  done

  step "packing the rootfs tarballs into $cache"
  $sudo tar --numeric-owner --one-file-system -C "$root" -cf "$cache/debian-12.tar.part" .
  $sudo tar --numeric-owner --one-file-system -C "$redis" -cf "$cache/redis-7.tar.part" .
  $sudo mv "$cache/debian-12.tar.part" "$cache/debian-12.tar"
  $sudo mv "$cache/redis-7.tar.part" "$cache/redis-7.tar"
  remove_tree "$work"
  trap - EXIT
}

if [ "$force" -eq 1 ] || ! have_image "$base_image" || ! have_image "$redis_image"; then
  if [ "$force" -eq 1 ] || [ ! -f "$cache/debian-12.tar" ] || [ ! -f "$cache/redis-7.tar" ]; then
    make_rootfs_tarballs
  fi
  path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  if [ "$force" -eq 1 ] || ! have_image "$base_image"; then
    step "docker import $base_image"
    $sudo cat "$cache/debian-12.tar" | docker import \
      --change "ENV PATH=$path LANG=C.UTF-8" \
      --change 'CMD ["/bin/bash"]' \
      --message "Debian 12 minbase by debootstrap" - "$base_image" >/dev/null
  fi
  if [ "$force" -eq 1 ] || ! have_image "$redis_image"; then
    step "docker import $redis_image"
    $sudo cat "$cache/redis-7.tar" | docker import \
      --change "ENV PATH=$path LANG=C.UTF-8" \
      --change 'USER redis' \
      --change 'WORKDIR /data' \
      --change 'EXPOSE 6379' \
      --change 'CMD ["redis-server", "--protected-mode", "no", "--dir", "/data"]' \
      --message "Debian 12 redis-server by debootstrap" - "$redis_image" >/dev/null
  fi
else
  step "$base_image and $redis_image exist (--force rebuilds them)"
fi

[ "$base_only" -eq 0 ] || { step "done"; exit 0; }

names=(busmq busmq-broker busmq-storage busmq-http)
if [ -z "$binaries" ]; then
  binaries=target/debug
  if [ -x target/release/busmq-broker ] \
    && { [ ! -x target/debug/busmq-broker ] || [ target/release/busmq-broker -nt target/debug/busmq-broker ]; }; then
    binaries=target/release
  fi
fi
for name in "${names[@]}"; do
  [ -x "$binaries/$name" ] || {
    echo "no $binaries/$name: build it first (cargo build --workspace --bins)" >&2
    exit 1
  }
done

fingerprint=$( (cd "$binaries" && stat -L -c '%n %s %Y' "${names[@]}"; cat "$OLDPWD/deploy/docker/Dockerfile.prebuilt"; echo "$base_image") | sha256sum | cut -c1-16)
current=$(docker image inspect -f '{{ index .Config.Labels "busmq.binaries" }}' "$busmq_image" 2>/dev/null || true)
if [ "$force" -eq 0 ] && [ "$current" = "$fingerprint" ]; then
  step "$busmq_image is up to date with $binaries (--force rebuilds it)"
  exit 0
fi

# A context of the three binaries alone (a few tens of MB, not target/),
# without debug information, which the image does not need.
context=target/docker-prebuilt
rm -rf "$context"
mkdir -p "$context/bin"
step "copying the binaries from $binaries (debug info stripped)"
for name in "${names[@]}"; do
  if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$binaries/$name" "$context/bin/$name"
  else
    cp "$binaries/$name" "$context/bin/$name"
  fi
done
previous=$(docker image inspect -f '{{ .Id }}' "$busmq_image" 2>/dev/null || true)
step "docker build $busmq_image (deploy/docker/Dockerfile.prebuilt)"
docker build -q -f deploy/docker/Dockerfile.prebuilt \
  --build-arg "RUNTIME_IMAGE=$base_image" \
  --label "busmq.binaries=$fingerprint" \
  -t "$busmq_image" "$context" >/dev/null
rm -rf "$context"
# The image this one replaces, now untagged. Docker refuses (and it stays)
# while a container runs it or another tag names it.
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{ .Id }}' "$busmq_image")" ]; then
  docker rmi "$previous" >/dev/null 2>&1 || true
fi
step "done: $busmq_image $(docker image inspect -f '{{ .Size }}' "$busmq_image" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
