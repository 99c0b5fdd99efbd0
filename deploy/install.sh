#!/usr/bin/env bash
# Install storegate on a store box: Debian 12 or Raspberry Pi OS (bookworm), amd64 or
# arm64. Run as root from a checkout (or an unpacked release) of storegate:
#
#   sudo deploy/install.sh --store store-0042            first install (or again: idempotent)
#   sudo deploy/install.sh --store store-0042 --upgrade  new release; outbox and identities kept
#   sudo deploy/install.sh --uninstall [--purge]         remove; data kept unless --purge
#
# What it does (deploy/README.md says why, step by step):
#   1. Debian packages: python3, python3-venv, mosquitto, mosquitto-clients, openssl
#   2. a `storegate` system user (groups dialout and bluetooth, when they exist)
#   3. storegate as a wheel (--wheel FILE, or built from this checkout) in its own
#      virtualenv, /opt/storegate/venv, without test tools; `storegate` on PATH
#   4. firmware-configs/<store> and firmware-configs/pos to /etc/storegate/firmware-configs;
#      /etc/storegate/store.toml from --config FILE, else the example (never overwritten)
#   5. TLS: a store CA, the broker's certificate for the nodes, the HTTP certificate
#   6. `storegate firmware render`: broker logins (password files), node files, the
#      gateway's login (/etc/storegate/secrets.env); secrets made once and kept
#   7. the mosquitto drop-in for Debian's stock mosquitto.conf, with the store's ACLs
#   8. systemd: storegate.service (Type=notify, watchdog), a daily backup timer, journald
#      limits; enabled, and (re)started when systemd runs this box
set -euo pipefail

PREFIX=/opt/storegate
VENV=$PREFIX/venv
ETC=/etc/storegate
STATE=/var/lib/storegate
BACKUPS=/var/backups/storegate
UNIT_DIR=/etc/systemd/system
MOSQ=/etc/mosquitto
SRC=$(cd "$(dirname "$0")/.." && pwd)

STORE=""
WHEEL=""
CONFIG=""
MODE=install
PURGE=0
START=1

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --store ID  --wheel FILE  --config FILE  --upgrade  --uninstall"
    echo "         --purge (with --uninstall)  --no-start (install, do not start)"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --store) STORE=${2:?--store needs a store id}; shift 2 ;;
        --wheel) WHEEL=${2:?--wheel needs a file}; shift 2 ;;
        --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
        --upgrade) MODE=upgrade; shift ;;
        --uninstall) MODE=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        --no-start) START=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# valid_id, san_for, cert_fits, bridge_per_gateway, stop_timeout_s, render_listeners
# shellcheck source=/dev/null
. "$SRC/deploy/install-lib.sh"
# The store id names paths (/etc/storegate/firmware-configs/<store>, certificates) and is
# put into sed expressions: storegate's id rule before anything uses it.
if [ -n "$STORE" ] && ! valid_id "$STORE"; then
    printf 'install.sh: --store %q: a store id is 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit\n' \
        "$STORE" >&2
    exit 2
fi

# One install at a time: two runs would make the CA and the secrets at once, and move
# each other's firmware-configs copies into place.
LOCK=${STOREGATE_INSTALL_LOCK:-/run/lock/storegate-install.lock}
mkdir -p "$(dirname "$LOCK")" 2>/dev/null || true
exec 9>>"$LOCK" || die "cannot open the lock file $LOCK"
flock -n 9 || die "another install.sh is running (it holds $LOCK): wait for it to finish"

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...)"
# systemd runs this box (not a chroot, not a container build): units can be started
systemd_running() { [ -d /run/systemd/system ]; }

