#!/bin/sh
# Creates a development CONFIG directory: a throwaway root CA, an onboarding
# certificate signed by it, the controller URL and a DHCP network config.
# Used by ./build.sh when no --config is given; never for production devices.
set -eu
dir=${1:?usage: dev-config.sh DIR}
[ -f "$dir/onboard.cert.pem" ] && exit 0
mkdir -p "$dir"
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
echo "https://10.0.2.2:8443" > "$dir/controller-url"
cat > "$dir/network.json" <<'JSON'
{
  "version": 1,
  "ports": [
    { "name": "eth0", "mode": "dhcp", "cost": 0 },
    { "name": "wlan0", "mode": "dhcp", "cost": 10 },
    { "name": "wwan0", "mode": "dhcp", "cost": 20 }
  ]
}
JSON
chmod 600 "$dir/onboard.key.pem" "$dir/.dev-ca.key"
