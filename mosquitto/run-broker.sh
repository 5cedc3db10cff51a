#!/bin/sh
# The broker as compose runs it: mosquitto, reloaded (SIGHUP) within 2 s of a change to the CRL or
# the ACL, so `fota device revoke` takes effect without a lab restart: mosquitto re-reads both only
# on SIGHUP. Stop signals are passed on; this shell ends when mosquitto does.
set -u
CONF=/mosquitto/config/mosquitto.conf
WATCHED="/mosquitto/credentials/tls-server/crl.pem /mosquitto/credentials/acl"

stamp() { cat $WATCHED 2>/dev/null | cksum; }

mosquitto -c "$CONF" &
broker=$!
trap 'kill -TERM $broker 2>/dev/null' TERM INT
seen=$(stamp)
while kill -0 $broker 2>/dev/null; do
    sleep 2 &
    wait $!
    now=$(stamp)
    if [ "$now" != "$seen" ]; then
        seen=$now
        echo "run-broker: the CRL or the ACL changed: reloading mosquitto"
        kill -HUP $broker
    fi
done
wait $broker
