#!/usr/bin/env bash
# The packages under a real systemd: boots a minimal Debian in a container and checks, as an
# operator would (README "Install" and "Deploy on a host"), what the packages do there.
#
#   packaging/boot-test.sh [DEB...]     (default: target/deb/*.deb, as `make deb` leaves them)
#
# 1. A minimal rootfs (debootstrap --variant=minbase, with systemd, dbus and memcached) of the
#    suite this machine's apt already uses (its mirror, /etc/apt/sources.list*), cached as a
#    tarball in $MCSHM_BOOT_CACHE (default /var/cache/mcshm-boot-test), keyed by suite,
#    architecture and mirror; each run unpacks a fresh copy of it.
# 2. `systemd-nspawn --register=no --keep-unit --private-network -b` boots it in the
#    background (only loopback inside); commands run inside through nsenter into the
#    namespaces of the container's PID 1 (systemd-run --machine needs a registered machine).
# 3. The checks, one line each (`ok NAME` or `FAIL NAME: why`): apt installs the packages;
#    memcached on loopback; `mcadmin add`; the list in /etc/mcshm; mcshm-restore@, mcadmin-watch@
#    and mcproxy@ active; a set and a get through mcproxy; the domain back after a reboot; no
#    SIGSYS, seccomp or permission error in the journal; a proxy given a bad configuration
#    fails once instead of restarting; a table root made is the watcher's to write; root's own
#    client keeps its record beside mcproxy@; a reinstall restarts the daemons on the new
#    binaries; remove stops them; installed again, the enabled ones are back; purge removes
#    /run/mcshm and the enable links; and, with systemd not running (a container being built),
#    install, upgrade, remove and purge still work.
#
# Exit 0 when every check passed, 1 when one failed, 2 when it cannot run here (not root, no debootstrap or
# systemd-nspawn, no apt source, debootstrap failed, the bare container does not boot).
# Every step is bounded, the whole run by MCSHM_BOOT_TIMEOUT (900 s; it takes about 50 s with
# the rootfs cached, 2 minutes without, on 2 cores). MCSHM_BOOT_VERBOSE=1 shows more.
#
# The scripts run inside the container are single-quoted: they expand there, not here.
# shellcheck disable=SC2016
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${MCSHM_BOOT_BOUNDED:-}" ]; then
    export MCSHM_BOOT_BOUNDED=1
    exec timeout --kill-after=15 "${MCSHM_BOOT_TIMEOUT:-900}" "$0" "$@"
fi

cache=${MCSHM_BOOT_CACHE:-/var/cache/mcshm-boot-test}
domain=myapp
failed=0

say() { echo "boot-test: $*" >&2; }
ok() { echo "ok   $1"; }
fail() {
    echo "FAIL $1: $2"
    failed=1
}
# check NAME COMMAND...: one line for the check; the command's output when it fails.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        ok "$name"
    else
        fail "$name" "$(printf '%s' "$out" | tail -n 15)"
    fi
}

[ "$(id -u)" -eq 0 ] || { say "needs root (debootstrap, systemd-nspawn)"; exit 2; }
for tool in debootstrap systemd-nspawn nsenter timeout tar; do
    command -v "$tool" >/dev/null || {
        say "missing $tool: apt-get install -y debootstrap systemd-container util-linux"
        exit 2
    }
done

if [ $# -gt 0 ]; then
    debs=("$@")
else
    debs=(target/deb/*.deb)
fi
for deb in "${debs[@]}"; do
    [ -f "$deb" ] || { say "no package $deb: run make deb first"; exit 2; }
done

# The apt source this machine uses for its own release: mirror and suite (deb822 .sources or
# one-line .list), and the keyring it is signed with.
# shellcheck disable=SC1091
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
mirror="" keyring=""
for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    [ -z "$mirror" ] || break
    case "$file" in
    *.sources)
        read -r mirror keyring < <(awk -v suite="$codename" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = uris = suites = signed = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/) types = $i
                    if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris); sub(/[ \t].*/, "", uris) }
                    if ($i ~ /^Suites:/) suites = " " $i " "
                    if ($i ~ /^Signed-By:/) { signed = $i; sub(/^Signed-By:[ \t]*/, "", signed) }
                }
                if (types ~ /[ \t]deb([ \t]|$)/ && suites ~ ("[ \t]" suite "[ \t]") && uris ~ /^https?:/) {
                    print uris, signed; exit
                }
            }' "$file") || true
        ;;
    *)
        mirror=$(awk -v suite="$codename" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite && $i ~ /^https?:/) { print $i; exit }
            }' "$file")
        ;;
    esac
