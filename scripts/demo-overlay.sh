#!/usr/bin/env bash
# examples/overlay end to end on three machines made by scripts/lab; run it
# through scripts/sandbox (make demo-overlay does). The steps are the ones
# examples/overlay/README.md explains.
set -euo pipefail
cd "$(dirname "$0")/.."
export LAB_DIR=${LAB_DIR:-$(mktemp -d /tmp/netapply-lab.XXXXXX)}
lab=scripts/lab
netapply=$PWD/.venv/bin/netapply
work=$(mktemp -d /tmp/netapply-overlay.XXXXXX)
spec=$work/mesh.yaml
cp examples/overlay/mesh.yaml "$spec"
trap '$lab down; rm -rf "$work"' EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
machines="node-a node-b node-c"
# netapply COMMAND on every machine, each applying its own share.
everywhere() {
  local m
  for m in $machines; do
    step "scripts/lab run $m netapply $* mesh.yaml"
    $lab run "$m" "$netapply" "$@" "$spec"
  done
}

step "scripts/lab up node-a 192.0.2.11/24  # and node-b .12, node-c .13"
$lab up node-a 192.0.2.11/24
$lab up node-b 192.0.2.12/24
$lab up node-c 192.0.2.13/24
step netapply validate mesh.yaml
$netapply validate "$spec"
step "scripts/lab run node-a netapply plan mesh.yaml"
$lab run node-a "$netapply" plan "$spec"
everywhere apply --auto-approve
step "scripts/lab run node-a ip netns exec web ping -c 1 db  # node-a -> node-b over VXLAN"
$lab run node-a ip netns exec web ping -c 1 -W 2 db
step "scripts/lab run node-b ip netns exec db ping -c 1 web"
$lab run node-b ip netns exec db ping -c 1 -W 2 web
db_ip=$($lab run node-a ip netns exec web getent hosts db | cut -d' ' -f1)
step "scripts/lab run node-a ip netns exec agent ping -c 1 -W 1 $db_ip  # db, from overlay ops"
if $lab run node-a ip netns exec agent ping -c 1 -W 1 "$db_ip"; then
  echo "agent reached db: the overlays are not isolated" >&2
  exit 1
fi
echo "(no answer: agent is on overlay ops, db on app)"
step "scripts/lab run node-c ip netns exec monitor ping -c 1 agent"
$lab run node-c ip netns exec monitor ping -c 1 -W 2 agent

step "sed -i 's/host: node-b/host: node-c/' mesh.yaml  # move db to node-c"
sed -i 's/host: node-b/host: node-c/' "$spec"
everywhere apply --auto-approve
step "scripts/lab run node-a ip netns exec web ping -c 1 db  # now node-a -> node-c"
$lab run node-a ip netns exec web ping -c 1 -W 2 db
step "scripts/lab run node-a bridge fdb show | grep dst  # node-a's forwarding entries"
$lab run node-a bridge fdb show | grep dst
everywhere plan --detailed-exitcode
everywhere destroy --auto-approve
