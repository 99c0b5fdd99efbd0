#!/bin/bash
# Run by tests/test_install.py inside the clean root deploy/install.sh was run in, in a
# network namespace of its own (loopback, plus the store LAN address on it): boot what
# the script installed the way systemd would, and check it. Prints "CHECK <name> ok" per
# check; the first failure stops it (set -e) with the reason on stderr.
set -euo pipefail
ETC=/etc/storegate
SG=/opt/storegate/venv/bin/storegate
ok() { echo "CHECK $1 ok"; }
on_exit() {  # what a failed check needs to be understood
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        for f in /var/log/mosquitto/mosquitto.log /run/gateway.log /run/notify.log \
                /run/status.txt /srv/central/central.log; do
            [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; } >&2
        done
    fi
}
trap on_exit EXIT
wait_port() {  # wait_port HOST PORT SECONDS
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listening on $1:$2 after $3 s" >&2
    return 1
}

# storegate on PATH, from its own virtualenv, without the test tools
[ "$(command -v storegate)" = /usr/local/bin/storegate ]
[ "$(readlink -f /usr/local/bin/storegate)" = "$SG" ]
if /opt/storegate/venv/bin/python -c 'import pytest' 2>/dev/null; then
    echo "pytest is installed in the production virtualenv" >&2; exit 1
fi
ok path

# the units as installed
systemd-analyze verify /etc/systemd/system/storegate.service \
    /etc/systemd/system/storegate-backup.service /etc/systemd/system/storegate-backup.timer
systemctl is-enabled storegate.service mosquitto.service storegate-backup.timer >/dev/null
ok units

# mosquitto: Debian's stock mosquitto.conf (untouched) + the drop-in, as mosquitto.service
# starts it (its ExecStartPre makes /run/mosquitto)
dpkg --verify mosquitto | grep mosquitto.conf && { echo "mosquitto.conf was modified" >&2; exit 1; }
install -d -m 0740 -o mosquitto -g root /run/mosquitto
if [ -f /srv/central/central.conf ]; then  # a broker acting as central, for the bridge
    mosquitto -c /srv/central/central.conf -d
    wait_port 127.0.0.1 1885 20
fi
mosquitto -c /etc/mosquitto/mosquitto.conf -d
wait_port 127.0.0.1 1883 20
wait_port 192.168.10.2 8883 20
# mosquitto's own errors ("Error: ..."; the port probes above show as TLS failures)
if grep -E ': Error' /var/log/mosquitto/mosquitto.log; then exit 1; fi
ok mosquitto
if [ -f /srv/central/central.conf ]; then
    for _ in $(seq 300); do
        grep -q 'as bridge-store-0042' /srv/central/central.log && break
        sleep 0.1
    done
    grep 'as bridge-store-0042' /srv/central/central.log
    ok bridge-up
fi

# the gateway, as storegate.service runs it: its user, its environment file, its
# runtime directory, the config check first, then Type=notify with a watchdog
install -d -m 0750 -o storegate -g storegate /run/storegate
set -a
# shellcheck disable=SC1091
. $ETC/secrets.env
set +a
runuser -u storegate -- "$SG" config check $ETC/store.toml
python3 - <<'PY' &
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/notify.sock")
import os
os.chmod("/run/notify.sock", 0o666)
with open("/run/notify.log", "a") as log:
    while True:
        log.write(s.recv(4096).decode().replace("\n", " ") + "\n")
        log.flush()
PY
listener=$!
for _ in $(seq 50); do [ -S /run/notify.sock ] && break; sleep 0.1; done
# setpriv execs (runuser would stay the parent): $! is the gateway, as systemd's main PID
setpriv --reuid=storegate --regid=storegate --init-groups -- \
    env NOTIFY_SOCKET=/run/notify.sock WATCHDOG_USEC=1000000 \
    "$SG" --log-format json run --config $ETC/store.toml 2>/run/gateway.log &
gateway=$!
for _ in $(seq 300); do
    if storegate status -c $ETC/store.toml >/run/status.txt 2>&1; then break; fi
    sleep 0.2
done
storegate status -c $ETC/store.toml
ok connected
[ -f /run/storegate/status.json ] && [ ! -e /var/lib/storegate/outbox.db.status.json ]
ok status-on-run
grep -q 'READY=1' /run/notify.log
for _ in $(seq 50); do grep -q 'WATCHDOG=1' /run/notify.log && break; sleep 0.1; done
grep -q 'WATCHDOG=1' /run/notify.log
ok notify

# the gateway's login reads its own birth certificate back
mosquitto_sub -h 127.0.0.1 -p 1883 -u "$STOREGATE_MQTT__USERNAME" -P "$STOREGATE_MQTT__PASSWORD" \
    -t "storegate/v1/store-0042/$STOREGATE_MQTT__USERNAME/status" -C 1 -W 10 | grep -q '"online"'
ok birth
if [ -f /srv/central/central.conf ]; then  # ...and central has it, over the bridge
    mosquitto_sub -h 127.0.0.1 -p 1885 -t "storegate/v1/store-0042/+/status" -C 1 -W 30 \
        | grep -q '"online"'
    ok bridged
fi
# a scanner node over TLS, checking the broker against the store CA, with its own login
node_pw=$(python3 -c 'import json; print(json.load(open("/etc/storegate/secrets/fleet.json"))["logins"]["sc-entrance"])')
mosquitto_pub -h 192.168.10.2 -p 8883 --cafile $ETC/tls/store-ca.pem -V mqttv5 -q 1 \
    -u sc-entrance -P "$node_pw" -t storegate/v1/store-0042/scanners/sc-entrance/adverts \
    -m '{"address":"4A:1B:2C:3D:4E:5F","rssi":-60}'
if mosquitto_pub -h 192.168.10.2 -p 8883 --cafile $ETC/tls/store-ca.pem -V mqttv5 -q 1 \
        -u sc-entrance -P wrong -t storegate/v1/store-0042/scanners/sc-entrance/adverts \
        -m '{}' 2>/dev/null; then
    echo "a wrong password was accepted" >&2; exit 1
fi
if mosquitto_pub -h 127.0.0.1 -p 1883 -V mqttv5 -q 1 -u sc-entrance -P "$node_pw" -t x -m x \
        2>/dev/null; then
    echo "a node login works on the gateways' listener" >&2; exit 1
fi
ok logins

# a backup as the daily timer takes it, while the gateway runs
runuser -u storegate -- "$SG" backup --config $ETC/store.toml \
    --out /var/backups/storegate/storegate-latest.tar
[ -s /var/backups/storegate/storegate-latest.tar ]
ok backup

# SIGTERM, as systemctl stop sends it: drained, STOPPING=1, clean exit, status file gone
kill -TERM "$gateway"
rc=0
wait "$gateway" || rc=$?
[ "$rc" -eq 0 ] || { echo "gateway exited $rc" >&2; tail -n 20 /run/gateway.log >&2; exit 1; }
grep -q 'STOPPING=1' /run/notify.log
[ ! -e /run/storegate/status.json ]
grep -q 'gateway stopped (drained' /run/gateway.log
ok stopped
kill "$listener"
kill "$(cat /run/mosquitto/mosquitto.pid)"
echo "GATEWAY LOG"
cat /run/gateway.log
