# shellcheck shell=bash
# What scripts/bench/run and scripts/soak share (sourced, not run): the packages and tools
# they install, Roomline's release build, and the private network namespace the
# measurements run in. Callers set `set -euo pipefail` and define say()/die().
#
#   harness_packages PKG...   Debian packages (installed if missing), then
#                             scripts/install-test-deps (livekit-server, the Python venv),
#                             then matplotlib into that venv
#   harness_build             release build of roomline, examples/lk_bench and
#                             examples/srtp_phones into $CARGO_TARGET_DIR (default
#                             REPO/target); sets ROOMLINE, LK_BENCH, SRTP_PHONES
#   harness_netns_up NAME IP IF
#                             a namespace with loopback and one veth pair whose both ends
#                             are inside it (IP/32 on IF, no route out), IPv6 off, ephemeral
#                             ports 50000-60999 (above every fixed port the tools give out)
#   harness_netns_down NAME   deletes it (idempotent)

REPO="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${ROOMLINE_TOOLS:-$HOME/.cache/roomline}"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"

harness_packages() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "apt: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
    "$REPO/scripts/install-test-deps" >/dev/null
    if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
        say "pip: installing matplotlib into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check matplotlib >&2
    fi
}

harness_build() {
    say "building Roomline (release), examples/lk_bench and examples/srtp_phones"
    (cd "$REPO" && cargo build --release --locked --bin roomline --example lk_bench --example srtp_phones >&2)
    local target="${CARGO_TARGET_DIR:-$REPO/target}"
    ROOMLINE="$target/release/roomline"
    LK_BENCH="$target/release/examples/lk_bench"
    SRTP_PHONES="$target/release/examples/srtp_phones"
}

harness_netns_up() {
    local ns="$1" ip="$2" ifname="$3"
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip link add "$ifname" type veth peer name "${ifname}p"
    ip netns exec "$ns" ip addr add "$ip/32" dev "$ifname"
    ip netns exec "$ns" ip link set "$ifname" up
    ip netns exec "$ns" ip link set "${ifname}p" up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="50000 60999"
}

harness_netns_down() {
    ip netns del "$1" 2>/dev/null || true
}
