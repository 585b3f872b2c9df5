#!/usr/bin/env bash
# shellcheck disable=SC2317  # functions run from traps and indirectly ("start_$impl")
# Isthmus throughput / RSS benchmark.
#
# Builds a two-host lab (namespaces b<N>-a and b<N>-b joined by a veth "WAN"),
# then measures iperf3 TCP throughput (client in a, server in b) through, in turn:
#   veth             raw veth, no tunnel (upper bound)
#   isthmus-gateway  our daemon
#   boringtun-cli    reference userspace WireGuard (Rust)
#   wireguard-go     reference userspace WireGuard (Go)
# and the resident set size (VmRSS) of each tunnel daemon, idle and under load.
# Each implementation runs on its own: it is torn down before the next starts.
#
# Usage: bench/throughput.sh [--reverse] [--help]
# Env:   DURATION=10 PARALLEL=1 REPEAT=1 ONLY=veth,isthmus-gateway,boringtun-cli,wireguard-go
#        ISTHMUS_BIN_DIR=<repo>/target/release  BORINGTUN_BIN  WIREGUARD_GO_BIN  KEEP_TMP=0
# See bench/README.md.

set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

DURATION=${DURATION:-10}
PARALLEL=${PARALLEL:-1}
REPEAT=${REPEAT:-1}
ONLY=${ONLY:-}
KEEP_TMP=${KEEP_TMP:-0}
HANDSHAKE_TIMEOUT=${HANDSHAKE_TIMEOUT:-30}
RETRY=${RETRY:-1}
DAEMON_BACKTRACE=${DAEMON_BACKTRACE:-0}
ISTHMUS_CONFIG_EXTRA=${ISTHMUS_CONFIG_EXTRA:-}
ISTHMUS_BIN_DIR=${ISTHMUS_BIN_DIR:-$REPO_DIR/target/release}
ISTHMUS_BIN=$ISTHMUS_BIN_DIR/isthmus-gateway
ISTHMUS_BIN_ORIG=$ISTHMUS_BIN
BORINGTUN_BIN=${BORINGTUN_BIN:-$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")}
WIREGUARD_GO_BIN=${WIREGUARD_GO_BIN:-$(command -v wireguard-go || echo /usr/bin/wireguard-go)}
RESULTS_DIR=${RESULTS_DIR:-$SCRIPT_DIR/results}
REVERSE=0

ALL_IMPLS=(veth isthmus-gateway boringtun-cli wireguard-go)

usage() {
    sed -n '3,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit "${1:-0}"
}

while (($#)); do
    case $1 in
        --reverse | -R) REVERSE=1 ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
    shift
done

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in DURATION PARALLEL REPEAT HANDSHAKE_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $RETRY =~ ^[0-9]+$ ]] || die "RETRY must be a non-negative integer (got '$RETRY')"
[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, TUN devices)"
for tool in ip iperf3 python3 ss timeout; do
    command -v "$tool" >/dev/null || die "required tool not found: $tool"
done

# ---- selection -------------------------------------------------------------

canon_impl() {
    case $1 in
        veth | raw | raw-veth) echo veth ;;
        isthmus | isthmus-gateway | gateway) echo isthmus-gateway ;;
        boringtun | boringtun-cli) echo boringtun-cli ;;
        wireguard-go | wggo | wg-go | wireguard) echo wireguard-go ;;
        *) return 1 ;;
    esac
}

SELECTED=()
if [[ -z $ONLY ]]; then
    SELECTED=("${ALL_IMPLS[@]}")
