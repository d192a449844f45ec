#!/usr/bin/env bash
# Installs the Debian packages that the real-client tests (tests/clients/)
# drive for real: the docker daemon and CLI (docker.io, which brings
# containerd and runc), skopeo, podman, CNCF Distribution 2.8 (the reference
# registry, package docker-registry) and redis-server; wrk and hey drive the
# request-rate figures of `make bench` (section versus); a single-node Ceph
# (ceph-mon, ceph-osd, radosgw; no ceph-mgr) whose RADOS Gateway is the real
# S3 endpoint the S3 storage driver's tests start (tests/storage/rgw.py);
# chromium (headless) and chromium-driver drive the web page's browser
# tests (tests/ui/).
#
# Idempotent and fast when everything is present: only missing packages are
# installed, `apt-get update` runs at most once.  No service is started: a
# temporary /usr/sbin/policy-rc.d answers 101 ("action forbidden") while
# packages are configured, so postinst scripts neither start daemons nor fail
# on a machine without systemd.  The tests start every daemon themselves.
#
# Another package manager at work (unattended upgrades, apt in another
# terminal) holds dpkg's lock: this waits for it (up to
# SYSTEM_DEPS_LOCK_TIMEOUT seconds, default 600) instead of failing, and
# retries a failed install once.
#
# Outside CI it never fails the build because a package cannot be had: what
# is missing is reported loudly, and the tests that need it skip with a
# reason naming it.  Under CI=true (or SYSTEM_DEPS_STRICT=1) a missing
# package is an error, so a green CI run always means the real clients ran.
#
# SYSTEM_DEPS_LOG (default /tmp/install-system-deps.log) is apt's output,
# SYSTEM_DEPS_RETRY_PAUSE (default 15) the seconds before the retry, and
# SYSTEM_DEPS_POLICY_RC (default /usr/sbin/policy-rc.d) the policy file
# (tests/test_install_deps.py runs this script against a stand-in apt-get).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
LOCK_TIMEOUT=${SYSTEM_DEPS_LOCK_TIMEOUT:-600}
LOG=${SYSTEM_DEPS_LOG:-/tmp/install-system-deps.log}
RETRY_PAUSE=${SYSTEM_DEPS_RETRY_PAUSE:-15}
case "${CI:-}" in
    true | TRUE | True | 1 | yes) : "${SYSTEM_DEPS_STRICT:=1}" ;;
esac

# command that proves the package works -> Debian package that provides it
declare -A WANTED=(
    [dockerd]=docker.io
    [skopeo]=skopeo
    [podman]=podman
    [docker-registry]=docker-registry
    [redis-server]=redis-server
    [nginx]=nginx-light
    [wrk]=wrk
    [hey]=hey
    [ceph-mon]=ceph-mon
    [ceph-osd]=ceph-osd
    [radosgw]=radosgw
    [chromium]=chromium
    [chromedriver]=chromium-driver
)
# Not needed here: podman and skopeo use the vfs storage driver as root, so
# fuse-overlayfs, uidmap and slirp4netns (all only "Recommends") stay out.

log() { printf 'install-system-deps: %s\n' "$*" >&2; }

# needs_install CMD PKG: true when CMD is missing, or when dpkg knows PKG in
# a broken state (unpacked, half-configured...).  A CMD that comes from
# elsewhere (say Docker's own docker-ce) counts as present.
needs_install() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$2" 2>/dev/null || true)
    case "$status" in
        "install ok installed" | "" | *not-installed | *config-files)
            ! command -v "$1" >/dev/null 2>&1 ;;
        *) return 0 ;;
    esac
}

