#!/usr/bin/env bash
# The spa demo: a test bed of network namespaces (client, attacker, green),
# green running spa-server in blackhole mode in front of a real OpenSSH
# server, and the whole knock flow with readable output:
#   a scan that finds nothing -> a knock -> ssh works for the client only ->
#   status -> close -> a scan that again finds nothing.
# Everything is torn down at the end (also on failure or Ctrl-C).
#
# Run as root on Debian/Ubuntu:  sudo bash demo/run.sh
# Addresses are 10.200.50.0/24 and 10.200.51.0/24 inside the namespaces only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "run as root: sudo bash demo/run.sh" >&2; exit 1; }

need=()
for c in nft:nftables ip:iproute2 nmap:nmap sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client python3:python3; do
    command -v "${c%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${c%%:*}" ] || need+=("${c##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    bold "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

bold "building spa (cargo build --bins)"
cargo build --bins --quiet
BIN="$PWD/target/debug"

T="$(mktemp -d /tmp/spa-demo.XXXXXX)"
chmod 755 "$T"
G=spa-demo-green; C=spa-demo-client; A=spa-demo-attacker
GREEN_C=10.200.50.1 CLIENT=10.200.50.2 GREEN_A=10.200.51.1 ATTACKER=10.200.51.2
cleanup() {
    set +e
    for ns in $G $C $A; do
        for pid in $(ip netns pids $ns 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del $ns 2>/dev/null
    done
    rm -rf "$T"
}
trap cleanup EXIT INT TERM
cleanup; trap cleanup EXIT INT TERM
mkdir -p "$T"; chmod 755 "$T"

bold "test bed: client $CLIENT and attacker $ATTACKER, both wired to green"
for ns in $G $C $A; do ip netns add $ns; ip -n $ns link set lo up; done
ip link add g-c netns $G type veth peer name c-g netns $C
ip link add g-a netns $G type veth peer name a-g netns $A
ip -n $G addr add $GREEN_C/24 dev g-c; ip -n $G link set g-c up
ip -n $G addr add $GREEN_A/24 dev g-a; ip -n $G link set g-a up
ip -n $C addr add $CLIENT/24 dev c-g; ip -n $C link set c-g up
ip -n $A addr add $ATTACKER/24 dev a-g; ip -n $A link set a-g up

bold "PKI: a CA, alice's key and certificate, green's key"
"$BIN/spa-server" pki init --dir "$T/ca" --name "spa demo CA" >/dev/null
"$BIN/spa-client" keygen --out "$T/alice.key" --csr "$T/alice.csr" --name alice --email alice@example.org >/dev/null
"$BIN/spa-server" pki issue --dir "$T/ca" --csr "$T/alice.csr" --name alice --email alice@example.org --client --out "$T/alice.crt" >/dev/null
"$BIN/spa-server" keygen --out "$T/green.key" 2>/dev/null > "$T/green.pub"
say "CA $T/ca/ca.pem; alice: $T/alice.crt; green's public key: $(cat "$T/green.pub")"

bold "green: OpenSSH on port 22, spa-server in blackhole mode in front of it"
ssh-keygen -q -t ed25519 -N '' -f "$T/ssh_host_key"
ssh-keygen -q -t ed25519 -N '' -f "$T/alice_ssh" -C alice
mkdir -p /run/sshd
cat > "$T/sshd_config" <<CFG
Port 22
ListenAddress 0.0.0.0
HostKey $T/ssh_host_key
AuthorizedKeysFile $T/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile $T/sshd.pid
StrictModes no
CFG
cp "$T/alice_ssh.pub" "$T/authorized_keys"
ip netns exec $G /usr/sbin/sshd -f "$T/sshd_config" -E "$T/sshd.log"
cat > "$T/green.toml" <<CFG
[daemon]
knock_port = 62201
keys = ["$T/green.key"]
replay_db = "$T/replay.redb"
control_socket = "$T/control.sock"
user = "nobody"
[trust]
anchors = ["$T/ca/ca.pem"]
[firewall]
mode = "blackhole"
[[services]]
name = "ssh"
proto = "tcp"
port = 22
[[rules]]
identity = "email:alice@example.org"
services = ["ssh"]
[ips]
block = 30
CFG
"$BIN/spa-server" check-config --config "$T/green.toml" | sed 's/^/   /'
ip netns exec $G "$BIN/spa-server" run --config "$T/green.toml" 2>"$T/green.log" &
for _ in $(seq 50); do grep -q ready "$T/green.log" && break; sleep 0.1; done
say "spa-server is running (log: $T/green.log)"

cat > "$T/client.toml" <<CFG
[profiles.demo]
server = "$GREEN_C"
server_key = "$(cat "$T/green.pub")"
key = "$T/alice.key"
certificate = "$T/alice.crt"
services = ["ssh"]
lifetime = 30
CFG
export XDG_STATE_HOME="$T/state"

scan() { # namespace, target, ports
    ip netns exec "$1" nmap -Pn -sS -T5 --max-retries 1 -p "$3" "$2" 2>/dev/null |
        grep -E "^[0-9]+/|Not shown|All .* ports" | sed 's/^/   /'
}

bold "1. before any knock: the client probes a few ports, the attacker scans 1-1024"
scan $C $GREEN_C 22,80,443,62201
scan $A $GREEN_A 1-1024,62201
say "(filtered = no answer at all: no open port, no 'closed' port, nothing sent back)"
say "green saw the attacker's scan and blocked its address (intrusion prevention):"
"$BIN/spa-server" status --socket "$T/control.sock" | grep -E "blocked " | sed 's/^/   /' || true

bold "2. alice knocks: one signed, sealed UDP datagram; --wait probes until port 22 opens"
ip netns exec $C "$BIN/spa-client" --config "$T/client.toml" send --wait 22 open ssh | sed 's/^/   /'

bold "3. alice uses ssh; the attacker still finds nothing"
ip netns exec $C ssh -i "$T/alice_ssh" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o LogLevel=ERROR -o ConnectTimeout=5 root@$GREEN_C 'echo "   hello from $(hostname) over ssh: $(uname -sr)"'
scan $A $GREEN_A 22,62201

bold "4. green's status: the opening and every decision counted"
"$BIN/spa-server" status --socket "$T/control.sock" | sed 's/^/   /'

bold "5. an attacker who captured a knock replays it: refused, silently"
ip netns exec $C "$BIN/spa-client" --config "$T/client.toml" --json send --dry-run request ssh > "$T/knock.json"
send_udp() { # namespace, destination, hex file
    ip netns exec "$1" python3 -c 'import json,socket,sys; d=bytes.fromhex(json.load(open(sys.argv[2]))["datagram"]); socket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto(d,(sys.argv[1],62201))' "$2" "$3"
}
send_udp $C $GREEN_C "$T/knock.json"; sleep 0.3
say "alice's knock went out once (accepted); the attacker captured it and sends it again:"
send_udp $A $GREEN_A "$T/knock.json"; sleep 0.3
sed 's/\x1b\[[0-9;]*m//g' "$T/green.log" | grep refused | tail -1 | sed 's/^/   green: /'

bold "6. alice closes the session"
ip netns exec $C "$BIN/spa-client" --config "$T/client.toml" send close | sed 's/^/   /'
sleep 0.5
scan $C $GREEN_C 22,80,443,62201
"$BIN/spa-server" status --socket "$T/control.sock" | sed 's/^/   /'

bold "decisions in green's log"
sed 's/\x1b\[[0-9;]*m//g' "$T/green.log" | grep -E "accepted|refused|blocked|ready" | sed 's/^/   /' | tail -12

bold "done: tearing the test bed down"