done
if [ -z "$codename" ] || [ -z "$mirror" ]; then
    say "no apt source of this machine's release (${codename:-unknown}) in /etc/apt/sources.list*"
    exit 2
fi
case "$keyring" in /*) [ -f "$keyring" ] || keyring="" ;; *) keyring="" ;; esac
arch=$(dpkg --print-architecture)
include=systemd,systemd-sysv,dbus,memcached
key=$(printf '%s %s %s %s' "$codename" "$arch" "$mirror" "$include" | md5sum | cut -c1-8)
rootfs_tar="$cache/$codename-$arch-$key.tar"

mkdir -p "$cache"
work=$(mktemp -d "$cache/run.XXXXXX")
root="$work/rootfs"
nspawn_pid=""
leader=""

# stop_container: power the container off (bounded), else kill the nspawn we started.
stop_container() {
    [ -n "$nspawn_pid" ] || return 0
    if kill -0 "$nspawn_pid" 2>/dev/null; then
        if [ -n "$leader" ]; then
            in_ct systemctl --no-block poweroff >/dev/null 2>&1 || true
        fi
        for _ in $(seq 60); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid="" leader=""
}
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    stop_container
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# in_ct COMMAND...: run COMMAND inside the container (its PID 1's namespaces), bounded.
in_ct() {
    timeout 120 nsenter -t "$leader" -a \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root TERM=dumb \
        ${MCSHM_BOOT_VERBOSE:+MCSHM_BOOT_VERBOSE=1} \
        DEBIAN_FRONTEND=noninteractive "$@"
}
# sh_ct SCRIPT: a shell script inside the container.
sh_ct() { in_ct bash -euo pipefail -c "$1"; }

# boot: start the container and wait (bounded) until systemd says it is up.
boot() {
    local log=$1 state=""
    systemd-nspawn -q -D "$root" --register=no --keep-unit --private-network \
        --console=read-only -b </dev/null >"$log" 2>&1 &
    nspawn_pid=$!
    for _ in $(seq 120); do
        leader=$(pgrep -P "$nspawn_pid" -x systemd | head -1 || true)
        [ -n "$leader" ] && break
        kill -0 "$nspawn_pid" 2>/dev/null || break
        sleep 0.5
    done
    if [ -z "$leader" ]; then
        say "the container did not start; systemd-nspawn said:"
        tail -n 30 "$log" >&2
        return 1
    fi
    for _ in $(seq 120); do
        state=$(in_ct systemctl is-system-running 2>/dev/null || true)
        case "$state" in running | degraded) break ;; esac
        sleep 0.5
    done
    case "$state" in
    running) ;;
    degraded) say "booted degraded: $(in_ct systemctl --failed --no-legend --plain | tr '\n' ' ')" ;;
    *)
        say "systemd did not finish booting (state: ${state:-none}); its console:"
        tail -n 30 "$log" >&2
        return 1
        ;;
    esac
}

started=$SECONDS
if [ ! -f "$rootfs_tar" ]; then
    say "building the rootfs: debootstrap $codename from $mirror (cached in $rootfs_tar)"
    fresh="$work/fresh"
    if ! timeout 900 debootstrap --variant=minbase --include="$include" \
        ${keyring:+--keyring="$keyring"} "$codename" "$fresh" "$mirror" >"$work/debootstrap.log" 2>&1; then
        say "debootstrap failed (no network, or no such suite on the mirror?):"
        tail -n 30 "$work/debootstrap.log" >&2
        exit 2
    fi
    # The container's journal persists across its reboots; apt's caches are not kept.
    mkdir -p "$fresh/var/log/journal"
    rm -rf "$fresh"/var/cache/apt/archives/*.deb "$fresh"/var/lib/apt/lists/*
    timeout 300 tar -C "$fresh" -cf "$rootfs_tar.tmp" . && mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$fresh"
    say "rootfs built in $((SECONDS - started)) s"
fi
mkdir "$root"
timeout 300 tar -C "$root" -xf "$rootfs_tar"
mkdir -p "$root/opt/debs"
cp "${debs[@]}" "$root/opt/debs/"

say "booting the container"
# Nothing of ours is installed yet: a container that does not boot is this machine's limit.
boot "$work/console-1.log" || { say "cannot boot a container here"; exit 2; }
say "booted in $((SECONDS - started)) s"

# Install: the README's `apt install ./target/deb/*.deb`, offline (every dependency is there).
check install in_ct sh -c 'apt-get install -y -q /opt/debs/*.deb 2>&1'
check packages sh_ct '
    for p in libmcshm0 libmcshm-dev mcshm; do
        dpkg-query -W -f "\${Status}\n" "$p" | grep -x "install ok installed" >/dev/null || { echo "$p not installed"; exit 1; }
    done
    ldconfig -p | grep "libmcshm.so.0 " >/dev/null || { echo "libmcshm.so.0 not in the loader cache"; exit 1; }
    getent passwd mcshm >/dev/null || { echo "no mcshm user"; exit 1; }
    [ "$(stat -c %U /run/mcshm)" = mcshm ] || { echo "/run/mcshm: $(stat -c %U:%G /run/mcshm)"; exit 1; }'

# talk PORT REQUEST: a memcached request over TCP on loopback (bash's /dev/tcp), the reply.
talk='talk() {
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf "%b" "$2" >&3
    timeout 5 cat <&3 || true
    exec 3<&-
}'
check memcached sh_ct "$talk"'
    reply=$(talk 11211 "version\r\nquit\r\n")
    case "$reply" in VERSION*) ;; *) echo "memcached on 127.0.0.1:11211: $reply"; exit 1 ;; esac'

# As the README: a first session in a registry of its own (MCSHM_DIR), whose list is then
# deployed: its durable list, the three units; mcshm-restore@ makes the table in /run/mcshm.
check add in_ct env MCSHM_DIR=/tmp/mcshm mcadmin --domain "$domain" add 127.0.0.1:11211
check deploy sh_ct "
    MCSHM_DIR=/tmp/mcshm mcadmin --domain $domain dump > /etc/mcshm/$domain.list
    cp /etc/mcshm/mcproxy-example.conf /etc/mcshm/mcproxy-$domain.conf
    systemctl enable --now mcshm-restore@$domain mcadmin-watch@$domain mcproxy@$domain 2>&1"

# units_active: the three units of the domain are active, the proxy listening (bounded).
units_active='units_active() {
    for _ in $(seq 40); do
        bad=""
        for unit in mcshm-restore@'$domain' mcadmin-watch@'$domain' mcproxy@'$domain'; do
            state=$(systemctl is-active "$unit" || true)
            [ "$state" = active ] || bad="$bad $unit: $state"
        done
        if [ -z "$bad" ] && (exec 3<>/dev/tcp/127.0.0.1/11400) 2>/dev/null; then return 0; fi
        sleep 0.5
    done
    echo "not active:${bad:- (mcproxy not listening on 127.0.0.1:11400)}"
    systemctl status --no-pager -n 5 mcproxy@'$domain' mcadmin-watch@'$domain' || true
    return 1
}'
check units-active sh_ct "$units_active; units_active"

# A set and a get through mcproxy (the README's example config: 127.0.0.1:11400), the item
# then read from memcached itself.
proxy_roundtrip="$talk"'
    value=$1
    reply=$(talk 11400 "set boot-test 0 0 ${#value}\r\n$value\r\nquit\r\n")
    case "$reply" in STORED*) ;; *) echo "set through mcproxy: $reply"; exit 1 ;; esac
    reply=$(talk 11400 "get boot-test\r\nquit\r\n")
    case "$reply" in *"$value"*END*) ;; *) echo "get through mcproxy: $reply"; exit 1 ;; esac
    reply=$(talk 11211 "get boot-test\r\nquit\r\n")
    case "$reply" in *"$value"*END*) ;; *) echo "get from memcached: $reply"; exit 1 ;; esac'
check proxy-get-set in_ct bash -euo pipefail -c "$proxy_roundtrip" - first-boot

# A reinstall (an upgrade, as far as the maintainer scripts go) restarts the running daemons
# on the new binaries.
pids='for unit in mcadmin-watch@'$domain' mcproxy@'$domain'; do systemctl show -p MainPID --value "$unit"; done'
before=$(sh_ct "$pids" 2>&1 || true)
check reinstall in_ct sh -c 'apt-get install -y -q --reinstall /opt/debs/mcshm_*.deb 2>&1'
check upgrade-restarts sh_ct "$units_active; units_active
    before='$(echo "$before" | tr '\n' ' ')'
    for unit in mcadmin-watch@$domain mcproxy@$domain; do
        pid=\$(systemctl show -p MainPID --value \"\$unit\")
        case \" \$before \" in *\" \$pid \"*) echo \"\$unit not restarted (pid \$pid)\"; exit 1 ;; esac
        exe=\$(readlink /proc/\$pid/exe)
        case \"\$exe\" in *deleted*) echo \"\$unit runs \$exe\"; exit 1 ;; esac
    done"

# The list survives a reboot: the container powers off and boots again; mcshm-restore@ loads
# /etc/mcshm/DOMAIN.list into the empty /run/mcshm.
say "rebooting the container"
stop_container
boot "$work/console-2.log" || exit 1
check reboot-restored sh_ct "$units_active; units_active
    mcadmin --domain $domain list | grep '127.0.0.1:11211' >/dev/null || { mcadmin --domain $domain list; exit 1; }"
check reboot-proxy-get-set in_ct bash -euo pipefail -c "$proxy_roundtrip" - second-boot

# No system call refused, no permission denied, in either boot. (dbus-daemon may not raise its
# descriptor limit in the container, which has no CAP_SYS_RESOURCE: not ours.)
check journal sh_ct "
    if journalctl --no-pager | grep -Ei 'sigsys|seccomp|denied' \\
        | grep -v 'dbus-daemon.*Failed to set fd limit'; then exit 1; fi
    [ \$(journalctl --list-boots --no-pager | wc -l) -ge 2 ] || { echo 'one boot in the journal'; exit 1; }"

# A bad configuration (a port that does not exist) fails the unit once, with a clear status,
# instead of restarting it for ever (the units' RestartPreventExitStatus=).
bad_config=$(sh_ct "
    mcadmin --domain bad add --no-flush 127.0.0.1:11211 >/dev/null
    echo 'MCPROXY_OPTS=--listen 127.0.0.1:99999 --metrics 127.0.0.1:9152' > /etc/mcshm/mcproxy-bad.conf
    systemctl start mcproxy@bad 2>/dev/null || true
    sleep 10
    systemctl show -p ActiveState -p Result -p NRestarts -p ExecMainStatus mcproxy@bad | sort | tr '\n' ' '
    systemctl stop mcproxy@bad 2>/dev/null || true
    systemctl reset-failed mcproxy@bad 2>/dev/null || true" 2>&1 || true)
case "$bad_config" in
*ActiveState=failed*NRestarts=0*) ok bad-config ;;
*) fail bad-config "mcproxy@bad, 10 s after its start: $bad_config" ;;
esac

# A table root made in /run/mcshm before the units ran (`mcadmin add` as root, no MCSHM_DIR):
# the watcher, which runs as mcshm, must still be able to write it (a new table in the
# group-writable /run/mcshm is 0664 with its group, whoever creates it).
root_made=$(sh_ct "
    mcadmin --domain rootmade add --no-flush 127.0.0.1:11211 >/dev/null
    stat -c 'table=%U:%G:%a' /run/mcshm/rootmade.mcshm | tr '\n' ' '
    systemctl start mcadmin-watch@rootmade 2>/dev/null || true
    sleep 6
    systemctl show -p ActiveState -p NRestarts mcadmin-watch@rootmade | sort | tr '\n' ' '
    echo denied=\$(journalctl --no-pager -u mcadmin-watch@rootmade | grep -ci 'permission denied' || true)
    systemctl stop mcadmin-watch@rootmade 2>/dev/null || true" 2>&1 || true)
case "$root_made" in
*ActiveState=active*NRestarts=0*denied=0*) ok root-made-table ;;
*) fail root-made-table "$root_made" ;;
esac

# A live client of another user (root's own mcproxy, started while mcproxy@ is stopped) stays
# listed by `mcadmin clients` beside mcproxy@ once mcproxy@ starts again (which must not take
# the live client's record for a dead one's: the units' ProtectProc=invisible hides the root
# client from /proc, and liveness asks kill(pid, 0) then).
other_client=$(sh_ct "$talk"'
    systemctl stop mcproxy@'$domain'
    systemd-run --quiet --unit=boot-test-client mcproxy --domain '$domain' --listen 127.0.0.1:11402
    for _ in $(seq 20); do (exec 3<>/dev/tcp/127.0.0.1/11402) 2>/dev/null && break; sleep 0.5; done
    talk 11402 "get boot-test\r\nquit\r\n" >/dev/null
    alone=$(mcadmin --domain '$domain' clients 2>&1)
    systemctl start mcproxy@'$domain'
    for _ in $(seq 20); do (exec 3<>/dev/tcp/127.0.0.1/11400) 2>/dev/null && break; sleep 0.5; done
    talk 11400 "get boot-test\r\nquit\r\n" >/dev/null
    root_pid=$(systemctl show -p MainPID --value boot-test-client)
    unit_pid=$(systemctl show -p MainPID --value mcproxy@'$domain')
    clients=$(mcadmin --domain '$domain' clients 2>&1)
    systemctl stop boot-test-client
    [ "$root_pid" -gt 0 ] && [ "$unit_pid" -gt 0 ] || { echo "no pids: $root_pid $unit_pid"; exit 1; }
    [ -z "${MCSHM_BOOT_VERBOSE:-}" ] || printf "root %s, mcproxy@ %s\n%s\n" "$root_pid" "$unit_pid" "$clients"
    for pid in "$root_pid" "$unit_pid"; do
        printf "%s\n" "$clients" | awk -v pid="$pid" '"'"'$1 == pid && $3 != "-" { found = 1 } END { exit !found }'"'"' \
            || { echo "pid $pid has no clients record (root: $root_pid, mcproxy@: $unit_pid): $clients; before mcproxy@ started: $alone"; exit 1; }
    done' 2>&1) && other_client_ok=1 || other_client_ok=""
if [ -n "$other_client_ok" ]; then
    ok other-user-client
    [ -z "${MCSHM_BOOT_VERBOSE:-}" ] || say "mcadmin clients: $other_client"
else
    fail other-user-client "$other_client"
fi

# Remove stops the daemons (their binaries are gone); purge removes the registry and the
# enable links, and leaves the mcshm user (as Debian's helpers do).
check remove-stops sh_ct "
    apt-get remove -y -q mcshm >/dev/null 2>&1
    for unit in mcshm-restore@$domain mcadmin-watch@$domain mcproxy@$domain; do
        state=\$(systemctl is-active \"\$unit\" || true)
        [ \"\$state\" != active ] && [ \"\$state\" != activating ] || { echo \"\$unit: \$state\"; exit 1; }
    done
    for comm in /proc/[0-9]*/comm; do
        case \$(cat \"\$comm\" 2>/dev/null) in mcproxy | mcadmin) echo \"still running: \$comm\"; exit 1 ;; esac
    done"
# Installed again over what the removal left: the instances enabled before are back.
check install-after-remove sh_ct "
    apt-get install -y -q /opt/debs/mcshm_*.deb >/dev/null 2>&1
    $units_active; units_active"
check purge-cleans sh_ct "
    apt-get purge -y -q mcshm >/dev/null 2>&1
    [ ! -e /run/mcshm ] || { echo '/run/mcshm left:'; ls -la /run/mcshm; exit 1; }
    links=\$(find /etc/systemd/system -name 'mcproxy@*' -o -name 'mcadmin-watch@*' -o -name 'mcshm-restore@*')
    [ -z \"\$links\" ] || { echo \"links left: \$links\"; exit 1; }
    getent passwd mcshm >/dev/null || { echo 'the mcshm user was removed'; exit 1; }"

# Without systemd running (a container or chroot being built): the maintainer scripts still
# install, upgrade, remove and purge (sysusers and tmpfiles run, nothing is started).
stop_container
check no-systemd timeout 300 systemd-nspawn -q -D "$root" --register=no --keep-unit \
    --private-network env DEBIAN_FRONTEND=noninteractive bash -euo pipefail -c '
    [ ! -d /run/systemd/system ] || { echo "systemd runs"; exit 1; }
    apt-get install -y -q /opt/debs/mcshm_*.deb
    getent passwd mcshm >/dev/null && [ -d /run/mcshm ]
    apt-get install -y -q --reinstall /opt/debs/mcshm_*.deb
    apt-get remove -y -q mcshm
    apt-get purge -y -q mcshm
    [ ! -e /run/mcshm ]'

say "done in $((SECONDS - started)) s"
exit "$failed"
