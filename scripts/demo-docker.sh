#!/usr/bin/env bash
# The seed example with real Docker containers: dockerd runs inside this
# sandbox (its own data root, its default firewall on), run it through
# scripts/sandbox (make demo-docker does). Stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
netapply=.venv/bin/netapply
spec=examples/docker/seed.yaml
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
root=$(mktemp -d /tmp/netapply-demo-docker.XXXXXX)
export DOCKER_HOST=unix://$root/docker.sock DOCKER_CONFIG=$root/cli
dockerd --data-root "$root/data" --exec-root "$root/exec" --pidfile "$root/dockerd.pid" \
  --host "$DOCKER_HOST" --bridge none --storage-driver vfs --userland-proxy=false \
  >"$root/dockerd.log" 2>&1 &
dockerd_pid=$!
cleanup() {
  ids=$(docker ps -aq 2>/dev/null || true)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null || true
  rm -rf "$root"
}
trap cleanup EXIT
for _ in $(seq 300); do docker version >/dev/null 2>&1 && break; sleep 0.1; done
# An image from Debian's busybox-static: no registry needed.
mkdir -p "$root/image/bin"
cp /bin/busybox "$root/image/bin/"
for applet in sh ping sleep cat ip; do ln -s busybox "$root/image/bin/$applet"; done
printf 'FROM scratch\nCOPY . /\nCMD ["sleep", "3600"]\n' >"$root/image/Dockerfile"
docker build -q -t netapply-busybox "$root/image" >/dev/null

step docker run -d --name container1 --network none netapply-busybox
docker run -d --name container1 --network none netapply-busybox
step docker run -d --name container2 --network none netapply-busybox
docker run -d --name container2 --network none netapply-busybox
step iptables -S FORWARD "  # dockerd's default firewall drops forwarded traffic"
iptables -S FORWARD
step netapply apply --auto-approve $spec
$netapply apply --auto-approve $spec
step docker exec container1 ping -c 1 container2
docker exec container1 ping -c 1 -W 2 container2
step docker exec container2 cat /etc/hosts
docker exec container2 cat /etc/hosts
step iptables -S DOCKER-USER
iptables -S DOCKER-USER
step netapply show $spec
$netapply show $spec
step docker restart container2 "  # a new namespace: apply attaches it again"
docker restart -t 0 container2
$netapply plan $spec
$netapply apply --auto-approve $spec >/dev/null
docker exec container1 ping -c 1 -W 2 container2
step netapply destroy --auto-approve $spec
$netapply destroy --auto-approve $spec
step docker exec container1 ip link "  # the container keeps running, with its loopback only"
docker exec container1 ip link