missing=()
for cmd in "${!WANTED[@]}"; do
    pkg=${WANTED[$cmd]}
    if needs_install "$cmd" "$pkg"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    log "all present: ${WANTED[*]}"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "WARNING: not root, cannot install: ${missing[*]} (the tests that need them will skip)"
    [ "${SYSTEM_DEPS_STRICT:-0}" = 1 ] && exit 1
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "WARNING: no apt-get, cannot install: ${missing[*]} (the tests that need them will skip)"
    [ "${SYSTEM_DEPS_STRICT:-0}" = 1 ] && exit 1
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
          -o "DPkg::Lock::Timeout=$LOCK_TIMEOUT")

# wait_for_locks: until no other apt/dpkg holds their locks (apt's own
# DPkg::Lock::Timeout covers installs, but not `apt-get update`'s list lock
# on every apt version, nor plain dpkg).
wait_for_locks() {
    python3 "$HERE/wait_dpkg_lock.py" --timeout "$LOCK_TIMEOUT" \
        || log "WARNING: package manager locks still held after ${LOCK_TIMEOUT} s (trying anyway)"
}

# apt_install PKG...: install, retrying once after a pause on a failure
# (a lock taken between our wait and apt's start, a transient mirror error).
apt_install() {
    wait_for_locks
    if apt-get install "${APT_OPTS[@]}" "$@" >>"$LOG" 2>&1; then
        return 0
    fi
    log "apt-get install $* failed; retrying once in ${RETRY_PAUSE} s (log: $LOG)"
    sleep "$RETRY_PAUSE"
    wait_for_locks
    apt-get update -qq -o "DPkg::Lock::Timeout=$LOCK_TIMEOUT" >>"$LOG" 2>&1 || true
    apt-get install "${APT_OPTS[@]}" "$@" >>"$LOG" 2>&1
}

# Keep services from starting during configuration; restore whatever was there.
POLICY=${SYSTEM_DEPS_POLICY_RC:-/usr/sbin/policy-rc.d}
policy_backup=""
if [ -e "$POLICY" ]; then
    policy_backup=$(mktemp)
    cp -p "$POLICY" "$policy_backup"
fi
restore_policy() {
    if [ -n "$policy_backup" ]; then
        cp -p "$policy_backup" "$POLICY"
        rm -f "$policy_backup"
    else
        rm -f "$POLICY"
    fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# written by install-system-deps.sh while it installs\nexit 101\n' >"$POLICY"
chmod 0755 "$POLICY"

: >"$LOG"
# Finish whatever an earlier interrupted run left half-configured.
wait_for_locks
dpkg --configure -a >/dev/null 2>&1 || log "dpkg --configure -a reported a problem (continuing)"

start=$(date +%s)
log "installing: ${missing[*]}"
wait_for_locks
apt-get update -qq -o "DPkg::Lock::Timeout=$LOCK_TIMEOUT" >>"$LOG" 2>&1 \
    || log "apt-get update failed (continuing with the lists there are)"

if ! apt_install "${missing[@]}"; then
    log "installing all at once failed (log: $LOG); trying one by one"
    for pkg in "${missing[@]}"; do
        apt_install "$pkg" || log "WARNING: could not install $pkg"
    done
fi
wait_for_locks
dpkg --configure -a >/dev/null 2>&1 || true

failed=()
for cmd in "${!WANTED[@]}"; do
    pkg=${WANTED[$cmd]}
    if needs_install "$cmd" "$pkg"; then
        failed+=("$pkg")
    fi
done
log "done in $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -ne 0 ]; then
    if [ "${SYSTEM_DEPS_STRICT:-0}" = 1 ]; then
        log "ERROR: NOT INSTALLED: ${failed[*]} -- the real-client tests need them (CI=true / SYSTEM_DEPS_STRICT=1)"
    else
        log "WARNING: NOT INSTALLED: ${failed[*]} -- the real-client tests needing them will be SKIPPED"
    fi
    log "last lines of $LOG:"
    tail -n 15 "$LOG" >&2 || true
    [ "${SYSTEM_DEPS_STRICT:-0}" = 1 ] && exit 1
fi
exit 0
