#!/usr/bin/env bash
# The seed example end to end; run it through scripts/sandbox (make demo does).
set -euo pipefail
cd "$(dirname "$0")/.."
netapply=.venv/bin/netapply
spec=examples/seed.yaml
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step netapply validate $spec
$netapply validate $spec
step netapply plan $spec
$netapply plan $spec
step netapply apply --auto-approve $spec
$netapply apply --auto-approve $spec
step ip netns exec container1 ping -c 1 container2
ip netns exec container1 ping -c 1 -W 2 container2
step netapply plan --detailed-exitcode $spec
$netapply plan --detailed-exitcode $spec
step netapply show $spec
$netapply show $spec
step netapply destroy --auto-approve $spec
$netapply destroy --auto-approve $spec
step ip netns list
ip netns list
echo "(empty: nothing left behind)"

# Docker's semantics: a published port, reached from the host itself.
shop=examples/shop.yaml
step netapply apply --auto-approve $shop
$netapply apply --auto-approve $shop
step nft list table inet netapply-shop
nft list table inet netapply-shop
ip netns exec proxy .venv/bin/python -m http.server 80 --bind 0.0.0.0 >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  ip netns exec proxy .venv/bin/python -c 'import socket; socket.create_connection(("127.0.0.1", 80), 1)' 2>/dev/null && break
  sleep 0.1
done
step "curl http://127.0.0.1:8080/  # published by container proxy"
.venv/bin/python -c 'import urllib.request; r = urllib.request.urlopen("http://127.0.0.1:8080/", timeout=5); print(r.status, r.reason, "from the server in netns proxy")'
kill $server
step netapply destroy --auto-approve $shop
$netapply destroy --auto-approve $shop
