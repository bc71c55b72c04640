#!/bin/sh
# Create the cluster from the catalog: one master per host, each master's replica on the next
# host, so losing any one host leaves a copy of every slot.
# Usage: ./create-cluster.sh [PROJECT]   (on any host of the mesh, as root; needs jq)
set -eu
project=${1:-rc}
catalog=$(shoal services --json ${SHOAL_STATE_DIR:+--state-dir "$SHOAL_STATE_DIR"})
# "host ip" per node, sorted by host: two lines per host.
nodes=$(echo "$catalog" | jq -r --arg name "node.$project" \
  '.[] | select(.name == $name) | .instances[] | "\(.node) \(.ip)"' | sort)
hosts=$(echo "$nodes" | cut -d' ' -f1 | uniq)
set -- $hosts
[ $# -ge 3 ] || { echo "need nodes on 3 hosts or more, found: $hosts" >&2; exit 1; }
first() { echo "$nodes" | awk -v h="$1" '$1 == h { print $2; exit }'; }
second() { echo "$nodes" | awk -v h="$1" '$1 == h { n++ } $1 == h && n == 2 { print $2 }'; }
masters="" replicas=""
for h in $hosts; do masters="$masters $(first "$h"):6379"; done
# redis-cli gives the i-th master the i-th replica listed: the second node of the next host.
shift; for h in "$@" "$(echo $hosts | cut -d' ' -f1)"; do replicas="$replicas $(second "$h"):6379"; done
container=$(docker ps -q --filter "label=com.docker.compose.project=$project" | head -1)
# shellcheck disable=SC2086
docker exec "$container" redis-cli --cluster create $masters $replicas \
  --cluster-replicas 1 --cluster-yes