else
    declare -A want=()
    IFS=',' read -r -a only_list <<<"$ONLY"
    for o in "${only_list[@]}"; do
        o=${o// /}
        [[ -z $o ]] && continue
        c=$(canon_impl "$o") || die "ONLY: unknown implementation '$o' (known: ${ALL_IMPLS[*]})"
        want[$c]=1
    done
    for i in "${ALL_IMPLS[@]}"; do [[ -n ${want[$i]:-} ]] && SELECTED+=("$i"); done
    ((${#SELECTED[@]})) || die "ONLY selects nothing"
fi

# ---- lab names -------------------------------------------------------------

ID=$$
NS_A="b${ID}-a"
NS_B="b${ID}-b"
WAN_A_IP=10.254.0.1
WAN_B_IP=10.254.0.2
TUN_A_IP=100.97.0.1
TUN_B_IP=100.97.0.2
TUN_MTU=1420
WG_PORT=51820
IPERF_PORT=5201

TMP=$(mktemp -d "/tmp/isthmus-bench.${ID}.XXXXXX")
chmod 700 "$TMP"
RESULTS_TSV=$TMP/results.tsv
: >"$RESULTS_TSV"

# interface name for implementation code $1 on side $2 (<= 15 chars, unique per run:
# the UAPI socket /var/run/wireguard/<name>.sock is shared by all namespaces)
ifname() { printf 'b%s%s%s' "$ID" "$1" "$2"; }

declare -A OWN_PIDS=() # children we started and have not reaped yet (killed on exit)
OWN_NS=()              # namespaces we created (deleted on exit)
UAPI_SOCKS=()          # sockets to remove on exit
CLEANED=0

own() { OWN_PIDS[$1]=1; }

kill_pid() { # pid [grace-seconds]
    local pid=$1 grace=${2:-3} i
    [[ -n $pid ]] || return 0
    # never signal a pid we no longer own: once reaped it may belong to someone else
    [[ -n ${OWN_PIDS[$pid]:-} ]] || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    unset "OWN_PIDS[$pid]"
    return 0
}

cleanup() {
    ((CLEANED)) && return
    CLEANED=1
    local p ns
    for p in "${!OWN_PIDS[@]}"; do kill_pid "$p" 2; done
    # safety net: anything still running inside the namespaces we created was started by us
    for ns in "${OWN_NS[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    done
    for ns in "${OWN_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    for p in "${UAPI_SOCKS[@]}"; do rm -f "$p"; done
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---- helpers ---------------------------------------------------------------

in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }

rss_kib() { # pid -> VmRSS in KiB (0 if gone); no forks
    local k v _
    if [[ -r /proc/$1/status ]]; then
        while read -r k v _; do
            [[ $k == VmRSS: ]] && { echo "$v"; return; }
        done </proc/"$1"/status
    fi
    echo 0
}

# Background RSS sampler: writes "maxA maxB" (KiB) to $1 every tick.
rss_sampler() {
    local out=$1 pa=$2 pb=$3 ma=0 mb=0 v
    trap 'exit 0' TERM
    while :; do
        v=$(rss_kib "$pa"); ((v > ma)) && ma=$v
        v=$(rss_kib "$pb"); ((v > mb)) && mb=$v
        echo "$ma $mb" >"$out.tmp" && mv -f "$out.tmp" "$out"
        sleep 0.2
    done
}

# Run a command in the background and wait for it: a trapped signal then interrupts
# the wait at once instead of after the command ends. Returns the command's status.
# (Redirect inside, never around the call: a trap firing during the wait would
# inherit the redirection.)
bg_run() { # stdout-file stderr-file command...
    local out=$1 err=$2 p
    shift 2
    "$@" </dev/null >"$out" 2>"$err" &
    p=$!
    own "$p"
    wait "$p"
    local rc=$?
    unset "OWN_PIDS[$p]"
    return $rc
}

# ICMP echo through the tunnel from namespace a (no dependency on iputils-ping).
wait_ping() { # dst timeout-seconds
    bg_run /dev/null "$TMP/ping.err" ip netns exec "$NS_A" python3 "$TMP/ping.py" "$1" "$2"
}
cat >"$TMP/ping.py" <<'PY'
import os, socket, struct, sys, time
dst, deadline = sys.argv[1], time.time() + float(sys.argv[2])
ident = os.getpid() & 0xFFFF
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
seq = 0
while time.time() < deadline:
    seq = (seq + 1) & 0xFFFF
    body = b"isthmus-bench"
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + body), ident, seq) + body
    try:
        s.sendto(pkt, (dst, 0))
    except OSError:
        time.sleep(0.3); continue
    end = time.time() + 0.5
    while (left := end - time.time()) > 0:
        s.settimeout(left)
        try:
            data, addr = s.recvfrom(4096)
        except (socket.timeout, OSError):
            break
        ihl = (data[0] & 0x0F) * 4
        t, _, _, i, q = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if addr[0] == dst and t == 0 and i == ident:
            sys.exit(0)
sys.exit(1)
PY

if_bytes() { # ns ifname -> rx+tx bytes
    ip netns exec "$1" sh -c "cat /sys/class/net/$2/statistics/rx_bytes /sys/class/net/$2/statistics/tx_bytes 2>/dev/null" |
        awk '{s += $1} END {printf "%.0f\n", s}'
}

wait_for() { # timeout-seconds description command...
    local t=$1 what=$2 i
    shift 2
    for ((i = 0; i < t * 10; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    FAIL_REASON="timed out waiting for $what"
    return 1
}

alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null || return 1; done; }

# record impl status gbps_list(comma) rss_idle_a rss_idle_b rss_load_a rss_load_b note
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS_TSV"; }

gen_keys() { # dir -> dir/{a,b}.key dir/{a,b}.pub
    local d=$1 s
    mkdir -p "$d"
    for s in a b; do
        (umask 077; wg genkey >"$d/$s.key") || return 1
        wg pubkey <"$d/$s.key" >"$d/$s.pub" || return 1
    done
}

# ---- topology --------------------------------------------------------------

setup_lab() {
    log "lab: namespaces $NS_A, $NS_B; WAN $WAN_A_IP <-> $WAN_B_IP"
    local ns
    for ns in "$NS_A" "$NS_B"; do
        ip netns add "$ns" || die "ip netns add $ns (left over from an earlier run?)"
        OWN_NS+=("$ns")
    done
    # created inside a with its peer inside b: never visible in the root namespace
    ip -n "$NS_A" link add wan0 type veth peer name wan0 netns "$NS_B" || die "veth"
    ip -n "$NS_A" addr add "$WAN_A_IP/24" dev wan0
    ip -n "$NS_B" addr add "$WAN_B_IP/24" dev wan0
    for ns in "$NS_A" "$NS_B"; do
        ip -n "$ns" link set lo up
        ip -n "$ns" link set wan0 up || die "link up in $ns"
    done
    wait_for 5 "WAN link" wan_up || die "$FAIL_REASON"
}
wan_up() { [[ $(ip -n "$NS_A" -o link show wan0) == *LOWER_UP* ]]; }

# ---- implementations -------------------------------------------------------
# start_<impl>: start both sides, set PID_A PID_B IF_A and return 0; or set
# FAIL_REASON and return 1. Must register every pid with own() at once.

PID_A='' PID_B='' IF_A='' FAIL_REASON=''

start_isthmus-gateway() {
    local d=$TMP/isthmus s peer_ip peer_side peer_tun addr
    gen_keys "$d" || { FAIL_REASON="key generation failed"; return 1; }
    for s in a b; do
        if [[ $s == a ]]; then addr=$TUN_A_IP peer_ip=$WAN_B_IP peer_side=b peer_tun=$TUN_B_IP
        else addr=$TUN_B_IP peer_ip=$WAN_A_IP peer_side=a peer_tun=$TUN_A_IP; fi
        cat >"$d/$s.toml" <<EOF
[interface]
name = "$(ifname is "$s")"
private_key_file = "$d/$s.key"
listen_port = $WG_PORT
address = ["$addr/24"]
mtu = $TUN_MTU

[admin]
socket = "$d/$s.sock"

[[peer]]
public_key = "$(cat "$d/$peer_side.pub")"
endpoint = "$peer_ip:$WG_PORT"
allowed_ips = ["$peer_tun/32"]
persistent_keepalive = 25
EOF
        # extra TOML (e.g. a [dataplane] table of offload switches), same on both sides
        [[ -n $ISTHMUS_CONFIG_EXTRA ]] && printf '\n%s\n' "$ISTHMUS_CONFIG_EXTRA" >>"$d/$s.toml"
    done
    # (RUST_BACKTRACE=0 keeps a panic's message at the end of the log, where it is shown)
    ip netns exec "$NS_A" env RUST_BACKTRACE="$DAEMON_BACKTRACE" "$ISTHMUS_BIN" --config "$d/a.toml" >"$d/a.log" 2>&1 &
    PID_A=$!; own "$PID_A"
    ip netns exec "$NS_B" env RUST_BACKTRACE="$DAEMON_BACKTRACE" "$ISTHMUS_BIN" --config "$d/b.toml" >"$d/b.log" 2>&1 &
    PID_B=$!; own "$PID_B"
    IF_A=$(ifname is a)
    LOGS=("$d/a.log" "$d/b.log")
    # it serves the wg UAPI too; remove the sockets should it die without cleaning up
    UAPI_SOCKS+=("/var/run/wireguard/$IF_A.sock" "/var/run/wireguard/$(ifname is b).sock")
    sleep 0.3
    alive "$PID_A" "$PID_B" || { FAIL_REASON="daemon exited at start"; return 1; }
}

# Shared by the two wg-UAPI implementations: configure with ip + wg.
wg_configure() { # dir code
    local d=$1 code=$2 s ns ifn addr peer_side peer_ip peer_tun
    for s in a b; do
        if [[ $s == a ]]; then ns=$NS_A addr=$TUN_A_IP peer_side=b peer_ip=$WAN_B_IP peer_tun=$TUN_B_IP
        else ns=$NS_B addr=$TUN_B_IP peer_side=a peer_ip=$WAN_A_IP peer_tun=$TUN_A_IP; fi
        ifn=$(ifname "$code" "$s")
        ip netns exec "$ns" wg set "$ifn" private-key "$d/$s.key" listen-port "$WG_PORT" \
            peer "$(cat "$d/$peer_side.pub")" endpoint "$peer_ip:$WG_PORT" \
            allowed-ips "$peer_tun/32" persistent-keepalive 25 ||
            { FAIL_REASON="wg set on $ifn failed"; return 1; }
        if ! ip -n "$ns" addr add "$addr/24" dev "$ifn" ||
            ! ip -n "$ns" link set "$ifn" mtu "$TUN_MTU" up; then
            FAIL_REASON="ip addr/link on $ifn failed"
            return 1
        fi
    done
}

start_wg_uapi() { # code dir cmd... (cmd gets the ifname appended)
    local code=$1 d=$2 ia ib
    shift 2
    command -v wg >/dev/null || { FAIL_REASON="wg (wireguard-tools) not found"; return 1; }
    gen_keys "$d" || { FAIL_REASON="key generation failed"; return 1; }
    ia=$(ifname "$code" a) ib=$(ifname "$code" b)
    UAPI_SOCKS+=("/var/run/wireguard/$ia.sock" "/var/run/wireguard/$ib.sock")
    ip netns exec "$NS_A" "$@" "$ia" >"$d/a.log" 2>&1 &
    PID_A=$!; own "$PID_A"
    ip netns exec "$NS_B" "$@" "$ib" >"$d/b.log" 2>&1 &
    PID_B=$!; own "$PID_B"
    IF_A=$ia
    LOGS=("$d/a.log" "$d/b.log")
    wait_for 10 "UAPI sockets" uapi_ready "$ia" "$ib" || return 1
    wg_configure "$d" "$code"
}
uapi_ready() {
    alive "$PID_A" "$PID_B" || return 1
    [[ -S /var/run/wireguard/$1.sock && -S /var/run/wireguard/$2.sock ]] &&
        ip -n "$NS_A" link show "$1" >/dev/null 2>&1 && ip -n "$NS_B" link show "$2" >/dev/null 2>&1
}

start_boringtun-cli() {
    local d=$TMP/boringtun
    mkdir -p "$d"
    start_wg_uapi bt "$d" env WG_SUDO=1 "$BORINGTUN_BIN" --foreground --disable-drop-privileges \
        --log "$d/boringtun.out"
}

start_wireguard-go() {
    local d=$TMP/wggo
    mkdir -p "$d"
    start_wg_uapi wg "$d" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "$WIREGUARD_GO_BIN" -f
}

stop_impl() {
    kill_pid "$PID_A"
    kill_pid "$PID_B"
    PID_A='' PID_B=''
}

impl_binary() {
    case $1 in
        isthmus-gateway) echo "$ISTHMUS_BIN" ;;
        boringtun-cli) echo "$BORINGTUN_BIN" ;;
        wireguard-go) echo "$WIREGUARD_GO_BIN" ;;
    esac
}

