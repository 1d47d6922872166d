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
