#!/usr/bin/env bash
# Installs the Debian package built by tools/package, checks what it put on the machine,
# reinstalls it over an edited configuration, then purges it and checks nothing is left.
# Run as root on a Debian 12 machine (CI: .ci/run) where guardia is not installed and neither
# /var/lib/guardia nor /etc/guardia exists (the purge removes them; the test refuses to run).
#
# usage: test/package/test_package.sh [DEB]
#   DEB   the package (default: the one guardia_*.deb in build-package/)
#
# Checks, installed: `guardia --version` names the package's version; /usr/bin/guardia;
# `systemd-analyze verify` on /lib/systemd/system/guardia.service with no complaint about
# it; `man -P cat guardia` renders every command's section; the bash completion completes
# a command and a flag (sourced as bash-completion's loader finds it); the guardia system
# user and group (sysusers), /etc/guardia/keys and /var/lib/guardia (tmpfiles);
# /etc/guardia/guardia.json is the example config and a conffile; a reinstall keeps an
# edited guardia.json. Purged: no file of the package left, no /etc/guardia, no
# /var/lib/guardia; the guardia user is kept (Debian policy, documented in OPERATIONS.md).
#
# A missing tool fails the test (it never skips). The package is purged on every exit once
# this script installed it, also when a check fails midway.
# Exit 0 passed, 1 failed.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
die() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

if [ $# -ge 1 ]; then
    deb=$1
else
    shopt -s nullglob
    debs=("$repo"/build-package/guardia_*.deb)
    shopt -u nullglob
    [ ${#debs[@]} -eq 1 ] || die "expected one guardia_*.deb in $repo/build-package (found ${#debs[@]}): run tools/package, or name the .deb"
    deb=${debs[0]}
fi
[ -f "$deb" ] || die "no package $deb"
case $deb in /*) ;; *) deb=$(pwd)/$deb ;; esac

[ "$(id -u)" -eq 0 ] || die "run as root: the test installs and purges the package"
for tool in apt-get dpkg dpkg-query systemd-analyze man bash getent cmp; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (tools/package installs the packaging tools, tools/install-deps systemd)"
done
# dpkg's state of guardia: empty or "not-installed" when absent, "config-files" when removed
# but not purged, "installed" (or a half state) otherwise.
package_state() { dpkg-query -W -f='${db:Status-Status}' guardia 2>/dev/null; }
case $(package_state) in
    '' | not-installed) ;;
    *) die "guardia is $(package_state) on this machine: this test installs and purges it; purge it first (apt-get purge guardia)" ;;
esac
# A purge removes /var/lib/guardia (the store) and /etc/guardia: where they exist without the
# package (a `cmake --install` with a real store, keys, a token), this test would destroy them.
for path in /var/lib/guardia /etc/guardia; do
    if [ -e "$path" ] || [ -L "$path" ]; then
        die "$path exists on this machine: the test's purge would remove it (a store, keys or a token of a guardia installed by other means?); move it away first"
    fi
done

installed=""
cleanup() {
    if [ -n "$installed" ]; then
        echo "test_package: purging guardia"
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq guardia >/dev/null 2>&1 ||
            echo "test_package: WARNING: apt-get purge guardia failed" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export DEBIAN_FRONTEND=noninteractive
# --- install ------------------------------------------------------------------------------
installed=1
apt-get install -y -qq --no-install-recommends "$deb" || die "apt-get install $deb failed"
version=$(dpkg-query -W -f='${Version}' guardia)
ok "installed guardia $version"

[ "$(command -v guardia)" = /usr/bin/guardia ] || fail "guardia is not /usr/bin/guardia: $(command -v guardia)"
out=$(guardia --version 2>&1) || fail "guardia --version exited $?"
[ "$out" = "guardia $version" ] && ok "guardia --version: $out" ||
    fail "guardia --version printed '$out', expected 'guardia $version'"

# The unit, as systemd would load it (no systemd as PID 1 is needed for verify): exit 0 and
# no line naming guardia.service (verify only warns about unknown keys and bad values).
unit=/lib/systemd/system/guardia.service
if [ -f "$unit" ]; then
    grep -q '^ExecStart=/usr/bin/guardia serve ' "$unit" || fail "$unit: ExecStart does not run /usr/bin/guardia"
    out=$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify "$unit" 2>&1)
    status=$?
    [ -n "$out" ] && printf '%s\n' "$out"
    if [ $status -ne 0 ] || printf '%s\n' "$out" | grep -q 'guardia\.service'; then
        fail "systemd-analyze verify $unit: exit $status, complaints above"
    else
        ok "systemd-analyze verify $unit"
    fi
else
    fail "no $unit"
fi

# The man page: renders, and has a section for every command `guardia --help` lists.
page=$(MANWIDTH=100 man -P cat guardia 2>&1)
status=$?
if [ $status -ne 0 ]; then
    fail "man guardia exited $status: $page"
else
    commands=$(guardia --help | sed -n '/^commands:/,/^$/{s/^  \([a-z][a-z-]*\) .*/\1/p}')
    [ -n "$commands" ] || fail "guardia --help lists no command"
    for command in $commands; do
        case $command in version | help) continue ;; esac
        printf '%s\n' "$page" | grep -q "^ *guardia $command\$" || fail "man guardia has no 'guardia $command' section"
        printf '%s\n' "$page" | grep -q "usage: guardia $command" || fail "man guardia lacks 'guardia $command --help'"
    done
    printf '%s\n' "$page" | grep -q -- '--version' || fail "man guardia does not mention --version"
    ok "man guardia renders ($(printf '%s\n' "$page" | wc -l) lines; commands: $(echo $commands))"
fi

# The completion: loaded the way bash-completion loads it (by command name, on demand),
# then completing "guardia dep" and "guardia rollback --ro".
completion=/usr/share/bash-completion/completions/guardia
if [ -f "$completion" ]; then
    out=$(bash -c '
        if [ -f /usr/share/bash-completion/bash_completion ]; then
            . /usr/share/bash-completion/bash_completion
            __load_completion guardia || { echo "bash-completion did not load guardia"; exit 1; }
        else
            . "$1"
        fi
        complete -p guardia >/dev/null || { echo "no completion for guardia"; exit 1; }
        COMP_WORDS=(guardia dep); COMP_CWORD=1; _guardia; echo "1:${COMPREPLY[*]}"
        COMP_WORDS=(guardia rollback --ro); COMP_CWORD=2; _guardia; echo "2:${COMPREPLY[*]}"
        COMP_WORDS=(guardia deploy --host-key-policy ""); COMP_CWORD=3; _guardia; echo "3:${COMPREPLY[*]}"
    ' bash "$completion" 2>&1)
    if printf '%s\n' "$out" | grep -qx '1:deploy' && printf '%s\n' "$out" | grep -qx '2:--rollout' &&
        printf '%s\n' "$out" | grep -qx '3:strict accept-new'; then
        ok "bash completion: guardia dep -> deploy, rollback --ro -> --rollout"
    else
        fail "bash completion of guardia: $out"
    fi
else
    fail "no $completion"
fi

# sysusers and tmpfiles, applied by the postinst.
entry=$(getent passwd guardia) && ok "system user: $entry" || fail "no guardia user after install"
case $entry in *:/var/lib/guardia:/usr/sbin/nologin) ;; *) fail "guardia user: home or shell wrong: $entry" ;; esac
getent group guardia >/dev/null || fail "no guardia group after install"
for dir in /etc/guardia/keys /var/lib/guardia; do
    got=$(stat -c '%a %U' "$dir" 2>/dev/null)
    [ "$got" = "700 guardia" ] || fail "$dir: expected mode 700 owned by guardia, got '${got:-missing}'"