# --- uninstall --------------------------------------------------------------------------
if [ "$MODE" = uninstall ]; then
    if systemd_running; then
        systemctl disable --now storegate.service storegate-backup.timer 2>/dev/null || true
    else
        systemctl disable storegate.service storegate-backup.timer 2>/dev/null || true
    fi
    rm -f "$UNIT_DIR/storegate.service" "$UNIT_DIR/storegate-backup.service" \
        "$UNIT_DIR/storegate.service.d/stop-timeout.conf" \
        "$UNIT_DIR/storegate-backup.timer" /etc/systemd/journald.conf.d/storegate.conf \
        "$MOSQ/conf.d/storegate.conf" "$MOSQ/storegate.acl" "$MOSQ/scanners.acl" \
        "$MOSQ/storegate.passwd" "$MOSQ/scanners.passwd" \
        "$MOSQ/certs/store-broker.pem" "$MOSQ/certs/store-broker.key" \
        /usr/local/bin/storegate
    rmdir "$UNIT_DIR/storegate.service.d" 2>/dev/null || true
    rm -rf "$PREFIX"
    if systemd_running; then
        systemctl daemon-reload
        systemctl try-restart mosquitto.service || true  # without the drop-in
    fi
    if [ "$PURGE" -eq 1 ]; then
        # what central handed over for the bridge, and the broker's store (it holds the
        # bridge's queue and retained statuses of this store)
        if [ -z "$STORE" ] && [ -f "$ETC/store.toml" ]; then
            STORE=$(sed -n 's/^store_id *= *"\([^"]*\)".*/\1/p' "$ETC/store.toml" | head -n1)
            valid_id "$STORE" || STORE=""
        fi
        rm -f "$MOSQ/certs/central-ca.pem"
        if systemd_running; then systemctl stop mosquitto.service || true; fi
        rm -f /var/lib/mosquitto/mosquitto.db  # saved again at a stop: removed stopped
        if systemd_running; then systemctl start mosquitto.service || true; fi
        if [ -n "$STORE" ]; then
            rm -f "$MOSQ/certs/$STORE.pem" "$MOSQ/certs/$STORE.key"
        fi
        rm -rf "$ETC" "$STATE" "$BACKUPS" /run/storegate
        if id storegate >/dev/null 2>&1; then userdel storegate; fi
        say "removed storegate, its configuration, secrets and data (--purge)"
    else
        say "removed storegate; kept $ETC (config, secrets, TLS) and $STATE (outbox," \
            "identities): --uninstall --purge removes them too"
    fi
    exit 0
fi

# --- 1. packages ------------------------------------------------------------------------
need=()
for pkg in python3 python3-venv mosquitto mosquitto-clients openssl ca-certificates; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi
python3 - <<'PY' || die "storegate needs Python >= 3.11 (Debian 12 / Raspberry Pi OS bookworm)"
import sys
sys.exit(sys.version_info < (3, 11))
PY

# --- 2. the service user ----------------------------------------------------------------
if ! id storegate >/dev/null 2>&1; then
    adduser --system --group --home "$STATE" --no-create-home --quiet storegate
fi
for group in dialout bluetooth; do
    if getent group "$group" >/dev/null; then usermod -a -G "$group" storegate; fi
done
install -d -m 0700 -o storegate -g storegate "$STATE"
install -d -m 0700 -o storegate -g storegate "$BACKUPS"

# --- 3. storegate itself: a wheel in its own virtualenv ----------------------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -z "$WHEEL" ]; then
    [ -f "$SRC/pyproject.toml" ] || die "no --wheel given and $SRC is not a storegate checkout"
    say "building the wheel from $SRC"
    python3 -m venv "$tmp/build"
    "$tmp/build/bin/pip" install -q --upgrade pip
    # a copy: the build writes egg-info and build/ next to the sources
    mkdir "$tmp/src"
    (cd "$SRC" && tar --exclude=.venv --exclude=.git --exclude='__pycache__' \
        --exclude=build --exclude='*.egg-info' -cf - pyproject.toml README.md src) \
        | tar -C "$tmp/src" -xf -
    "$tmp/build/bin/pip" wheel -q --no-deps --wheel-dir "$tmp/dist" "$tmp/src"
    WHEEL=$(ls "$tmp"/dist/storegate-*.whl)
fi
[ -f "$WHEEL" ] || die "wheel not found: $WHEEL"
if [ ! -x "$VENV/bin/python" ]; then
    install -d -m 0755 "$PREFIX"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi
installed=$("$VENV/bin/pip" show storegate 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$MODE" = upgrade ] || [ -z "$installed" ]; then
    if [ -n "$installed" ] && systemd_running \
            && systemctl is-active --quiet storegate.service; then
        # not under a running gateway: it drains and stops (TimeoutStopSec), the new
        # release goes in, step 8 starts it again
        say "stopping storegate.service for the upgrade (the outbox drains first)"
        systemctl stop storegate.service
    fi
    say "installing $(basename "$WHEEL") into $VENV"
    "$VENV/bin/pip" install -q "$WHEEL"                                   # dependencies
    "$VENV/bin/pip" install -q --force-reinstall --no-deps "$WHEEL"       # this release
else
    say "storegate $installed already in $VENV (--upgrade to replace it)"
fi
ln -sf "$VENV/bin/storegate" /usr/local/bin/storegate
SG=$VENV/bin/storegate

# --- 4. the store's files ----------------------------------------------------------------
install -d -m 0750 -o root -g storegate "$ETC" "$ETC/firmware-configs"
if [ -z "$STORE" ]; then
    if [ -f "$ETC/store.toml" ]; then
        STORE=$("$VENV/bin/python" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["store_id"])' "$ETC/store.toml")
        valid_id "$STORE" || die "$ETC/store.toml: store_id is not a valid id"
    else
        die "--store ID: which folder of firmware-configs/ is this store?"
    fi
fi
[ -d "$SRC/firmware-configs/$STORE" ] || die "no firmware-configs/$STORE in $SRC"
folder_id=$("$VENV/bin/python" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb")).get("store", {}).get("id", ""))' \
    "$SRC/firmware-configs/$STORE/store.toml") || die "firmware-configs/$STORE/store.toml unreadable"
[ "$folder_id" = "$STORE" ] \
    || die "firmware-configs/$STORE/store.toml says [store] id = \"$folder_id\", not $STORE"
for d in "$STORE" pos; do
    rm -rf "$ETC/firmware-configs/$d.new"
    cp -rL "$SRC/firmware-configs/$d" "$ETC/firmware-configs/$d.new"   # -L: templates are links
    rm -rf "$ETC/firmware-configs/$d"
    mv -T "$ETC/firmware-configs/$d.new" "$ETC/firmware-configs/$d"
done
chmod -R u=rwX,g=rX,o= "$ETC/firmware-configs"
chgrp -R storegate "$ETC/firmware-configs"
if [ -n "$CONFIG" ]; then
    install -m 0640 -o root -g storegate "$CONFIG" "$ETC/store.toml"
elif [ ! -f "$ETC/store.toml" ]; then
    sed "s/store-0042/$STORE/g" "$SRC/deploy/storegate.example.toml" > "$tmp/store.toml"
    install -m 0640 -o root -g storegate "$tmp/store.toml" "$ETC/store.toml"
    say "installed the example config as $ETC/store.toml: edit it for this store"
fi
FLEET=$ETC/firmware-configs/$STORE
"$SG" firmware validate "$FLEET" --config "$ETC/store.toml"
fleet_value() {  # fleet_value broker host -> store.toml's [broker] host
    "$VENV/bin/python" -c 'import sys, tomllib
d = tomllib.load(open(sys.argv[1], "rb"))
for k in sys.argv[2:]:
    d = d.get(k, "") if isinstance(d, dict) else ""
print(d)' "$FLEET/store.toml" "$@"
}
config_value() {  # config_value gateway_id -> /etc/storegate/store.toml's gateway_id
    "$VENV/bin/python" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))[sys.argv[2]])' "$ETC/store.toml" "$1"
}
BROKER_HOST=$(fleet_value broker host)
GATEWAY=$(config_value gateway_id)

# --- 5. TLS: the store CA, the broker's certificate, the HTTP certificate ----------------
TLS=$ETC/tls
install -d -m 0700 "$TLS"
if [ ! -f "$TLS/store-ca.pem" ]; then
    say "making the store CA ($TLS/store-ca.key: move it off the box after flashing the nodes)"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=storegate $STORE CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$TLS/store-ca.key" -out "$TLS/store-ca.pem" 2>/dev/null
    chmod 0600 "$TLS/store-ca.key"
    chmod 0644 "$TLS/store-ca.pem"