# ---- one iperf3 run --------------------------------------------------------

# run_iperf dst out.json -> sets IPERF_BPS IPERF_BYTES, or returns 1 with FAIL_REASON
run_iperf() {
    local dst=$1 json=$2 srv rc args
    IPERF_RC=0
    args=(-c "$dst" -p "$IPERF_PORT" -t "$DURATION" -P "$PARALLEL" -J)
    ((REVERSE)) && args+=(-R)
    ip netns exec "$NS_B" iperf3 -s -1 -p "$IPERF_PORT" >"$json.server" 2>&1 &
    srv=$!; own "$srv"
    if ! wait_for 5 "iperf3 server" iperf_listening; then kill_pid "$srv" 1; return 1; fi
    bg_run "$json" "$json.err" timeout --kill-after=5 $((DURATION + 30)) ip netns exec "$NS_A" iperf3 "${args[@]}"
    rc=$?
    IPERF_RC=$rc
    kill_pid "$srv" 1
    IPERF_BPS='' IPERF_BYTES=''
    read -r IPERF_BPS IPERF_BYTES < <(python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    if not d.get("error"):
        s = d["end"]["sum_received"]
        print(s["bits_per_second"], int(s["bytes"]))
except Exception:
    pass
' "$json")
    [[ -n $IPERF_BPS ]] && return 0
    FAIL_REASON="iperf3 failed (rc=$rc): $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("error","no JSON"))' "$json" 2>/dev/null || head -c 200 "$json.err")"
    return 1
}
iperf_listening() { [[ -n $(ss -N "$NS_B" -Hltn "sport = :$IPERF_PORT" 2>/dev/null) ]]; }

# ---- one implementation ----------------------------------------------------

bench_impl() {
    local impl=$1 bin dst r out bps bytes b0 b1 sampler idle_a=0 idle_b=0 load_a=0 load_b=0
    local gbps=() note="" rssfile=$TMP/rss.$impl la lb
    FAIL_REASON='' PID_A='' PID_B='' IF_A='' LOGS=()

    if [[ $impl == veth ]]; then
        dst=$WAN_B_IP IF_A=wan0
    else
        bin=$(impl_binary "$impl")
        if [[ ! -x $bin ]]; then
            [[ $impl == isthmus-gateway ]] && bin=$ISTHMUS_BIN_ORIG
            log "$impl: skipped: not found ($bin)"
            record "$impl" "skipped: not found" "" "" "" "" "" "not found: $bin"
            return
        fi
        dst=$TUN_B_IP
        log "$impl: starting ($bin)"
        if ! "start_$impl" || ! wait_tunnel; then
            log "$impl: failed: $FAIL_REASON"
            show_logs
            record "$impl" "failed: $FAIL_REASON" "" "" "" "" "" ""
            stop_impl
            return
        fi
        sleep 1 # let allocations from the handshake settle
        idle_a=$(rss_kib "$PID_A") idle_b=$(rss_kib "$PID_B")
        log "$impl: tunnel up; idle RSS a=${idle_a}KiB b=${idle_b}KiB"
    fi

    local retries=$RETRY
    for ((r = 1; r <= REPEAT; r++)); do
        out=$TMP/iperf.$impl.$r.json
        if [[ -n $PID_A ]]; then
            echo "0 0" >"$rssfile"
            rss_sampler "$rssfile" "$PID_A" "$PID_B" &
            sampler=$!; own "$sampler"
        fi
        b0=$(if_bytes "$NS_A" "$IF_A")
        bps='' bytes=''
        run_iperf "$dst" "$out" && bps=$IPERF_BPS bytes=$IPERF_BYTES
        b1=$(if_bytes "$NS_A" "$IF_A")
        if [[ -n $PID_A ]]; then
            kill_pid "$sampler" 1
            read -r la lb <"$rssfile"
            ((la > load_a)) && load_a=$la
            ((lb > load_b)) && load_b=$lb
        fi
        if [[ -z $bps ]]; then
            [[ -z $FAIL_REASON ]] && FAIL_REASON="iperf3 failed: $(head -c 300 "$out.err" 2>/dev/null)"
            log "$impl: run $r/$REPEAT failed: $FAIL_REASON"
            # An iperf3 error with the tunnel still up (e.g. the client killed from outside)
            # is retried; a stall (timeout: 124, or 137 after --kill-after) is not.
            if ((retries > 0 && IPERF_RC != 124 && IPERF_RC != 137)) &&
                { [[ -z $PID_A ]] || alive "$PID_A" "$PID_B"; } && wait_ping "$dst" 5; then
                retries=$((retries - 1))
                note="${note:+$note; }run $r retried after: $FAIL_REASON"
                log "$impl: retrying run $r"
                FAIL_REASON=''
                r=$((r - 1))
                continue
            fi
            if [[ -n $PID_A ]]; then
                alive "$PID_A" "$PID_B" || FAIL_REASON="daemon died under load; $FAIL_REASON"
                local panic
                panic=$(log_panic)
                [[ -n $panic ]] && FAIL_REASON="$FAIL_REASON; daemon log: $panic"
                show_logs
            fi
            ((REPEAT > 1)) && note="${note:+$note; }failed in run $r of $REPEAT"
            break
        fi
        # the traffic must actually have crossed the interface we think it did
        if ((b1 - b0 < bytes * 9 / 10)); then
            note="${note:+$note; }WARNING: run $r: $IF_A counted $((b1 - b0)) bytes for $bytes iperf3 bytes"
            log "$impl: $note"
        fi
        gbps+=("$(awk -v b="$bps" 'BEGIN {printf "%.4f", b / 1e9}')")
        log "$impl: run $r/$REPEAT: ${gbps[-1]} Gbit/s"
    done

    local status=ok
    ((${#gbps[@]} == REPEAT)) || status="failed: ${FAIL_REASON:-iperf3}"
    local list
    list=$(IFS=,; echo "${gbps[*]}")
    record "$impl" "$status" "$list" "$idle_a" "$idle_b" "$load_a" "$load_b" "$note"
    [[ $impl != veth ]] && stop_impl
}

wait_tunnel() {
    # handshake + route: an ICMP echo through the tunnel must come back
    local t0=$SECONDS
    if ! wait_ping "$TUN_B_IP" "$HANDSHAKE_TIMEOUT"; then
        if alive "$PID_A" "$PID_B"; then
            FAIL_REASON="no ping through the tunnel within ${HANDSHAKE_TIMEOUT}s"
        else
            FAIL_REASON="daemon exited before the tunnel came up"
        fi
        return 1
    fi
    log "tunnel up after $((SECONDS - t0))s"
    alive "$PID_A" "$PID_B" || { FAIL_REASON="daemon exited"; return 1; }
}

strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

show_logs() {
    local f
    for f in "${LOGS[@]}"; do
        [[ -s $f ]] || continue
        log "--- tail $f"
        tail -n 15 "$f" | strip_ansi | sed 's/^/    /' >&2
    done
}

# first Rust panic in the daemon logs, as "<message> (<location>)"
log_panic() {
    local f
    for f in "${LOGS[@]}"; do
        [[ -s $f ]] || continue
        strip_ansi <"$f" | awk '/panicked at/ {loc = $0; sub(/.*panicked at /, "", loc); sub(/:$/, "", loc); sub(/.*\/registry\/src\/[^\/]*\//, "", loc);
            getline msg; print msg " (" loc ")"; exit}' | grep . && return
    done
}

# ---- main ------------------------------------------------------------------

# --version with a timeout: a binary that does not know the flag might start serving
bin_version() { timeout -s KILL 5 "$1" --version </dev/null 2>/dev/null | head -n1; }

version_of() {
    case $1 in
        veth) uname -r ;;
        isthmus-gateway) [[ -x $ISTHMUS_BIN ]] && bin_version "$ISTHMUS_BIN" ;;
        boringtun-cli) [[ -x $BORINGTUN_BIN ]] && bin_version "$BORINGTUN_BIN" ;;
        wireguard-go) [[ -x $WIREGUARD_GO_BIN ]] && bin_version "$WIREGUARD_GO_BIN" ;;
    esac
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOAD_START%% *}" 'BEGIN {exit !(l > 0.5)}'; then
    log "warning: host is busy (load average $LOAD_START); figures will be noisy"
