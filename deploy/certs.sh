#!/usr/bin/env bash
# Make what a TLS + node-authenticated fedlocal deployment needs, in OUT_DIR (default: certs):
#   ca.crt, ca.key           a private certificate authority (give ca.crt to every device)
#   server.pem, server.key   the SuperLink's TLS certificate, signed by the CA
#   supernode-<i>, .pub      an EC P-384 key pair per SuperNode, OpenSSH format; the SuperLink
#                            operator registers each .pub (flwr supernode register), the device
#                            keeps the private key
# Usage: deploy/certs.sh [OUT_DIR] [NUM_NODES] [HOSTNAME_OR_IP ...]
# The server certificate is valid for localhost, 127.0.0.1, ::1, the compose service name
# "superlink", and every extra HOSTNAME_OR_IP given (the address devices dial).
# Existing files are kept; delete OUT_DIR to start over.
set -euo pipefail
out=${1:-certs}
nodes=${2:-2}
shift $(( $# > 2 ? 2 : $# ))
for tool in openssl ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "certs.sh: '$tool' is not installed (apt-get install -y openssl openssh-client)" >&2; exit 1; }
done
[[ "$nodes" =~ ^[0-9]+$ ]] || { echo "certs.sh: NUM_NODES must be a number, got '$nodes'" >&2; exit 1; }
mkdir -p "$out"
cd "$out"
san="DNS:localhost,DNS:superlink,IP:127.0.0.1,IP:::1"
for name in "$@"; do
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then san="$san,IP:$name"; else san="$san,DNS:$name"; fi
done
if [[ ! -f ca.crt ]]; then
  openssl req -x509 -newkey rsa:4096 -sha256 -days 3650 -nodes -keyout ca.key -out ca.crt \
    -subj "/CN=fedlocal CA" 2>/dev/null
fi
if [[ ! -f server.pem ]]; then
  openssl req -newkey rsa:4096 -sha256 -nodes -keyout server.key -out server.csr \
    -subj "/CN=superlink" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$san" > server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -sha256 \
    -extfile server.ext -out server.pem 2>/dev/null
  rm -f server.csr server.ext ca.srl
fi
for ((i = 0; i < nodes; i++)); do
  [[ -f supernode-$i ]] || ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedlocal-supernode-$i" -f "supernode-$i"
done
chmod 600 ./*.key supernode-* 2>/dev/null || true
chmod 644 ./*.crt ./*.pem ./*.pub 2>/dev/null || true
keys=""
((nodes > 0)) && keys=" supernode-{0..$((nodes - 1))}{,.pub}"
echo "certs.sh: wrote $(pwd): ca.crt server.pem server.key$keys"