fi
issue() {  # issue NAME SAN USAGE: a key and a certificate signed by the store CA
    local name=$1 san=$2 usage=$3
    [ -f "$TLS/store-ca.key" ] || die "the store CA key is not in $TLS (moved off the box?):" \
        "put it back to issue $name, or install $TLS/$name.pem and .key yourself"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
        -keyout "$TLS/$name.key" -out "$tmp/$name.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$san" "$usage" > "$tmp/$name.ext"
    openssl x509 -req -in "$tmp/$name.csr" -CA "$TLS/store-ca.pem" -CAkey "$TLS/store-ca.key" \
        -CAcreateserial -days 825 -extfile "$tmp/$name.ext" -out "$TLS/$name.pem" 2>/dev/null
    chmod 0600 "$TLS/$name.key"
}
broker_san=$(san_for "$BROKER_HOST")
if ! cert_fits "$TLS/store-broker.pem" "$BROKER_HOST"; then
    say "issuing the broker's certificate for $BROKER_HOST"
    issue store-broker "$broker_san" serverAuth
fi
install -d -m 0755 "$MOSQ/certs"
install -m 0644 "$TLS/store-broker.pem" "$MOSQ/certs/store-broker.pem"
install -m 0640 -o root -g mosquitto "$TLS/store-broker.key" "$MOSQ/certs/store-broker.key"
if ! cert_fits "$TLS/http.pem" "$(hostname)" localhost "$BROKER_HOST" 127.0.0.1; then
    say "issuing the HTTP certificate for $(hostname) and $BROKER_HOST"
    issue http "DNS:$(hostname),DNS:localhost,$broker_san,IP:127.0.0.1" serverAuth
fi
install -d -m 0750 -o root -g storegate "$ETC/http"
install -m 0644 "$TLS/http.pem" "$ETC/http/cert.pem"
install -m 0640 -o root -g storegate "$TLS/http.key" "$ETC/http/key.pem"

# --- 6. logins and device files ----------------------------------------------------------
install -d -m 0700 "$ETC/secrets" "$ETC/rendered"
"$SG" firmware render "$FLEET" --out "$ETC/rendered" --secrets "$ETC/secrets/fleet.json" \
    --ca "$TLS/store-ca.pem"
[ -f "$ETC/rendered/gateways/$GATEWAY.env" ] \
    || die "gateway $GATEWAY (store.toml) is not in $FLEET/store.toml's gateways"
install -m 0600 "$ETC/rendered/gateways/$GATEWAY.env" "$ETC/secrets.env"

# --- 7. the store broker: Debian's mosquitto.conf + one drop-in ---------------------------
for f in storegate scanners; do
    install -m 0640 -o root -g mosquitto "$ETC/rendered/broker/$f.passwd" "$MOSQ/$f.passwd"
    sed "s/store-0042/$STORE/g" "$SRC/deploy/mosquitto/$f.acl" > "$tmp/$f.acl"
    install -m 0644 "$tmp/$f.acl" "$MOSQ/$f.acl"
done
CENTRAL=$(fleet_value central bridge_address)
PLAIN_PORT=$(fleet_value broker plain_port)
BIND=$(fleet_value broker bind)
if [ -n "$PLAIN_PORT" ] && [ -z "$BIND" ]; then
    BIND=$BROKER_HOST  # never a plain listener on every interface
fi
{
    echo "# Rendered by deploy/install.sh from firmware-configs/$STORE/store.toml: edits"
    echo "# here are overwritten at the next run; change store.toml's [broker] instead."
    sed -e "s/store-0042/$STORE/g" "$SRC/deploy/mosquitto/store-broker.conf"
} | render_listeners "$(fleet_value broker tls_port)" "$BIND" "$PLAIN_PORT" \
    > "$tmp/storegate.conf" || die "the drop-in's listener lines were not rendered"
