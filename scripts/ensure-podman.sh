#!/usr/bin/env bash
# podman for the containers test tier and `make images` on a machine with no Docker
# engine. As root with apt-get, it installs what is missing (Debian's podman and runc, and
# iptables, which podman's network backend netavark runs for every build step's network);
# on a machine with hybrid cgroups and no /etc/containers/containers.conf, as root, it
# installs scripts/podman/containers.conf there (crun fails on such machines); then it
# makes sure the Dockerfiles' base images are there: present, pulled, or stand-ins made
# from Debian packages where no image registry answers (scripts/stand-in-bases/build.sh).
# It says what is missing and exits 1 when it cannot do its part.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
say() { echo "ensure-podman: $*" >&2; }
root=false
[[ $(id -u) -eq 0 ]] && root=true

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
# netavark needs it but does not depend on it: without it a RUN step fails with
# "netavark: No such file or directory".
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if ((${#missing[@]})); then
    if ! $root || ! command -v apt-get >/dev/null 2>&1; then
        say "missing ${missing[*]}: install podman (on Debian: sudo apt-get install podman runc)," \
            "or use Docker (docs/containers.md)"
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

"$here/stand-in-bases/build.sh"
