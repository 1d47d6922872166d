#!/usr/bin/env bash
# A fleet on etcd, end to end, inside one sandbox (make demo-fleet runs it
# through scripts/sandbox): a 3-member etcd on loopback, three lab machines
# (scripts/lab) each running `netapply watch --source etcd://...`, a spec
# pushed from "a pipeline", pings across machines, a move, a machine whose
# watch is killed and dropped by the others, brought back, and everything
# stopped by PID. docs/fleet.md explains each step.
set -euo pipefail
cd "$(dirname "$0")/.."
export LAB_DIR=${LAB_DIR:-$(mktemp -d /tmp/netapply-lab.XXXXXX)}
lab=scripts/lab
# NETAPPLY: how to run netapply (default: the checkout's venv).
read -r -a netapply <<< "${NETAPPLY:-$PWD/.venv/bin/netapply}"
work=$(mktemp -d /tmp/netapply-fleet.XXXXXX)
spec=$work/fleet.yaml
ports=(23790 23792 23794)   # client ports; each peer port is the next one
store=192.0.2.1             # the sandbox's end of the lab's underlay
pids=()

stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  $lab down
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap stop_all EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
endpoints() { local h=$1; echo "$h:${ports[0]},$h:${ports[1]},$h:${ports[2]}"; }
url="etcd://$(endpoints 127.0.0.1)/netapply/demo"        # for the pipeline
machine_url="etcd://$(endpoints $store)/netapply/demo"   # for the machines
declare -A watch_pid

start_watch() {
  local m=$1
  $lab run "$m" "${netapply[@]}" watch --source "$machine_url" --host "$m" --ttl 3 \
    --debounce 0.1 --log-format text 2>>"$work/watch-$m.log" &
  watch_pid[$m]=$!
  pids+=("$!")
  echo "(watch on $m: PID $!, log $work/watch-$m.log)"
}

# Until every machine's plan from etcd is empty (each watch has converged).
converged() {
  local m
  for _ in $(seq 100); do
    for m in node-a node-b node-c; do
      $lab run "$m" "${netapply[@]}" plan --source "$machine_url" --host "$m" \
        --detailed-exitcode >/dev/null 2>&1 || continue 2
    done
    echo "(every machine has converged)"
    return 0
  done
  echo "the machines did not converge" >&2
  exit 1
}

cat > "$spec" <<'EOF'
version: 1
project: demo
# No hosts: the machines that register in etcd are the hosts.
networks:
  app: {driver: overlay, vni: 300, subnet: 10.210.0.0/24}
containers:
  web: {host: node-a, networks: [app]}
  db: {host: node-b, networks: {app: {aliases: [database]}}}
  cache: {host: node-c, networks: [app]}
EOF

step "scripts/lab up node-a 192.0.2.11/24  # and node-b .12, node-c .13"
$lab up node-a 192.0.2.11/24
$lab up node-b 192.0.2.12/24
$lab up node-c 192.0.2.13/24
ip addr add "$store/24" dev lab0

step "etcd --name m0 ... m2  # three members on 127.0.0.1 and $store"
cluster=""
for i in 0 1 2; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((ports[i] + 1))"; done
for i in 0 1 2; do
  clients="http://127.0.0.1:${ports[i]},http://$store:${ports[i]}"
  etcd --name "m$i" --data-dir "$work/m$i" --listen-client-urls "$clients" \
    --advertise-client-urls "$clients" --listen-peer-urls "http://127.0.0.1:$((ports[i] + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ports[i] + 1))" \
    --initial-cluster "$cluster" --initial-cluster-token netapply-demo \
    --initial-cluster-state new --log-level warn >"$work/etcd-m$i.log" 2>&1 &
  pids+=("$!")
  echo "(member m$i: PID $!)"
done

step "cat fleet.yaml"
cat "$spec"
step "netapply push fleet.yaml $url  # from a pipeline"
for _ in $(seq 50); do  # the members need a moment to elect a leader
  revision=$("${netapply[@]}" push "$spec" "$url" 2>"$work/push.err") && break
  sleep 0.2
done
[ -n "${revision:-}" ] || { cat "$work/push.err" >&2; exit 1; }
echo "revision $revision"

step "scripts/lab run node-X netapply watch --source $machine_url --host node-X --ttl 3"
for m in node-a node-b node-c; do start_watch "$m"; done
converged
step "scripts/lab run node-a ip netns exec web ping -c 1 database  # node-a -> node-b"
$lab run node-a ip netns exec web ping -c 1 -W 2 database
db_ip=$($lab run node-b ip -4 -o -n db addr show dev eth0 | awk '{print $4}')
echo "(db has $db_ip, allocated in etcd: sticky)"

step "sed -i 's/host: node-b/host: node-c/' fleet.yaml; netapply push  # move db"
sed -i 's/host: node-b/host: node-c/' "$spec"
"${netapply[@]}" push "$spec" "$url" 2>/dev/null
converged
step "scripts/lab run node-a ip netns exec web ping -c 1 db  # now node-a -> node-c"
$lab run node-a ip netns exec web ping -c 1 -W 2 db
echo "(db keeps $($lab run node-c ip -4 -o -n db addr show dev eth0 | awk '{print $4}'))"

step "scripts/lab run node-a bridge fdb show | grep dst  # node-a's forwarding entries"
$lab run node-a bridge fdb show | grep dst
step "kill -KILL ${watch_pid[node-c]}  # node-c's watch dies; its lease (3 s) expires"
kill -KILL "${watch_pid[node-c]}"
for _ in $(seq 100); do
  [[ $($lab run node-a bridge fdb show) == *"dst 192.0.2.13"* ]] || break
  sleep 0.1
done
step "scripts/lab run node-a bridge fdb show | grep dst  # nothing leads to node-c now"
$lab run node-a bridge fdb show | grep dst || true
grep -E "[0-9] hosts |[0-9] container 'db'" "$work/watch-node-a.log" | tail -n 2
step "scripts/lab run node-a ip netns exec web ping -c 1 -W 1 db  # db is on node-c"
if $lab run node-a ip netns exec web ping -c 1 -W 1 db; then
  echo "web still reached db: node-c was not dropped" >&2
  exit 1
fi
echo "(no answer: node-a dropped node-c; db is reported, not moved)"

step "scripts/lab run node-c netapply watch ...  # node-c comes back"
start_watch node-c
converged
step "scripts/lab run node-a ip netns exec web ping -c 1 db"
back=""
for _ in $(seq 20); do
  if $lab run node-a ip netns exec web ping -c 1 -W 1 db; then back=1; break; fi
done
[ -n "$back" ] || { echo "web does not reach db after node-c came back" >&2; exit 1; }

step "kill -TERM <watches>; kill <etcd members>  # each by its PID"
for m in node-a node-b node-c; do kill -TERM "${watch_pid[$m]}"; done
for m in node-a node-b node-c; do wait "${watch_pid[$m]}" || true; done
echo "(watches stopped: each revoked its lease on the way out; the containers stay)"
# The etcd members (by PID) and the lab machines (with their namespaces) go in stop_all.
