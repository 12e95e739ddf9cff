#!/usr/bin/env bash
# The spa demo: the paper's whole flow on a test bed of network namespaces.
#
#   client 10.200.50.2 ──┐
#                        ├── green ── 10.200.52.1 ── 10.200.52.2 red
#   attacker 10.200.51.2 ┘   (10.200.50.1, 10.200.51.1)
#
# green runs spa-server in blackhole mode with [relay] and [tunnel]; red,
# reachable from green only, runs red-relay in blackhole mode in front of a
# real OpenSSH server and an HTTP server. The flow, with readable output:
#   a scan that finds nothing -> the knocks (open-tunnel, request-service,
#   relayed to red as a signed order) -> real ssh and curl to red through
#   green's mutual-TLS tunnel -> status of green and red -> a replayed knock
#   refused -> the close (red's set empty again) -> a scan that finds nothing.
# Everything is torn down at the end (also on failure or Ctrl-C).
#
# Run as root on Debian/Ubuntu:  sudo bash demo/run.sh
# Addresses are 10.200.50.0/24, 10.200.51.0/24 and 10.200.52.0/24 inside
# the namespaces only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
indent() { sed 's/^/   /'; }
plain() { # a log without colours, times to the second, sessions to 8 digits
    sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9-]+T([0-9:]+)\.[0-9]+Z +/\1 /; s/(session=[0-9a-f]{8})[0-9a-f]+/\1/' "$@"
}

[ "$(id -u)" = 0 ] || { echo "run as root: sudo bash demo/run.sh" >&2; exit 1; }