fi
# run a private copy of our binary: a concurrent `cargo build` may replace it mid-run
if [[ " ${SELECTED[*]} " == *" isthmus-gateway "* && -x $ISTHMUS_BIN ]]; then
    mkdir -p "$TMP/bin"
    cp "$ISTHMUS_BIN" "$TMP/bin/isthmus-gateway" || die "cannot copy $ISTHMUS_BIN"
    ISTHMUS_BIN=$TMP/bin/isthmus-gateway
fi
setup_lab
log "duration=${DURATION}s parallel=$PARALLEL repeat=$REPEAT reverse=$REVERSE impls=${SELECTED[*]}"
VERSIONS_TSV=$TMP/versions.tsv
: >"$VERSIONS_TSV"
for impl in "${SELECTED[@]}"; do
    printf '%s\t%s\n' "$impl" "$(version_of "$impl")" >>"$VERSIONS_TSV"
    bench_impl "$impl"
done

mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_JSON=$RESULTS_DIR/throughput-$STAMP.json
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
GIT_REV=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO_DIR" diff --quiet HEAD 2>/dev/null || GIT_REV="$GIT_REV-dirty"

ISTHMUS_CONFIG_EXTRA=$ISTHMUS_CONFIG_EXTRA python3 - "$RESULTS_TSV" "$VERSIONS_TSV" "$OUT_JSON" <<PY
import json, os, statistics, sys, platform
rows_tsv, versions_tsv, out = sys.argv[1:4]
versions = dict(l.rstrip("\n").split("\t", 1) for l in open(versions_tsv) if l.strip())
mib = lambda kib: round(int(kib) / 1024, 1) if kib not in ("", "0") else None
rows = []
for line in open(rows_tsv):
    impl, status, gl, ia, ib, la, lb, note = (line.rstrip("\n").split("\t") + [""] * 8)[:8]
    runs = [float(x) for x in gl.split(",") if x]
    tunnel = impl != "veth"
    rows.append({
        "implementation": impl,
        "status": status,
        "version": versions.get(impl, ""),
        "gbit_s": round(statistics.median(runs), 3) if status == "ok" and runs else None,
        "runs_gbit_s": runs,
        "rss_idle_mib": max(filter(None, [mib(ia), mib(ib)]), default=None) if tunnel else None,
        "rss_load_mib": max(filter(None, [mib(la), mib(lb)]), default=None) if tunnel else None,
        "rss_idle_mib_per_side": {"a": mib(ia), "b": mib(ib)} if tunnel else None,
        "rss_load_mib_per_side": {"a": mib(la), "b": mib(lb)} if tunnel else None,
        "note": note,
    })
