#!/usr/bin/env bash
# The base images our Dockerfiles start FROM, for podman: each is kept when present,
# else pulled, else (on a machine that reaches no image registry, only the package
# registries, as CI's) made here as a stand-in: a Debian bookworm root made with
# debootstrap from this machine's own apt mirror and imported into podman under the
# name the Dockerfile uses, so podman builds the Dockerfiles unchanged. Anyone who can
# pull images gets the real ones and never a stand-in.
#
#   the FROM of src/Dockerfile (python:3.11-slim): bookworm's Python 3.11, pip, CA certificates
#   the FROM of src/frontend/Dockerfile (unprivileged nginx): Debian's nginx, uid 101, and
#     the image's template entrypoint
#
# Usage: scripts/stand-in-bases/build.sh   (making a stand-in needs root; debootstrap is
# installed with apt-get when missing).
# Idempotent: an image already made by this recipe is kept, and a real image (one this
# script did not make) is never replaced; the Debian roots are cached as tarballs in
# $MEGA_STAND_IN_CACHE (default ~/.cache/mega-pipeline/stand-in-bases). DEBIAN_MIRROR
# overrides the mirror read from /etc/apt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${MEGA_STAND_IN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mega-pipeline/stand-in-bases}
# The host's CA bundle goes into the images: installs inside a build then trust what
# the host trusts (a TLS-inspecting proxy's CA included), as the host's own pip does.
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
# Any change to this folder or to the CA bundle makes new stand-ins (the images carry
# the recipe's hash).
recipe=$(cat "$here"/* "$ca_bundle" | sha256sum | cut -c1-16)

say() { echo "stand-in-bases: $*" >&2; }

debian_mirror() {
    if [[ -n ${DEBIAN_MIRROR:-} ]]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    # The first Debian (not -security) URI of apt's sources, one-line or deb822 form.
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }')
    [[ -n $uri ]] || uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '$1 == "URIs:" && $2 !~ /security/ { print $2; exit }')
    [[ -n $uri ]] || { say "no Debian mirror in /etc/apt; set DEBIAN_MIRROR"; exit 1; }
    echo "$uri"
}

# base_of DOCKERFILE: the image its first stage is built FROM, as written there.
base_of() {
    awk 'toupper($1) == "FROM" { print $2; exit }' "$1"
}

# made_by IMAGE: the recipe hash of a stand-in, "real" for an image this script did
# not make, "" when there is no such image.
made_by() {
    local label
    label=$(podman image inspect --format '{{index .Labels "mega.stand-in.recipe"}}' "$1" 2>/dev/null) ||
        return 0
    echo "${label:-real}"
}

# needed NAME IMAGE: whether IMAGE needs a stand-in made now (said either way).
needed() {
    case $(made_by "$2") in
        "$recipe") say "$1: $2 is current"; return 1 ;;
        real) return 1 ;;
        "")
            if podman pull --quiet "$2" >/dev/null 2>&1; then
                say "$1: pulled $2"
                return 1
            fi
            say "$1: cannot pull $2: making a stand-in from Debian packages"
            ;;
        *) say "$1: $2 is a stand-in of an older recipe: making it anew" ;;
    esac
    if [[ $(id -u) -ne 0 ]]; then
        say "making a stand-in needs root: run scripts/stand-in-bases/build.sh as root"
        exit 1
    fi
    return 0
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null 2>&1 && return
    command -v apt-get >/dev/null 2>&1 ||
        { say "debootstrap is missing and there is no apt-get: install debootstrap"; exit 1; }
    say "installing Debian's debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

# root_tarball NAME PACKAGES CUSTOMIZE: a cached tarball of a minimal bookworm root with
# PACKAGES, changed by the function CUSTOMIZE (given the root's path).
root_tarball() {
    local name=$1 packages=$2 customize=$3 tarball="$cache/$1-$recipe.tar"
    if [[ ! -s $tarball ]]; then
        # Removed however this ends (a failed debootstrap leaves hundreds of MB).
        work=$(mktemp -d "$cache/.$name-XXXXXX")
        trap 'rm -rf "$work"' EXIT
        local root="$work/root"
        mkdir -m 0755 "$root"
        ensure_debootstrap
        say "$name: debootstrap bookworm with $packages (about 2 minutes)"
        debootstrap --variant=minbase --include="$packages" bookworm "$root" "$(debian_mirror)" \
            >"$work/debootstrap.log" 2>&1 || {
            cp "$work/debootstrap.log" "$cache/$name-debootstrap.log"
            say "$name: debootstrap failed; see $cache/$name-debootstrap.log"
            exit 1
        }
        "$customize" "$root"
        # Nothing a base image needs: downloaded packages, apt lists, docs.
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
            "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
        tar -C "$root" -cf "$work/root.tar" .
        mv "$work/root.tar" "$tarball"
        rm -rf "$work"
    fi
    echo "$tarball"
}

customize_python() {
    local root=$1
    # As in python:3.11-slim: `python` on the PATH and pip free to install system-wide.
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
}

customize_nginx() {
    local root=$1
    # The unprivileged image's user (uid and gid 101), its nginx.conf and entrypoint.
    groupadd --root "$root" --gid 101 nginx
    useradd --root "$root" --uid 101 --gid 101 --system --no-create-home \
        --shell /usr/sbin/nologin nginx
    install -m 0644 "$here/nginx.conf" "$root/etc/nginx/nginx.conf"
    install -m 0755 "$here/docker-entrypoint.sh" "$root/docker-entrypoint.sh"
    rm -f "$root"/etc/nginx/sites-enabled/*
    mkdir -p "$root/etc/nginx/templates"
    # nginx opens its built-in error log before reading nginx.conf: send it to stderr.
    ln -sf /dev/stderr "$root/var/log/nginx/error.log"
    chown -R 101:101 "$root/etc/nginx/conf.d" "$root/var/log/nginx" "$root/var/lib/nginx"
}

# import_root NAME TARBALL IMAGE [--change …]: the root as image IMAGE.
import_root() {
    local name=$1 tarball=$2 image=$3
    shift 3
    podman import --quiet --change "LABEL mega.stand-in.recipe=$recipe" "$@" \
        "$tarball" "$image" >/dev/null
    say "$name: $image ready"
}

mkdir -p "$cache"
# One build at a time: two would share the cache's tarballs.
exec 9>"$cache/.lock"
flock 9

python_image=$(base_of "$repo/src/Dockerfile")
if needed python "$python_image"; then
    tarball=$(root_tarball python python3,python3-venv,python3-pip,ca-certificates customize_python)
    import_root python "$tarball" "$python_image" \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV LANG=C.UTF-8" \
        --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
        --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
        --change 'CMD ["python3"]'
fi

nginx_image=$(base_of "$repo/src/frontend/Dockerfile")
if needed nginx "$nginx_image"; then
    tarball=$(root_tarball nginx nginx-light,gettext-base,wget,ca-certificates customize_nginx)
    import_root nginx "$tarball" "$nginx_image" \
        --change 'ENTRYPOINT ["/docker-entrypoint.sh"]' \
        --change 'CMD ["nginx", "-g", "daemon off;"]' \
        --change "USER 101" \
        --change "EXPOSE 8080" \
        --change "STOPSIGNAL SIGQUIT"
fi
# Old recipes' tarballs are never used again.
find "$cache" -maxdepth 1 -name '*.tar' ! -name "*-$recipe.tar" -delete