need=()
for c in nft:nftables ip:iproute2 nmap:nmap sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client python3:python3 curl:curl; do
    command -v "${c%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${c%%:*}" ] || need+=("${c##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    bold "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

bold "building spa (cargo build --bins; the first build takes a few minutes, cargo shows its progress)"
# Not --quiet: cargo's progress (a bar on a terminal, a line per crate
# otherwise) is the only sign of life during a first build.
t_build=$SECONDS
cargo build --bins
bold "built in $((SECONDS - t_build)) s"
BIN="$PWD/target/debug"
START=$SECONDS

G=spa-demo-green; C=spa-demo-client; A=spa-demo-attacker; R=spa-demo-red
GREEN_C=10.200.50.1 CLIENT=10.200.50.2 GREEN_A=10.200.51.1 ATTACKER=10.200.51.2
GREEN_R=10.200.52.1 RED=10.200.52.2
T=""
cleanup() {
    set +e
    trap - EXIT INT TERM
    for ns in $C $A $G $R; do
        for pid in $(ip netns pids $ns 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    done
    for ns in $C $A $G $R; do ip netns del $ns 2>/dev/null; done
    [ -n "$T" ] && rm -rf "$T"
}
on_exit() {
    rc=$?
    [ $rc = 130 ] && printf '\n\033[1m== interrupted\033[0m\n'
    [ $rc -ne 0 ] && [ $rc != 130 ] && printf '\n\033[1;31m== the demo failed (exit %s); logs follow\033[0m\n' "$rc" &&
        for f in green.log red.log forward.log sshd.log; do
            [ -f "$T/$f" ] && { echo "--- $f"; plain "$T/$f" | tail -15; }
        done
    cleanup
    exit $rc
}
cleanup
trap on_exit EXIT
trap 'exit 130' INT TERM
T="$(mktemp -d /tmp/spa-demo.XXXXXX)"
chmod 755 "$T"

bold "1. test bed: client and attacker wired to green; red behind green only"
for ns in $G $C $A $R; do ip netns add $ns; ip -n $ns link set lo up; done
wire() { # ns1 if1 addr1 ns2 if2 addr2
    ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
    ip -n "$1" addr add "$3/24" dev "$2"; ip -n "$1" link set "$2" up
    ip -n "$4" addr add "$6/24" dev "$5"; ip -n "$4" link set "$5" up
}
wire $G g-c $GREEN_C $C c-g $CLIENT
wire $G g-a $GREEN_A $A a-g $ATTACKER
wire $G g-r $GREEN_R $R r-g $RED
say "client $CLIENT ── $GREEN_C green $GREEN_R ── $RED red"
say "attacker $ATTACKER ── $GREEN_A green   (green does not route: red is reachable from green only)"

bold "PKI: a CA; alice's key and certificate; green's TLS certificate; green's and red's keys"
"$BIN/spa-server" pki init --dir "$T/ca" --name "spa demo CA" --cert-out "$T/ca.pem" >/dev/null
"$BIN/spa-client" keygen --out "$T/alice.key" --csr "$T/alice.csr" --name alice --email alice@example.org >/dev/null
"$BIN/spa-server" pki issue --dir "$T/ca" --csr "$T/alice.csr" --name alice --email alice@example.org --client --out "$T/alice.crt" >/dev/null
"$BIN/spa-client" keygen --out "$T/green-tls.key" --csr "$T/green-tls.csr" --name green >/dev/null
"$BIN/spa-server" pki issue --dir "$T/ca" --csr "$T/green-tls.csr" --name green --server --ip $GREEN_C --out "$T/green-tls.crt" >/dev/null
GREEN_PUB=$("$BIN/spa-server" keygen --out "$T/green.key" 2>/dev/null | head -1)
GREEN_SIGN=$("$BIN/spa-server" keygen --signing --out "$T/green-signing.key" 2>/dev/null | head -1)
RED_PUB=$("$BIN/red-relay" keygen --out "$T/red.key" 2>/dev/null | head -1)
say "alice: $T/alice.crt (email:alice@example.org), green's TLS certificate for $GREEN_C"
say "green's knock key $GREEN_PUB"
say "green's order-signing key $GREEN_SIGN"
say "red's order key $RED_PUB"

bold "red: OpenSSH on port 22 and an HTTP server on 8080, red-relay in blackhole mode in front"
ssh-keygen -q -t ed25519 -N '' -f "$T/ssh_host_key"
ssh-keygen -q -t ed25519 -N '' -f "$T/alice_ssh" -C alice
cp "$T/alice_ssh.pub" "$T/authorized_keys"
mkdir -p /run/sshd "$T/www"
echo "hello from red, through green's tunnel" > "$T/www/hello.txt"
cat > "$T/sshd_config" <<CFG
Port 22
ListenAddress $RED
HostKey $T/ssh_host_key
AuthorizedKeysFile $T/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile $T/sshd.pid
StrictModes no
CFG
ip netns exec $R /usr/sbin/sshd -f "$T/sshd_config" -E "$T/sshd.log"
ip netns exec $R python3 -m http.server 8080 --bind $RED --directory "$T/www" >"$T/http.log" 2>&1 & disown
cat > "$T/red.toml" <<CFG
[daemon]
knock_port = 62202
keys = ["$T/red.key"]
replay_db = "$T/red.redb"
control_socket = "$T/red.sock"
user = "nobody"
[trust]
anchors = ["$T/ca.pem"]
[firewall]
mode = "blackhole"
[[services]]
name = "ssh"
port = 22
[[services]]
name = "web"
port = 8080
[[rules]]
identity = "email:alice@example.org"
services = ["ssh", "web"]
[[gateways]]
signing_key = "$GREEN_SIGN"
receiver_keys = ["$GREEN_PUB"]
CFG
"$BIN/red-relay" check-config --config "$T/red.toml" | indent
ip netns exec $R "$BIN/red-relay" run --config "$T/red.toml" 2>"$T/red.log" & disown
for _ in $(seq 50); do grep -q ready "$T/red.log" && break; sleep 0.1; done
grep -q ready "$T/red.log" || { echo "red-relay did not start" >&2; exit 1; }
say "red-relay is running (log: $T/red.log)"

bold "green: spa-server in blackhole mode; its only service is the tunnel (8443); ssh and web are red's"
cat > "$T/green.toml" <<CFG
[daemon]
knock_port = 62201
keys = ["$T/green.key"]
replay_db = "$T/green.redb"
control_socket = "$T/green.sock"
user = "nobody"
[trust]
anchors = ["$T/ca.pem"]
[firewall]
mode = "blackhole"
[[services]]
name = "tunnel"
port = 8443
[[rules]]
identity = "email:alice@example.org"
services = ["tunnel", "ssh", "web"]
[relay]
red = "$RED:62202"
red_key = "$RED_PUB"
signing_key = "$T/green-signing.key"
source = "$GREEN_R"
services = [{ name = "ssh", port = 22 }, { name = "web", port = 8080 }]
[tunnel]
listen_port = 8443
certificate = "$T/green-tls.crt"
key = "$T/green-tls.key"
[ips]
block = 10
CFG
"$BIN/spa-server" check-config --config "$T/green.toml" | indent
ip netns exec $G "$BIN/spa-server" run --config "$T/green.toml" 2>"$T/green.log" & disown
for _ in $(seq 50); do grep -q ready "$T/green.log" && break; sleep 0.1; done
grep -q ready "$T/green.log" || { echo "spa-server did not start" >&2; exit 1; }
say "spa-server is running (log: $T/green.log)"

cat > "$T/client.toml" <<CFG
[profiles.demo]
server = "$GREEN_C"
server_key = "$GREEN_PUB"
key = "$T/alice.key"
certificate = "$T/alice.crt"
lifetime = 60
tunnel_ca = "$T/ca/ca.pem"
tunnel_port = 8443
CFG
export XDG_STATE_HOME="$T/state"
SPA=("$BIN/spa-client" --config "$T/client.toml")

scan() { # namespace, target, ports
    ip netns exec "$1" nmap -n -Pn -sS -T5 --max-retries 1 --initial-rtt-timeout 50ms --max-rtt-timeout 100ms --min-rate 5000 -p "$3" "$2" 2>&1 |
        grep -E "^[0-9]+/|Not shown|All .* ports|unreachable|route" | indent
}
reach() { # namespace, address, port: one TCP connection attempt, 2 s
    ip netns exec "$1" python3 -c '
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close(); print("open")
except OSError as e:
    print("no: " + (e.strerror or type(e).__name__))' "$2" "$3"
}
red_set() { ip netns exec $R nft list set inet spa allow4 | grep -E "elements|^\s+[0-9]" | indent || say "(empty)"; }

bold "2. before any knock: nothing to find"
say "the client probes a few of green's ports:"
scan $C $GREEN_C 22,80,443,8443,62201
say "the attacker scans green's ports 1-1024, the tunnel port and the knock port:"
scan $A $GREEN_A 1-1024,8443,62201
say "(filtered = no answer at all: no open port, no 'closed' port, nothing sent back)"
say "green saw the attacker's scan and blocked its address (intrusion prevention):"
"$BIN/spa-server" status --socket "$T/green.sock" | grep -E "blocked " | indent || true
say "red from the client: ssh $(reach $C $RED 22); web $(reach $C $RED 8080)"
say "red from green itself, before any order (red is in blackhole mode too):"
scan $G $RED 22,8080,62202

bold "3+4. alice: ssh to red through the tunnel (ProxyCommand='spa-client connect ssh')"
say "connect sends open-tunnel (green opens 8443 for $CLIENT), then request-service ssh;"
say "green relays a signed order to red, red opens port 22 for green ($GREEN_R) only;"
say "then TLS 1.3 with alice's certificate to green's tunnel, CONNECT ssh, and ssh runs on top:"
ip netns exec $C ssh -i "$T/alice_ssh" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=20 \
    -o "ProxyCommand=env XDG_STATE_HOME=$T/state ${SPA[*]} connect ssh" root@$RED \
    'echo "on red: $(uname -sr), addresses $(hostname -I)"; echo "sshd sees the connection from: ${SSH_CONNECTION%% *}"' | indent
say "what green and red logged:"
plain "$T/green.log" | grep -E "accepted|relay|order|tunnel: connected|red opened" | tail -5 | cut -c1-150 | sed 's/^/   green: /'
plain "$T/red.log" | grep -E "accepted|order|open" | tail -3 | cut -c1-150 | sed 's/^/   red:   /'
say "red's firewall set (inet spa allow4): green's address only"
red_set

say "curl through 'spa-client connect web --listen 127.0.0.1:18080' on the client:"
ip netns exec $C "${SPA[@]}" connect web --listen 127.0.0.1:18080 >"$T/forward.log" 2>&1 &
FWD=$!; disown
for _ in $(seq 100); do [ "$(reach $C 127.0.0.1 18080)" = open ] && break; sleep 0.2; done
ip netns exec $C curl -sS --max-time 15 http://127.0.0.1:18080/hello.txt | indent
say "the client itself still has no way to red: ssh $(reach $C $RED 22)"
say "the attacker still finds nothing on green:"
scan $A $GREEN_A 22,8443,62201

bold "5. status: green (session, relay counters) and red (the accepted order)"
say "green: spa-server status"
"$BIN/spa-server" status --socket "$T/green.sock" | indent
say "red: red-relay status"
"$BIN/red-relay" status --socket "$T/red.sock" | indent

bold "6. an attacker who captured a knock replays it: refused, silently"
ip netns exec $C "${SPA[@]}" --json send --dry-run request ssh > "$T/knock.json"
send_udp() { # namespace, destination, hex file
    ip netns exec "$1" python3 -c 'import json,socket,sys; d=bytes.fromhex(json.load(open(sys.argv[2]))["datagram"]); socket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto(d,(sys.argv[1],62201))' "$2" "$3"
}
send_udp $C $GREEN_C "$T/knock.json"; sleep 0.3
say "alice's knock went out once (accepted): $(plain "$T/green.log" | grep accepted | tail -1 | grep -o 'kind=.*services=[a-z]*')"
left=$("$BIN/spa-server" status --socket "$T/green.sock" | sed -n "s/.*blocked $ATTACKER for \([0-9]*\) s.*/\1/p")
if [ -n "$left" ]; then
    say "the attacker is still blocked for the scan ($left s more: its datagrams that fail the MAC are dropped unread);"
    say "it waits for the block to end ..."
    for _ in $(seq 100); do
        st=$("$BIN/spa-server" status --socket "$T/green.sock")
        case "$st" in *"blocked $ATTACKER"*) sleep 0.2 ;; *) break ;; esac
    done