done

# The configuration: the example, as a conffile.
config=/etc/guardia/guardia.json
if cmp -s "$config" "$repo/conf/guardia.json"; then
    ok "$config is conf/guardia.json"
else
    fail "$config missing or not conf/guardia.json"
fi
dpkg-query -W -f='${Conffiles}\n' guardia | grep -q " $config " || fail "$config is not a conffile"

# A reinstall (what an upgrade does with conffiles) keeps the operator's edit.
printf ' \n' >>"$config"
apt-get install -y -qq --reinstall "$deb" >/dev/null || fail "apt-get install --reinstall failed"
if [ "$(tail -c 2 "$config")" = " " ] && ! cmp -s "$config" "$repo/conf/guardia.json"; then
    ok "a reinstall keeps the edited $config"
else
    fail "a reinstall replaced the edited $config"
fi

# --- purge --------------------------------------------------------------------------------
files=$(dpkg -L guardia)
apt-get purge -y -qq guardia || fail "apt-get purge guardia failed"
installed=""
case $(package_state) in
    '' | not-installed) ;;
    *) fail "guardia is $(package_state) after purge" ;;
esac
left=""
for f in $files; do
    [ -d "$f" ] && continue   # directories are shared (/lib is a symlink to usr/lib)
    if [ -e "$f" ] || [ -L "$f" ]; then left="$left $f"; fi
done
[ -z "$left" ] || fail "purge left the package's files:$left"
for path in /usr/bin/guardia "$unit" /etc/guardia /var/lib/guardia \
    /usr/lib/sysusers.d/guardia.conf /usr/lib/tmpfiles.d/guardia.conf "$completion"; do
    [ -e "$path" ] && fail "purge left $path"
done
# Debian keeps system users on purge (they may still own files); documented.
getent passwd guardia >/dev/null && ok "purged; the guardia system user is kept (Debian policy)" ||
    ok "purged; the guardia system user is gone"

if [ $failures -ne 0 ]; then
    echo "test_package: $failures check(s) failed" >&2
    exit 1
fi
echo "PASS: test_package ($deb)"
