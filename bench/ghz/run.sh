#!/usr/bin/env bash
# Runs the ghz scenarios against ldcp-server and keeps each report as JSON and HTML.
#   bench/ghz/run.sh [--host HOST:PORT] [--out DIR] [SCENARIO...] [-- GHZ_OPTION...]
# SCENARIO: steady, step, burst, stream (default: these four, in that order), models (a server
# with two models named base and alt and a LoRA named detail: --model base=DIR --model alt=DIR
# --lora-dir DIR holding detail.safetensors). HOST defaults to
# $LDCP_TARGET or 127.0.0.1:50051; in a cluster use the headless Service with client-side
# balancing: --host dns:///ldcp-server-grpc.ldcp.svc.cluster.local:50051 (ghz runs with
# --lb-strategy round_robin then). Reports go to DIR (default bench/ghz/reports/<UTC time>):
# SCENARIO.json (ghz's JSON report), SCENARIO.html and index.html (report_html.py).
# The server is found by reflection; no .proto file is needed. Options after `--` go to every
# ghz call: a server with TLS, tokens and reflection off (the gpu overlay) wants
#   -- --proto proto/ldcp/v1/ldcp.proto --cacert ca.crt --cert client.crt --key client.key
#      --cname ldcp-server-grpc.ldcp.svc.cluster.local --metadata '{"authorization":"Bearer TOKEN"}'
set -euo pipefail
shopt -s nullglob
here="$(cd "$(dirname "$0")" && pwd)"
host="${LDCP_TARGET:-127.0.0.1:50051}"
out=""
scenarios=()
passthrough=()
while (($#)); do
  case "$1" in
    --) shift; passthrough=("$@"); break ;;
    --host) host="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) scenarios+=("$1"); shift ;;
  esac
done
((${#scenarios[@]})) || scenarios=(steady step burst stream)
out="${out:-$here/reports/$(date -u +%Y%m%dT%H%M%SZ)}"
command -v ghz > /dev/null || { echo "run.sh: ghz is not on PATH (see the README)" >&2; exit 2; }
mkdir -p "$out"

extra=()
[[ "$host" == dns:///* ]] && extra+=(--lb-strategy round_robin)
status=0
for s in "${scenarios[@]}"; do
  config="$here/$s.json"
  [ -f "$config" ] || { echo "run.sh: no scenario $s ($config)" >&2; exit 2; }
  echo "== $s: ghz --config $config $host"
  # The message sizes are repeated on the command line: it wins over the file in every ghz
  # version. A scenario that ends with errors (the burst's refusals) still leaves its report.
  if ! ghz --config "$config" --max-recv-message-size 64MiB --max-send-message-size 4MiB \
      "${extra[@]}" "${passthrough[@]}" --format json --output "$out/$s.json" "$host"; then
    status=1
  fi
  if [ -s "$out/$s.json" ]; then
    python3 "$here/report_html.py" "$out/$s.json" --out "$out/$s.html"
  fi
done
python3 "$here/report_html.py" --index "$out"/*.json --out "$out/index.html"
echo "reports: $out"
exit "$status"
