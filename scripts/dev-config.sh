#!/bin/sh
# Creates a development CONFIG directory: a throwaway root CA, an onboarding
# certificate signed by it and a DHCP network config. No controller-url: a
# development image is unmanaged (outpostd starts no controller client, and a
# trial update commits on health alone). `outpost-controller init` writes the
# CONFIG of a managed device. Used by ./build.sh when no --config is given;
# never for production devices.
set -eu
dir=${1:?usage: dev-config.sh DIR}
mkdir -p "$dir"
# The bootstrap network (rewritten every time: it is not a secret). Every port
# on DHCP, wired first; the MACs are the ones `outpost run` gives QEMU's NICs,
# so the kernel's eth0/eth1/eth2 become eth0/wlan0/wwan0. No probe URL: a port
# is usable with carrier, an address and a route.
cat > "$dir/network.json" <<'JSON'
{
  "ports": {
    "eth0":  { "mode": "dhcp", "cost": 10, "mac": "52:54:00:12:34:56" },
    "wlan0": { "mode": "dhcp", "cost": 20, "mac": "52:54:00:12:34:57" },
    "wwan0": { "mode": "dhcp", "cost": 30, "mac": "52:54:00:12:34:58" }
  }
}
JSON
# Directories made before development images were unmanaged named a controller nobody runs.
rm -f "$dir/controller-url"
[ -f "$dir/onboard.cert.pem" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/ca.key" 2>/dev/null
openssl req -x509 -new -key "$tmp/ca.key" -subj "/CN=Outpost Dev Root CA" -days 3650 -out "$tmp/root-ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/onboard.key.pem" 2>/dev/null
openssl req -new -key "$tmp/onboard.key.pem" -subj "/CN=outpost-onboard" -out "$tmp/onboard.csr" 2>/dev/null
openssl x509 -req -in "$tmp/onboard.csr" -CA "$tmp/root-ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 3650 -out "$tmp/onboard.cert.pem" 2>/dev/null
cp "$tmp/root-ca.pem" "$tmp/onboard.key.pem" "$tmp/onboard.cert.pem" "$dir/"
cp "$tmp/ca.key" "$dir/.dev-ca.key"
chmod 600 "$dir/onboard.key.pem" "$dir/.dev-ca.key"
