# Interpreters that pyenv does not have here: Python 3.14 and 3.15 from a Debian testing
# chroot, and free-threaded builds compiled from Debian's source tarballs. Sourced by .ci/run.
#
# Everything is cached outside the clone (ALLOTMENT_CI_CACHE, /var/cache/allotment-ci by default)
# so a later run reuses it; where the mirror cannot serve something, the step says so and CI goes
# on without it.

ci_cache=${ALLOTMENT_CI_CACHE:-/var/cache/allotment-ci}
ci_mirror=${ALLOTMENT_CI_MIRROR:-http://deb.debian.org/debian}
chroot_root="$ci_cache/forky"
# Testing's point releases come in when the chroot is remade (under a minute).
chroot_max_age_days=14

# Build and debootstrap steps yield to anything else that needs the CPU.
ci_nice() { nice -n 10 "$@"; }

# apt with its own sources, lists and cache: the system's configuration stays as it is.
private_apt() {
    local dir=$1
    shift
    apt-get -o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts="$dir/sources" \
        -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" \
        -o Acquire::Check-Valid-Until=false "$@"
}

chroot_is_fresh() {
    [ -f "$chroot_root/.allotment-ready" ] \
        && [ -z "$(find "$chroot_root/.allotment-ready" -mtime +"$chroot_max_age_days")" ]
}

# Runs a command (a bash script) in the chroot with the clone at /src. A private mount and pid
# namespace: the mounts, and any redis-server a killed test left behind, vanish with it. bash
# stays pid 1 (the trailing exit keeps it from exec'ing the last command: timeout refuses pid 1).
in_chroot() {
    local script=$1
    # The machine's network intercepts TLS with its own CA, which only the host's bundle has.
    cp /etc/ssl/certs/ca-certificates.crt "$chroot_root/etc/ssl/certs/ca-certificates.crt"
    unshare --mount --pid --fork --propagation private bash -c '
        set -e
        root=$1 src=$2 script=$3
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mkdir -p "$root/src"
        mount --bind "$src" "$root/src"
        status=0
        chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root \
            LANG=C.UTF-8 CI="${CI:-}" PIP_DISABLE_PIP_VERSION_CHECK=1 \
            bash -c "cd /src && $script" || status=$?
        exit "$status"
    ' in-chroot "$chroot_root" "$PWD" "$script"
}

# Prints nothing and returns 1 when the chroot cannot be had (the caller prints the skip line).
ensure_chroot() {
    if chroot_is_fresh; then
        echo "Debian testing chroot: cached at $chroot_root"
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
        echo "a Debian testing chroot needs root and apt-get" >&2
        return 1
    fi
    if ! command -v debootstrap > /dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap > /dev/null 2>&1 \
            || { apt-get update -qq > /dev/null 2>&1 \
                && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap > /dev/null; } \
            || return 1
    fi
    local new="$chroot_root.new"
    rm -rf "$new"
    mkdir -p "$ci_cache"
    # bookworm's debootstrap has no script for forky; sid's is the same.
    if ! ci_nice debootstrap --variant=minbase --include=ca-certificates forky "$new" "$ci_mirror" \
        /usr/share/debootstrap/scripts/sid > "$ci_cache/debootstrap.log" 2>&1; then
        tail -n 5 "$ci_cache/debootstrap.log" >&2
        rm -rf "$new"
        return 1
    fi
    # The mirror's testing Release files are past their Valid-Until.
    echo 'Acquire::Check-Valid-Until "false";' > "$new/etc/apt/apt.conf.d/99allotment-ci"
    # Packages must not start daemons (the tests start their own redis-server).
    printf '#!/bin/sh\nexit 101\n' > "$new/usr/sbin/policy-rc.d"
    chmod +x "$new/usr/sbin/policy-rc.d"
    local saved_root=$chroot_root
    chroot_root=$new
    if ! in_chroot 'export DEBIAN_FRONTEND=noninteractive
        nice -n 10 apt-get update -qq
        nice -n 10 apt-get install -y -qq --no-install-recommends \
            python3.14-venv python3.15-venv redis-server > /dev/null' \
        > "$ci_cache/chroot-packages.log" 2>&1; then
        chroot_root=$saved_root
        tail -n 5 "$ci_cache/chroot-packages.log" >&2
        rm -rf "$new"
        return 1
    fi
    chroot_root=$saved_root
    touch "$new/.allotment-ready"
    rm -rf "$chroot_root"
    mv "$new" "$chroot_root"
    echo "Debian testing chroot: made at $chroot_root"
}

# Builds CPython VERSION (3.13, 3.14, ...) with --disable-gil from Debian's source package, which
# is the upstream release tarball byte for byte, into $ci_cache/python-VERSIONt. Prints the
# interpreter's path on stdout; returns 1, after saying why on stderr, when it cannot be had.
ensure_free_threaded() {
    local version=$1
    local prefix="$ci_cache/python${version}t"
    local interpreter="$prefix/bin/python${version}t"
    if [ -x "$interpreter" ] && [ -f "$prefix/.allotment-ready" ]; then
        echo "$interpreter"
        return 0
    fi
    if ! command -v apt-get > /dev/null || ! command -v make > /dev/null; then
        echo "building Python ${version}t needs apt-get and a C toolchain" >&2
        return 1
    fi
    local work="$ci_cache/build-${version}t"
    rm -rf "$work"
    mkdir -p "$work/sources" "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
    printf '%s\n' "Types: deb-src" "URIs: $ci_mirror" "Suites: forky sid trixie" \
        "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
        > "$work/sources/src.sources"
    if ! private_apt "$work" -qq update > "$work/apt.log" 2>&1; then
        echo "the mirror's source lists could not be read: Python ${version}t skipped" >&2
        return 1
    fi
    local suite fetched=""
    for suite in forky sid trixie; do
        if (cd "$work/src" && private_apt "$work" -qq source --download-only \
            "python${version}/$suite" >> "$work/apt.log" 2>&1); then
            fetched=$suite
            break
        fi
    done
    local tarball
    tarball=$(ls "$work"/src/python"${version}"_*.orig.tar.xz 2>/dev/null | head -n 1 || true)
    if [ -z "$fetched" ] || [ -z "$tarball" ]; then
        echo "the mirror does not serve a python${version} source tarball: Python ${version}t skipped" >&2
        return 1
    fi
    mkdir -p "$work/build"
    tar -xJf "$tarball" -C "$work/build" --strip-components=1
    if ! (cd "$work/build" \
        && ci_nice ./configure --disable-gil --disable-test-modules --prefix="$prefix" \
        && ci_nice make -j"$(nproc)" && make install) > "$work/build.log" 2>&1; then
        tail -n 20 "$work/build.log" >&2
        echo "Python ${version}t did not build: skipped" >&2
        return 1
    fi
    if ! "$interpreter" -c 'import sys; sys.exit(sys._is_gil_enabled())'; then
        echo "Python ${version}t was built with the GIL: skipped" >&2
        return 1
    fi
    touch "$prefix/.allotment-ready"
    rm -rf "$work"
    echo "$interpreter"
}
