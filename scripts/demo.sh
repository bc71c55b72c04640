#!/usr/bin/env bash
# The main job on one machine: a 3-host lab, each host joined with one `shoal up`, a container
# on every host, `shoal status`, and container-to-container pings across hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
shoal=.venv/bin/shoal
lab="demo"
hosts=3

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "lab: $hosts hosts (a network namespace + dockerd each) and a shoal server"
$shoal lab down --name "$lab" >/dev/null 2>&1 || true
$shoal lab up --name "$lab" --hosts "$hosts"
info=$($shoal lab status --name "$lab" --json)
field() { .venv/bin/python -c "import json,sys; d=json.load(sys.stdin); print($1)" <<<"$info"; }
server=$(field 'd["server"]["url"]')
token=$(field 'd["token"]')

for i in $(seq 1 "$hosts"); do
  h="h$i"
  step "$h: shoal up"
  addr=$(field "[h for h in d['hosts'] if h['name']=='$h'][0]['underlay_ip']")
  state=$(field "[h for h in d['hosts'] if h['name']=='$h'][0]['state_dir']")
  start=$(date +%s%N)
  $shoal lab exec --name "$lab" "$h" -- "$PWD/$shoal" up --server "$server" --token "$token" \
      --name "$h" --advertise-addr "$addr" --state-dir "$state"
  echo "   (joined in $(( ($(date +%s%N) - start) / 1000000 )) ms)"
done

step "a container on every host, on the 'shoal' network"
for i in $(seq 1 "$hosts"); do
  $shoal lab exec --name "$lab" "h$i" -- docker run -d --name "web$i" --network shoal \
      shoal-lab/busybox:latest sleep infinity >/dev/null
  ip=$($shoal lab exec --name "$lab" "h$i" -- docker inspect -f \
      '{{(index .NetworkSettings.Networks "shoal").IPAddress}}' "web$i")
  echo "   h$i: web$i at $ip"
  eval "ip_$i=$ip"
done

step "shoal status on h1"
state1=$(field "[h for h in d['hosts'] if h['name']=='h1'][0]['state_dir']")
$shoal lab exec --name "$lab" h1 -- "$PWD/$shoal" status --state-dir "$state1"

step "cross-host pings, container to container (no NAT: source IPs are real)"
$shoal lab exec --name "$lab" h1 -- docker exec web1 ping -c 3 "$ip_2"
$shoal lab exec --name "$lab" h1 -- docker exec web1 ping -c 3 "$ip_3"
$shoal lab exec --name "$lab" h1 -- "$PWD/$shoal" ping --state-dir "$state1" h3

step "names across hosts: web1 (on h1) pings web3 (on h3) by name"
wait_for_name() {
  for _ in $(seq 50); do
    $shoal lab exec --name "$lab" h1 -- docker exec web1 nslookup -type=a "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
}
wait_for_name web3
$shoal lab exec --name "$lab" h1 -- docker exec web1 ping -c 2 web3
$shoal lab exec --name "$lab" h1 -- docker exec web1 ping -c 1 h2.shoal

step "the service catalog as h1 sees it"
$shoal lab exec --name "$lab" h1 -- "$PWD/$shoal" services --state-dir "$state1"

step "done. Try: $shoal lab exec --name $lab h2 -- docker exec web2 ping $ip_1"
echo "   Remove everything with: $shoal lab down --name $lab"
