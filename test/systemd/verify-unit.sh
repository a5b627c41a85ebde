#!/bin/sh
# Checks the shipped systemd files the way systemd reads them:
#   - guardia.service with `systemd-analyze verify`. It exits 0 even for an unknown directive
#     or a bad value (it only warns, "ignoring"), so any output line naming the unit fails
#     the check: a typo'd sandboxing line would otherwise silently not sandbox.
#   - guardia.sysusers.conf with `systemd-sysusers --root` in a scratch root, which must end up
#     with the user the unit's User= names.
#   - guardia.tmpfiles.conf with `systemd-tmpfiles --root --create` in the same scratch root
#     (as root only: it chowns to guardia).
#
# usage: verify-unit.sh [--mutate SED_EXPR] SYSTEMD_DIR GUARDIA_BINARY
#   SYSTEMD_DIR     the repository's systemd/ directory
#   GUARDIA_BINARY  the built `guardia`: verify needs ExecStart's program to exist, so the
#                   unit is checked from a copy whose ExecStart points at it
#   --mutate EXPR   self-test: apply the sed expression to the unit copy and succeed only if
#                   the check then rejects it (proves a broken line is caught)
# Exit: 0 passed, 1 failed, 77 skipped (systemd-analyze not installed).
#
# Environment-only noise: lines that do not name the unit (e.g. warnings about other units
# on the host) are shown but do not fail the check. None was needed beyond that on Debian 12
# (systemd 252), as root or not, with or without systemd running.
set -u

mutation=""
if [ "${1:-}" = "--mutate" ]; then
    mutation=$2
    shift 2
fi
if [ $# -ne 2 ]; then
    echo "usage: $0 [--mutate SED_EXPR] SYSTEMD_DIR GUARDIA_BINARY" >&2
    exit 1
fi
# Absolute paths: ExecStart= requires one, and systemd-sysusers/-tmpfiles --root would look
# for a relative file name under the scratch root.
src=$(cd "$1" 2>/dev/null && pwd) || { echo "FAIL: no directory $1" >&2; exit 1; }
case $2 in
    /*) binary=$2 ;;
    *) binary=$(pwd)/$2 ;;
esac

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP: systemd-analyze not found (Debian package 'systemd'; tools/install-deps installs it)"
    exit 77
fi
if [ ! -x "$binary" ]; then
    echo "FAIL: $binary is not an executable: build the guardia target first" >&2
    exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/guardia-verify-unit.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
# systemd-analyze must read it with its real name: the file name is the unit name.
unit="$tmp/guardia.service"
failures=0
fail() {
    if [ -n "$mutation" ]; then echo "rejected: $*"; else echo "FAIL: $*" >&2; fi
    failures=$((failures + 1))
}

# --- guardia.service --------------------------------------------------------------------
sed "s|^ExecStart=/usr/local/bin/guardia |ExecStart=$binary |" "$src/guardia.service" >"$unit"
if [ "$(grep -c "^ExecStart=$binary " "$unit")" -ne 1 ] || [ "$(grep -c '^ExecStart=' "$unit")" -ne 1 ]; then
    fail "expected exactly one 'ExecStart=/usr/local/bin/guardia ...' line in $src/guardia.service"
fi
if [ -n "$mutation" ]; then
    cp "$unit" "$tmp/original"
    sed -i "$mutation" "$unit"
    if cmp -s "$unit" "$tmp/original"; then
        echo "FAIL: --mutate '$mutation' changed nothing" >&2
        exit 1
    fi
fi

output=$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify "$unit" 2>&1)
status=$?
[ -n "$output" ] && printf '%s\n' "$output"
[ $status -eq 0 ] || fail "systemd-analyze verify exited $status"
# The unit is named by its path ("/tmp/.../guardia.service:12: Unknown key ...") or its name
# ("guardia.service: Command ... is not executable").
if printf '%s\n' "$output" | grep -q 'guardia\.service'; then
    fail "systemd-analyze verify complained about guardia.service (lines above)"
fi

if [ -n "$mutation" ]; then
    if [ $failures -eq 0 ]; then
        echo "FAIL: the unit mutated with '$mutation' passed the check" >&2
        exit 1
    fi
    echo "PASS: the unit mutated with '$mutation' was rejected"
    exit 0
fi

# --- guardia.sysusers.conf and guardia.tmpfiles.conf ------------------------------------
root="$tmp/root"
mkdir -p "$root/etc"
output=$(systemd-sysusers --root="$root" "$src/guardia.sysusers.conf" 2>&1)
status=$?
[ $status -eq 0 ] || fail "systemd-sysusers exited $status: $output"
if printf '%s\n' "$output" | grep -q 'sysusers\.conf'; then
    fail "systemd-sysusers complained: $output"
fi
user=$(sed -n 's/^User=//p' "$src/guardia.service")
group=$(sed -n 's/^Group=//p' "$src/guardia.service")
grep -q "^$user:" "$root/etc/passwd" 2>/dev/null ||
    fail "guardia.sysusers.conf does not create User=$user"
grep -q "^$group:" "$root/etc/group" 2>/dev/null ||
    fail "guardia.sysusers.conf does not create Group=$group"

if [ "$(id -u)" -eq 0 ]; then
    output=$(systemd-tmpfiles --root="$root" --create "$src/guardia.tmpfiles.conf" 2>&1)
    status=$?
    [ $status -eq 0 ] || fail "systemd-tmpfiles exited $status: $output"
    if printf '%s\n' "$output" | grep -q 'tmpfiles\.conf'; then
        fail "systemd-tmpfiles complained: $output"
    fi
    [ -d "$root/etc/guardia/keys" ] || fail "guardia.tmpfiles.conf did not create /etc/guardia/keys"
    checked="guardia.service, guardia.sysusers.conf and guardia.tmpfiles.conf"
else
    checked="guardia.service and guardia.sysusers.conf"
    echo "note: guardia.tmpfiles.conf not checked (systemd-tmpfiles must run as root to chown)"
fi

if [ $failures -ne 0 ]; then
    exit 1
fi
echo "PASS: $checked"