if [ -n "$CENTRAL" ] && [ -f "$MOSQ/certs/central-ca.pem" ] && [ -f "$MOSQ/certs/$STORE.pem" ] \
        && [ -f "$MOSQ/certs/$STORE.key" ]; then
    sed -i "s/^address central-mqtt.example.net:8883\$/address $CENTRAL/" "$tmp/storegate.conf"
    say "bridge to central: $CENTRAL"
else
    # no bridge until central's certificates are here: the events wait in the outbox
    sed -i '/^# --- bridge to central/,$d' "$tmp/storegate.conf"
    say "bridge to central OFF: install central-ca.pem, $STORE.pem and $STORE.key in" \
        "$MOSQ/certs/ (from central) and run install.sh again"
fi
# The events and status lines per gateway of this store, not `+`: a level the gateways
# do not own (a scanner node's name, say) is never bridged to central.
GATEWAYS=$("$VENV/bin/python" -c 'import sys, tomllib
print(" ".join(tomllib.load(open(sys.argv[1], "rb"))["store"]["gateways"]))' "$FLEET/store.toml")
if grep -q '^topic ' "$tmp/storegate.conf"; then
    bridge_per_gateway "$STORE" "$GATEWAYS" < "$tmp/storegate.conf" > "$tmp/storegate.conf.gw" \
        || die "the bridge's per-gateway topic lines were not rendered"
else  # no bridge (cut above)
    cp "$tmp/storegate.conf" "$tmp/storegate.conf.gw"
fi
install -m 0644 "$tmp/storegate.conf.gw" "$MOSQ/conf.d/storegate.conf"
if grep -qs '^persistence_location' "$MOSQ/conf.d/"*.conf; then
    die "a drop-in in $MOSQ/conf.d sets persistence_location: Debian's mosquitto.conf does" \
        "already and mosquitto stops at a second one"
fi

# --- 8. systemd --------------------------------------------------------------------------
for unit in storegate.service storegate-backup.service storegate-backup.timer; do
    install -m 0644 "$SRC/deploy/systemd/$unit" "$UNIT_DIR/$unit"
done
# The stop budget follows storage.shutdown_drain_s (deploy/systemd/storegate.service:
# 2 x drain + 20 s, never below the unit's 60 s): systemd must not kill a drain.
drain=$("$VENV/bin/python" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb")).get("storage", {}).get("shutdown_drain_s", 10))' \
    "$ETC/store.toml")
stop_s=$(stop_timeout_s "$drain") || die "$ETC/store.toml: shutdown_drain_s $drain is not a number"
install -d -m 0755 "$UNIT_DIR/storegate.service.d"
printf '# install.sh: 2 x storage.shutdown_drain_s (%s s) + 20 s\n[Service]\nTimeoutStopSec=%s\n' \
    "$drain" "$stop_s" > "$tmp/stop-timeout.conf"
install -m 0644 "$tmp/stop-timeout.conf" "$UNIT_DIR/storegate.service.d/stop-timeout.conf"
install -d -m 0755 /etc/systemd/journald.conf.d
install -m 0644 "$SRC/deploy/journald/storegate.conf" /etc/systemd/journald.conf.d/storegate.conf
systemctl enable mosquitto.service storegate.service storegate-backup.timer >/dev/null 2>&1
# Not systemd-time-wait-sync: a store whose internet is down at boot must still run.
# The gateway itself refuses a clock from before 2026 (exit 4, restarted until set),
# and with fake-hwclock (Raspberry Pi OS) the clock starts near the last shutdown.
if systemd_running && [ "$START" -eq 1 ]; then
    systemctl daemon-reload
    systemctl restart systemd-journald.service
    systemctl restart mosquitto.service
    systemctl restart storegate.service
    systemctl start storegate-backup.timer
    say "started; \`storegate status -c $ETC/store.toml\` shows the gateway"
else
    say "installed and enabled; systemd is not running here: start with" \
        "\`systemctl start mosquitto storegate\` on the box"
fi
say "done: $("$SG" version) for $STORE ($GATEWAY)"
