#!/bin/sh
# Installs sshgw: the remote step of `cargo xtask deploy` (xtask/src/deploy.rs).
#
#   --host USER@HOST  this script and the files below are copied to a private temp dir on
#                     the router and run there as root (directly, or with `sudo -n`).
#   --root DIR        run locally with `--prefix DIR --offline`.
#
# usage: install.sh --binary FILE --unit FILE --config FILE [--console-unit FILE]
#                   [--prefix DIR] [--offline]
#
#   --binary FILE        the sshgw binary (release build, eBPF object embedded)
#   --unit FILE          systemd/sshgw.service
#   --config FILE        the default config (xtask/deploy/sshgw.toml)
#   --console-unit FILE  systemd/sshgw-console.service (the auditor's web console):
#                        installed next to the daemon's unit, never enabled or started
#   --prefix DIR   install below DIR instead of / (image builds, chroots, tests)
#   --offline      leave the running system alone: no group/user creation, no systemctl;
#                  the enable symlink is made directly, as `systemctl enable` would
#
# What it installs (below the prefix):
#   /usr/local/bin/sshgw                0755 root:root    replaced atomically (rename)
#   /etc/systemd/system/sshgw.service   0644 root:root    replaced
#   /etc/systemd/system/sshgw-console.service
#                                       0644 root:root    replaced (with --console-unit)
#   /etc/sshgw/                         0750 root:sshgw
#   /etc/sshgw/sshgw.toml               0640 root:sshgw   only if absent: never overwritten
#   /etc/systemd/system/multi-user.target.wants/sshgw.service -> /etc/systemd/system/sshgw.service
# and, unless --offline: the system group and user sshgw (if missing),
# `systemctl daemon-reload` and `systemctl enable sshgw.service`. It never starts or
# restarts the service: the config must be edited first. The console unit is only
# installed: the operator enables it if the router should serve the console.
set -eu

SVC=sshgw
BIN=/usr/local/bin/sshgw
UNIT=/etc/systemd/system/sshgw.service
UNIT_NAME=sshgw.service
CONSOLE_UNIT=/etc/systemd/system/sshgw-console.service
CONSOLE_UNIT_NAME=sshgw-console.service
CONF_DIR=/etc/sshgw
CONF=/etc/sshgw/sshgw.toml
NOLOGIN=/usr/sbin/nologin

say() { printf '[install] %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
run() { printf '[install] $ %s\n' "$*"; "$@"; }

binary='' unit='' config='' console_unit='' prefix='' offline=0
while [ $# -gt 0 ]; do
    case $1 in
        --binary | --unit | --config | --console-unit | --prefix)
            [ $# -ge 2 ] || die "$1 needs a value"
            case $1 in
                --binary) binary=$2 ;;
                --unit) unit=$2 ;;
                --config) config=$2 ;;
                --console-unit) console_unit=$2 ;;
                --prefix) prefix=$2 ;;
            esac
            shift 2
            ;;
        --offline) offline=1; shift ;;
        *) die "unknown argument: $1" ;;
    esac
done