ref = next((r["gbit_s"] for r in rows if r["implementation"] == "boringtun-cli" and r["gbit_s"]), None)
for r in rows:
    r["ratio_to_boringtun_cli"] = round(r["gbit_s"] / ref, 2) if ref and r["gbit_s"] else None
doc = {
    "timestamp": "$STAMP",
    "git_rev": "$GIT_REV",
    "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
             "loadavg_start": "$LOAD_START", "loadavg_end": "$LOAD_END"},
    "params": {"duration_s": $DURATION, "parallel": $PARALLEL, "repeat": $REPEAT,
               "reverse": bool($REVERSE), "tunnel_mtu": $TUN_MTU, "aggregate": "median",
               "isthmus_config_extra": os.environ.get("ISTHMUS_CONFIG_EXTRA", ""),
               "rss": "VmRSS, max of the two sides; load = max sampled every 0.2 s during iperf3"},
    "results": rows,
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")

def fmt(v, spec):
    return "-" if v is None else format(v, spec)
hdr = ("implementation", "Gbit/s", "x boringtun-cli", "RSS idle MiB", "RSS load MiB")
lines = []
for r in rows:
    st = r["status"]
    g = fmt(r["gbit_s"], ".3f") if st == "ok" else ("FAILED" if st.startswith("failed") else st)
    lines.append((r["implementation"], g, fmt(r["ratio_to_boringtun_cli"], ".2f"),
                  fmt(r["rss_idle_mib"], ".1f"), fmt(r["rss_load_mib"], ".1f")))
