#!/usr/bin/env bash
# podman for the containers test tier and `make images` on a machine with no Docker
# engine. As root with apt-get, install what is missing (Debian's podman with runc, and
# debootstrap for the stand-in base images); on a machine with hybrid cgroups and no
# /etc/containers/containers.conf, install scripts/podman/containers.conf there; when
# the base images can be neither found nor pulled, build their stand-ins
# (scripts/stand-in-bases/build.sh). Elsewhere it says what is missing and exits 1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
say() { echo "ensure-podman: $*" >&2; }
root=false
[[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 && root=true

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman runc)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
    if ! $root; then
        say "missing ${missing[*]}: install them (sudo apt-get install ${missing[*]}) or use Docker"
        exit 1
    fi
    say "installing Debian's ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" uidmap slirp4netns netavark aardvark-dns >/dev/null
fi

if $root && [[ ! -e /etc/containers/containers.conf ]] &&
    [[ $(stat -fc %T /sys/fs/cgroup) != cgroup2fs ]]; then
    say "hybrid cgroups: installing scripts/podman/containers.conf (runc, cgroupfs, limits)"
    install -D -m 0644 "$here/podman/containers.conf" /etc/containers/containers.conf
fi

# Base images: real ones (present or pulled), else stand-ins made here from Debian
# packages; build.sh keeps stand-ins made by its current recipe and renews older ones.
stand_ins=false
for base in python:3.11-slim nginxinc/nginx-unprivileged:1.27-alpine; do
    if recipe=$(podman image inspect --format '{{index .Labels "mega.stand-in.recipe"}}' "$base" 2>/dev/null); then
        [[ -n $recipe ]] && stand_ins=true
    elif ! podman pull --quiet "$base" >/dev/null 2>&1; then
        say "cannot pull $base: using stand-in base images made from Debian packages"
        stand_ins=true
    fi
done
if $stand_ins; then
    $root || { say "stand-in base images need root: run scripts/stand-in-bases/build.sh as root"; exit 1; }
    "$here/stand-in-bases/build.sh"
fi