for pair in "--binary:$binary" "--unit:$unit" "--config:$config"; do
    flag=${pair%%:*} file=${pair#*:}
    [ -n "$file" ] || die "$flag FILE is required"
    [ -f "$file" ] || die "$flag: no such file: $file"
done
if [ -n "$console_unit" ] && [ ! -f "$console_unit" ]; then
    die "--console-unit: no such file: $console_unit"
fi
# Paths below are absolute, so P="" is the live system.
P=${prefix%/}
if [ -n "$P" ] && [ ! -d "$P" ]; then
    die "--prefix: no such directory: $prefix"
fi

if [ "$offline" -eq 0 ]; then
    uid=$(id -u)
    [ "$uid" -eq 0 ] || die "must run as root (running as uid $uid)"
    for cmd in install systemctl getent groupadd useradd chown; do
        command -v "$cmd" >/dev/null 2>&1 || die "\`$cmd\` not found on PATH"
    done
fi
umask 022

# --- the sshgw group and user (the unit's User=/Group=, and control_group) ---------------
if [ "$offline" -eq 1 ]; then
    say "skipped (--offline): creating the system group and user $SVC; on the target run:"
    say "    groupadd --system $SVC"
    say "    useradd --system --no-create-home --shell $NOLOGIN --gid $SVC $SVC"
else
    if getent group "$SVC" >/dev/null; then
        say "group $SVC exists"
    else
        run groupadd --system "$SVC"
    fi
    if getent passwd "$SVC" >/dev/null; then
        say "user $SVC exists"
    else
        run useradd --system --no-create-home --shell "$NOLOGIN" --gid "$SVC" "$SVC"
    fi
fi

# Gives PATH to root and the sshgw group. Offline, that group is looked up in the tree's
# own /etc/group (by number), since the build host's groups mean nothing there.
# Sets $owner for the messages; paths left as they were are collected in $owner_note.
owner_note=''
set_group_owner() {
    owner=", root:$SVC"
    if [ "$offline" -eq 0 ]; then
        chown "root:$SVC" "$P$1"
        return
    fi
    gid=$(sed -n "s/^$SVC:[^:]*:\([0-9][0-9]*\):.*/\1/p" "$P/etc/group" 2>/dev/null | head -n 1)
    if [ -n "$gid" ] && [ "$(id -u)" -eq 0 ]; then
        chown "0:$gid" "$P$1"
        owner=", root:$SVC (gid $gid)"
    else
        owner_note="$owner_note $1"
        owner=", owner not set"
    fi
}

# Copies to a temp name in the same directory, then renames: a running sshgw keeps its
# (old) file, and nothing ever sees a half-written one.
install_file() { # SRC DEST MODE
    dir=${2%/*}
    mkdir -p "$P$dir"
    if [ -e "$P$2" ]; then verb=replaced; else verb=installed; fi
    install -m "$3" "$1" "$P$dir/.${2##*/}.new"
    mv -f "$P$dir/.${2##*/}.new" "$P$2"
    say "$verb $2 (mode $3)"
}

# --- binary and units -----------------------------------------------------------------
install_file "$binary" "$BIN" 0755
install_file "$unit" "$UNIT" 0644
# The console's unit is installed only: enabling it is the operator's choice.
if [ -n "$console_unit" ]; then
    install_file "$console_unit" "$CONSOLE_UNIT" 0644
fi

# --- config directory and config ------------------------------------------------------
mkdir -p "$P$CONF_DIR"
chmod 0750 "$P$CONF_DIR"
set_group_owner "$CONF_DIR"
say "$CONF_DIR/ (mode 0750$owner)"

new_config=0
if [ -e "$P$CONF" ] || [ -L "$P$CONF" ]; then
    perms=$(stat -c '%U:%G, mode %a' "$P$CONF" 2>/dev/null || echo 'owner unknown')
    say "kept the existing $CONF ($perms): not overwritten"
else
    install -m 0640 "$config" "$P$CONF"
    set_group_owner "$CONF"
    new_config=1
    say "installed the default $CONF (mode 0640$owner)"
fi

# --- enable (not start) ---------------------------------------------------------------
if [ "$offline" -eq 1 ]; then
    targets=$(sed -n 's/^[[:space:]]*WantedBy=//p' "$unit")
    [ -n "$targets" ] || die "$unit has no WantedBy= line; cannot enable it"
    for target in $targets; do
        link=/etc/systemd/system/$target.wants/$UNIT_NAME
        mkdir -p "$P${link%/*}"
        ln -sfn "$UNIT" "$P$link"
        say "enabled: $link -> $UNIT"
    done
    say "skipped (--offline): systemctl daemon-reload (systemd loads the unit when the target boots)"
    if [ -n "$owner_note" ]; then
        say "skipped: group ownership ($SVC is not in $P/etc/group, or not running as root) of:$owner_note"
        say "    on the target, once the group exists: chown root:$SVC$owner_note"
    fi
else
    run systemctl daemon-reload
    run systemctl enable "$UNIT_NAME"
fi

# --- what the operator does next ------------------------------------------------------
running=0 console_running=0
if [ "$offline" -eq 0 ] && systemctl is-active --quiet "$UNIT_NAME"; then
    running=1
fi
if [ -n "$console_unit" ] && [ "$offline" -eq 0 ] &&
    systemctl is-active --quiet "$CONSOLE_UNIT_NAME"; then
    console_running=1
fi
say ""
say "sshgw is installed and enabled, but was not started or restarted."
if [ "$offline" -eq 1 ]; then where=target; else where=router; fi
say "Next steps, as root on the $where:"
if [ "$new_config" -eq 1 ]; then
    say "  1. Edit $CONF: set [datapath] interfaces to the device-facing interfaces"
    say "     (\"wg0\" is a placeholder; every one must exist when sshgw starts)."
else
    say "  1. Review $CONF (kept as it was; the shipped defaults are in xtask/deploy/sshgw.toml)."
fi
if [ "$running" -eq 1 ]; then
    say "  2. systemctl restart sshgw    # the running daemon still uses the previous binary"
else
    say "  2. systemctl start sshgw && sshgw status"
fi
say "  3. sshgw ca user-key          # trust the printed CA on every audited server"
say "     (TrustedUserCAKeys, see docs/deployment.md#servers)"
if [ "$console_running" -eq 1 ]; then
    say "  4. systemctl restart sshgw-console    # the running console still uses the previous binary"
elif [ -n "$console_unit" ]; then
    say "  4. Optional, the auditor's web console on 127.0.0.1:8080 (installed, not enabled;"
    say "     see docs/console.md): systemctl enable --now sshgw-console"
fi
