#!/usr/bin/env bash
# The local stack's control plane (compose.yaml's `control` service): gives each pod a spec
# (a firewall that admits ping from the overlay, a userspace WireGuard device whose key the
# agent generates and keeps), reads each pod's public key from its status, then gives each
# pod the next generation naming the other as its peer. Every spec is signed
# (WEFT_SIGN_KEY) and applied with `weftctl apply --wait`: a reply other than Applied stops
# the script. Then it stays up and prints the pods' statuses as they come.
#
# Pods: WEFT_PODS="pod-a=198.51.100.10=10.9.0.1 pod-b=198.51.100.11=10.9.0.2"
# (id = LAN address = overlay address).
set -euo pipefail
overlay=10.9.0.0/24
dir=$(mktemp -d)
# Generations grow across runs of the stack (the pods keep theirs in their state volumes).
gen=$(date +%s)

spec() { # pod overlay-address generation peers-json
  jq -n --arg pod "$1" --arg addr "$2/24" --argjson gen "$3" --argjson peers "$4" --arg net "$overlay" '{
    PodId: $pod, Generation: $gen,
    Firewall: { Ingress: [ { Protocol: "icmp", Sources: [$net], Comment: "ping over the overlay" } ] },
    WireGuard: { Interface: "wg0", Address: $addr, ListenPort: 51820, PrivateKey: null, Peers: $peers }
  }' >"$dir/$1.json"
  weftctl apply --wait --timeout 30s -f "$dir/$1.json"
}

declare -A lan wg key
for p in $WEFT_PODS; do
  IFS== read -r id l o <<<"$p"
  lan[$id]=$l wg[$id]=$o
done

for id in "${!lan[@]}"; do
  spec "$id" "${wg[$id]}" "$gen" '[]'
  key[$id]=$(weftctl status -o json "$id" | jq -r '.[0].Status.WireGuard.PublicKey')
done
for id in "${!lan[@]}"; do
  peers='[]'
  for other in "${!lan[@]}"; do
    [[ $other == "$id" ]] && continue
    peers=$(jq -c --arg k "${key[$other]}" --arg e "${lan[$other]}:51820" --arg a "${wg[$other]}/32" \
      '. + [{PublicKey: $k, Endpoint: $e, AllowedIps: [$a], PersistentKeepaliveSeconds: 5}]' <<<"$peers")
  done
  spec "$id" "${wg[$id]}" $((gen + 1)) "$peers"
done
echo "$((gen + 1))" >/tmp/applied
exec weftctl watch -o json
