#!/usr/bin/env bash
# Entry point of the GIoT node app: Home Assistant's options (/data/options.json) become
# `giot-node run` flags; the node's state (keys, node id, pairing token) lives in /data.
# tests/server/test_node_packaging.py runs this script with the variables below pointed at stubs.
set -euo pipefail
OPTIONS=${GIOT_OPTIONS:-/data/options.json}
STATE=${GIOT_STATE_DIR:-/data}
NODE=${GIOT_NODE:-giot-node}
PYTHON=${GIOT_PYTHON:-python3}

# Keys, node id and pairing token on the first start (the token is printed once, to this log).
"$NODE" init --state-dir "$STATE"

args_file=$(mktemp)
trap 'rm -f "$args_file"' EXIT
"$PYTHON" - "$OPTIONS" >"$args_file" <<'PY'
import json
import sys

with open(sys.argv[1], encoding="utf-8") as f:
    o = json.load(f)
args = ["--superlink", o["superlink"]]
if o.get("insecure"):
    args.append("--insecure")
elif o.get("root_certificates"):
    args += ["--root-certificates", o["root_certificates"]]
else:
    sys.exit("set root_certificates (the server's ca.pem, e.g. /ssl/giot/ca.pem) or insecure")
for app in o.get("trust_apps") or []:
    args += ["--trust-app", app]
args += ["--listen", f"0.0.0.0:{o['listen_port']}"]
args += ["--deadline-s", str(o["deadline_s"])]
if not o.get("advertise", True):
    args.append("--no-advertise")
sys.stdout.write("".join(f"{a}\0" for a in args))
PY
mapfile -d '' -t args <"$args_file"
exec "$NODE" run --state-dir "$STATE" "${args[@]}"
