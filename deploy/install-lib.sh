# Functions of deploy/install.sh that decide something, sourced by it and tested on
# their own (tests/test_install_lib.py). No side effects at source time.
# shellcheck shell=bash

# storegate's id rule (core/topics.py): a store id names paths and goes into sed.
ID_RULE='^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'
valid_id() { [[ "$1" =~ $ID_RULE ]] && [ "$1" != . ] && [ "$1" != .. ]; }

san_for() {  # an IP address or a DNS name
    if [[ "$1" =~ ^[0-9.]+$ || "$1" == *:* ]]; then echo "IP:$1"; else echo "DNS:$1"; fi
}

# cert_fits FILE NAME...: the certificate names each NAME exactly (openssl's own host and
# IP matching, not a substring of its text) and is valid for 30 more days.
cert_fits() {
    local file=$1 name said
    shift
    [ -f "$file" ] || return 1
    openssl x509 -in "$file" -noout -checkend 2592000 >/dev/null 2>&1 || return 1
    for name in "$@"; do
        if [[ $(san_for "$name") == IP:* ]]; then
            said=$(openssl x509 -in "$file" -noout -checkip "$name" 2>/dev/null)
        else
            said=$(openssl x509 -in "$file" -noout -checkhost "$name" 2>/dev/null)
        fi
        # openssl 3.0 exits 0 either way: "does match" vs "does NOT match"
        [[ "$said" == *" does match certificate"* ]] || return 1
    done
}

# bridge_per_gateway STORE "GW..." < drop-in > drop-in: the bridge's `+` events and
# status lines as one line per gateway of the store, so a level no gateway owns (a
# scanner node's name) is never bridged to central. Fails when no line was rendered.
bridge_per_gateway() {
    awk -v store="$1" -v gateways="$2" '
        $0 == "topic storegate/v1/" store "/+/events/# out 1" ||
        $0 == "topic storegate/v1/" store "/+/status out 1" {
            n = split(gateways, gw, " ")
            for (i = 1; i <= n; i++) {
                line = $0; sub(/\/\+\//, "/" gw[i] "/", line); print line; done++
            }
            next
        }
        $0 ~ /^topic storegate\/v1\/[^ ]*\/\+\// { plus++ }
        { print }
        END { exit (done == 0 || plus > 0) }'
}

# stop_timeout_s DRAIN: systemd's TimeoutStopSec for storage.shutdown_drain_s (the
# unit's budget, deploy/systemd/storegate.service: 2 x drain + 20 s, at least 60 s).
stop_timeout_s() {
    awk -v d="$1" 'BEGIN {
        if (d !~ /^[0-9]+(\.[0-9]+)?$/) exit 1
        t = 2 * d + 20; if (t != int(t)) t = int(t) + 1; if (t < 60) t = 60
        print t }'
}

# render_listeners TLS_PORT BIND PLAIN_PORT < drop-in > drop-in: the nodes' listeners as
# firmware-configs/<store>/store.toml's [broker] says (tls_port, bind, plain_port), so a
# re-run or an --upgrade keeps them: the TLS listener on BIND (every interface when
# empty), the plain one (ESPresense) only when PLAIN_PORT is set, on BIND. Fails when a
# listener line to render is missing.
render_listeners() {
    awk -v tls="$1" -v bind="$2" -v plain="$3" '
        $0 == "listener 8883" {
            print "listener " tls (bind == "" ? "" : " " bind); seen++; next
        }
        $0 == "# listener 1884 0.0.0.0" {
            seen++
            if (plain != "") { print "listener " plain " " bind; block = 4; next }
        }
        block > 0 && /^# / { print substr($0, 3); block--; next }
        { print }
        END { exit (seen != 2) }'
}