fi
say "the attacker sends the captured knock again:"
send_udp $A $GREEN_A "$T/knock.json"; sleep 0.3
plain "$T/green.log" | grep refused | tail -1 | cut -c1-150 | sed 's/^/   green: /'
say "and red's set still holds only green's address: $(ip netns exec $R nft list set inet spa allow4 | grep -o '10\.200\.[0-9.]* ' | sort -u | tr -d '\n')"

bold "7. alice closes the session (green relays the close to red)"
kill "$FWD" 2>/dev/null || true
ip netns exec $C "${SPA[@]}" send close | indent
sleep 1
say "red's set afterwards:"
red_set
say "green's set afterwards:"
ip netns exec $G nft list set inet spa allow4 | grep -E "elements|^\s+[0-9]" | indent || say "(empty)"
say "green: $("$BIN/spa-server" status --socket "$T/green.sock" | grep "active session")"
say "red:   $("$BIN/red-relay" status --socket "$T/red.sock" | grep "active session")"

bold "8. a final scan: again nothing"
say "the client probes green:"
scan $C $GREEN_C 22,80,443,8443,62201
say "the attacker scans green:"
scan $A $GREEN_A 1-1024,8443,62201
say "red, probed from green:"
scan $G $RED 22,8080,62202

bold "decisions in the logs"
plain "$T/green.log" | grep -E "accepted|refused|blocked|relay" | tail -10 | cut -c1-150 | sed 's/^/   green: /'
plain "$T/red.log" | grep -E "accepted|refused|closed" | tail -5 | cut -c1-150 | sed 's/^/   red: /'

bold "done in $((SECONDS - START)) s: tearing the test bed down"
