#!/bin/sh
# Makes the certificates docker-compose.yml uses: a private CA and a server
# certificate each for PostgreSQL, keyplane and the gate. The compose service
# `certs` runs it (as root, in alpine) before anything else starts; it can also
# run on a host with openssl:
#
#   CERTS_DIR=./certs CA_DIR=./ca sh deploy/compose/make-certs.sh
#
# Idempotent: the CA is made once; a certificate is made again only when it is
# missing, not signed by the CA, within CERT_RENEW_DAYS (30) of its end, or for
# other names than asked. Restart a service to load its new certificate.
#
#   $CA_DIR/ca.pem, ca-key.pem       the CA (its key stays here, root only)
#   $CERTS_DIR/ca.pem                the CA certificate, for everyone (0644)
#   $CERTS_DIR/NAME/cert.pem         NAME's certificate (0644)
#   $CERTS_DIR/NAME/key.pem          its key (0600, owned by NAME's uid)
#
# NAME, owner and names in the certificate (override the names to add yours,
# e.g. KEYPLANE_SANS="DNS:keyplane,DNS:localhost,IP:127.0.0.1,DNS:keys.example.org"):
#   postgres   uid 999 (the postgres:17 image)   $POSTGRES_SANS
#   keyplane   uid 10001 (the keyplane image)    $KEYPLANE_SANS
#   gate       uid 10002 (the gate's user)       $GATE_SANS
set -eu

CERTS_DIR=${CERTS_DIR:-/certs}
CA_DIR=${CA_DIR:-/ca}
CERT_DAYS=${CERT_DAYS:-397}
CERT_RENEW_DAYS=${CERT_RENEW_DAYS:-30}
POSTGRES_SANS=${POSTGRES_SANS:-DNS:postgres,DNS:haproxy,DNS:pg-1,DNS:pg-2,DNS:localhost}
KEYPLANE_SANS=${KEYPLANE_SANS:-DNS:keyplane,DNS:keyplane-1,DNS:keyplane-2,DNS:keyplane-3,DNS:localhost,IP:127.0.0.1}
GATE_SANS=${GATE_SANS:-DNS:gate,DNS:localhost,IP:127.0.0.1}

if ! command -v openssl >/dev/null 2>&1; then
  command -v apk >/dev/null 2>&1 || { echo "make-certs: openssl is missing" >&2; exit 1; }
  apk add --no-cache --quiet openssl
fi

umask 077
mkdir -p "$CA_DIR" "$CERTS_DIR"
chmod 0700 "$CA_DIR"
chmod 0755 "$CERTS_DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat >"$work/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF

if [ ! -s "$CA_DIR/ca.pem" ] || [ ! -s "$CA_DIR/ca-key.pem" ]; then
  openssl req -x509 -new -config "$work/openssl.cnf" -extensions ca \
    -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 3650 \
    -subj "/CN=keyplane compose CA" \
    -keyout "$CA_DIR/ca-key.pem" -out "$CA_DIR/ca.pem" 2>/dev/null
  echo "make-certs: made a new CA"
fi
chmod 0600 "$CA_DIR/ca-key.pem"
cp "$CA_DIR/ca.pem" "$CERTS_DIR/ca.pem"
chmod 0644 "$CERTS_DIR/ca.pem"

# current DIR SANS: succeeds when DIR holds a good certificate for SANS.
current() {
  [ -s "$1/cert.pem" ] && [ -s "$1/key.pem" ] || return 1
  [ "$(cat "$1/sans" 2>/dev/null)" = "$2" ] || return 1
  openssl verify -CAfile "$CA_DIR/ca.pem" "$1/cert.pem" >/dev/null 2>&1 || return 1
  openssl x509 -noout -checkend $((CERT_RENEW_DAYS * 86400)) -in "$1/cert.pem" >/dev/null
}

# leaf NAME UID SANS
leaf() {
  dir=$CERTS_DIR/$1
  mkdir -p "$dir"
  if current "$dir" "$3"; then
    echo "make-certs: kept $1 ($3)"
  else
    cat >"$work/$1.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $3
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    openssl req -new -config "$work/openssl.cnf" \
      -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
      -keyout "$work/$1.key" -out "$work/$1.csr" 2>/dev/null
    openssl x509 -req -sha256 -days "$CERT_DAYS" -in "$work/$1.csr" \
      -CA "$CA_DIR/ca.pem" -CAkey "$CA_DIR/ca-key.pem" \
      -set_serial "0x$(openssl rand -hex 16)" -extfile "$work/$1.ext" \
      -out "$work/$1.pem" 2>/dev/null
    mv "$work/$1.key" "$dir/key.pem"
    mv "$work/$1.pem" "$dir/cert.pem"
    printf '%s\n' "$3" >"$dir/sans"
    echo "make-certs: made $1 ($3)"
  fi
  chown -R "$2:$2" "$dir"
  chmod 0700 "$dir"
  chmod 0600 "$dir/key.pem"
  chmod 0644 "$dir/cert.pem" "$dir/sans"
}

leaf postgres 999 "$POSTGRES_SANS"
leaf keyplane 10001 "$KEYPLANE_SANS"
leaf gate 10002 "$GATE_SANS"