w = [max(len(x[i]) for x in [hdr] + lines) for i in range(len(hdr))]
line = lambda x: "  ".join([x[0].ljust(w[0])] + [c.rjust(w[i + 1]) for i, c in enumerate(x[1:])])
print(f"# iperf3 TCP, {$DURATION}s x {$REPEAT} (median), -P {$PARALLEL}{', reverse' if $REVERSE else ''}; "
      f"{os.cpu_count()} CPUs, kernel {platform.release()}, load {'$LOAD_START'.split()[0]}")
print(line(hdr))
print(line(tuple("-" * n for n in w)))
for x in lines:
    print(line(x))
if os.environ.get("ISTHMUS_CONFIG_EXTRA") and any(r["implementation"] == "isthmus-gateway" for r in rows):
    print("# isthmus-gateway config extra: " + os.environ["ISTHMUS_CONFIG_EXTRA"].replace("\n", "; "))
for r in rows:
    why = "; ".join(x for x in (r["status"] if r["status"] != "ok" else "", r["note"]) if x)
    if why:
        print(f"# {r['implementation']}: {why}")
PY
log "results: $OUT_JSON"
# skipped implementations are fine; a failed one is not
if cut -f2 "$RESULTS_TSV" | grep -q '^failed'; then exit 1; fi
exit 0
