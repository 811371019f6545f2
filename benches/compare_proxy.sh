#!/usr/bin/env bash
# Compares ovaio in front of an imageio data API (a "remote volume": a
# ticket url https://HOST:PORT/images/TICKET of an ovirt-imageio daemon)
# with what oVirt does without it, on the same disk, in one run. The
# storage side is always the same ovirt-imageio daemon, file backend, a
# raw target file of the disk's capacity, over TLS:
#   edge   demultiplexing at the edge: an OVA holding one disk (the source
#          image as qcow2, `qemu-img convert -O qcow2`, after a minimal OVF
#          descriptor and, by default, a SHA-256 manifest) sent with
#          `curl -T` to an ova-import ticket of ovaio whose disk url is a
#          ticket of the daemon: ovaio reads the package, decodes the qcow2
#          disk and writes its guest bytes into the daemon;
#            against: ovirt_imageio.client.upload(disk1.qcow2, url, cafile)
#          of the same qcow2 disk straight into the daemon.
#   proxy  ovirt_imageio.client.upload(raw source, url, cafile) through a
#          proxy into the daemon:
#            ovaio          an image ticket of ovaio whose url is the
#                           daemon's ticket;
#            imageio-proxy  a second ovirt-imageio daemon in proxy mode, its
#                           ticket url the first daemon's ticket (its http
#                           backend trusting the daemon's CA through
#                           [backend_http] ca_file).
#   memory ovaio's peak RSS (VmHWM from /proc/PID/status) over one transfer
#          of each kind, each time in a freshly started ovaio.
# Throughput is the disk's virtual size over the wall time (MB = 10^6
# bytes): for curl the whole command, until the ticket reports success; for
# the client the time of upload() inside its process (not the interpreter's
# start). Paired rounds, the order rotating every round, `sync` before each
# timed run; median with min and max, ratios of the medians, and the server
# side's CPU time per transfer (every server process the bytes pass
# through). Every target is compared with the source by `qemu-img compare`;
# a wrong one makes the script exit with status 2.
# Targets: edge ovaio/imageio >= 1.0, proxy ovaio/imageio-proxy >= 1.5,
# ovaio's peak RSS < 64 MiB.
#
# The daemons get a certificate for IP:127.0.0.1 signed by a CA made here
# with openssl; the client, ovaio (--remote-ca) and the proxying daemon
# trust that CA. ovaio keeps its own generated certificate.
#
# Environment:
#   SIZE_MIB      virtual size of the disk in MiB (default 1024; the simple
#                 source image of benches/lib/source_image.sh, about half
#                 data)
#   REPS          rounds (default 3)
#   OVA_MANIFEST  the OVA's SHA-256 manifest: after-ovf (default, as
#                 ovftool, oVirt and ovaio write it), last or none (then
#                 ovaio hashes the disk in SHA-1, SHA-256 and SHA-512 until
#                 the end)
#   RUNS          what to run (default "ovaio-ova imageio-direct ovaio-proxy
#                 imageio-proxy rss"): ovaio-ova and imageio-direct are the
#                 edge pair, ovaio-proxy and imageio-proxy the proxy pair,
#                 rss the memory measurement
#   BENCH_DIR     parent of the work directory (default /tmp/ovaio-bench)
#   KEEP=1        keep the work directory (logs; images are deleted)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=simple
SIZE_MIB=${SIZE_MIB:-1024}
REPS=${REPS:-3}
OVA_MANIFEST=${OVA_MANIFEST:-after-ovf}
RUNS=${RUNS:-ovaio-ova imageio-direct ovaio-proxy imageio-proxy rss}
BENCH_DIR=${BENCH_DIR:-/tmp/ovaio-bench}
KEEP=${KEEP:-0}
OVAIO=$ROOT/target/release/ovaio
VENV=$ROOT/target/test-venv
PY=$VENV/bin/python
START_TIMEOUT=30

die() { echo "compare_proxy: $*" >&2; exit 1; }
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be an integer >= 1"
[[ $OVA_MANIFEST =~ ^(none|after-ovf|last)$ ]] || die "OVA_MANIFEST must be none, after-ovf or last"
NEED_OVAIO=0
NEED_OVA=0
WHO=()
for w in $RUNS; do
  case $w in
    ovaio-ova) NEED_OVAIO=1; NEED_OVA=1; WHO+=("$w") ;;
    ovaio-proxy) NEED_OVAIO=1; WHO+=("$w") ;;
    imageio-direct) NEED_OVA=1; WHO+=("$w") ;;
    imageio-proxy) WHO+=("$w") ;;
    rss) NEED_OVAIO=1; NEED_OVA=1 ;;
    *) die "RUNS: unknown run '$w'" ;;
  esac
done
for t in qemu-img curl openssl tar truncate stat sha256sum awk sed sort python3; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
"$PY" -c 'import ovirt_imageio.client' 2>/dev/null ||
  die "the ovirt_imageio client is required in $VENV (run scripts/test.sh once)"
[ -x "$VENV/bin/ovirt-imageio" ] ||
  die "the ovirt-imageio daemon is required in $VENV (run scripts/test.sh once)"
IMAGEIO_HAVE=$("$PY" -c 'from ovirt_imageio._internal import version; print(version.string)' 2>/dev/null || echo unknown)

if [ "$NEED_OVAIO" = 1 ]; then
  echo "building ovaio (cargo build --release)..." >&2
  (cd "$ROOT" && cargo build --release >&2) || die "cargo build --release failed"
  "$OVAIO" serve --help 2>/dev/null | grep -q -- '--remote-ca' ||
    die "$OVAIO serve has no --remote-ca: this build has no remote volumes"
fi

mkdir -p "$BENCH_DIR"
WORK=$(cd "$(mktemp -d "$BENCH_DIR/run.XXXXXX")" && pwd -P)
# Unix socket paths are limited to 107 bytes.
[ ${#WORK} -le 60 ] || die "BENCH_DIR is too long for the control sockets: $WORK"
# shellcheck source=benches/lib/servers.sh
. "$ROOT/benches/lib/servers.sh"

cleanup() {
  finish_work \( -name '*.img' -o -name '*.raw' -o -name '*.qcow2' -o -name '*.ova' \)
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SIZE=$((SIZE_MIB * 1024 * 1024))
SRC=$WORK/source.img
PKI=$WORK/pki
IM_DIR=$WORK/imageio
PX_DIR=$WORK/imageio-proxy
TARGET=$IM_DIR/data/target.raw
mkdir -p "$PKI" "$IM_DIR/data"

# ------------------------------------------------------------ certificates
# A CA, and a certificate for IP:127.0.0.1 it signs, for both daemons.
echo "making a CA and the daemons' certificate..." >&2
{
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 2 \
    -subj "/CN=ovaio bench CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" &&
    openssl req -newkey rsa:2048 -nodes -keyout "$PKI/server.key" -out "$PKI/server.csr" \
      -subj "/CN=127.0.0.1" &&
    printf '%s\n' "subjectAltName=IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
      >"$PKI/server.ext" &&
    openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
      -CAcreateserial -days 2 -extfile "$PKI/server.ext" -out "$PKI/server.crt"
} >"$PKI/openssl.log" 2>&1 || { cat "$PKI/openssl.log" >&2; die "openssl could not make the certificates"; }
chmod 600 "$PKI/ca.key" "$PKI/server.key"

# ------------------------------------------------------------ source image
# shellcheck source=benches/lib/source_image.sh
. "$ROOT/benches/lib/source_image.sh"
# shellcheck source=benches/lib/stats.sh
. "$ROOT/benches/lib/stats.sh"
echo "writing the ${SIZE_MIB} MiB source image..." >&2
make_source "$SRC" "$SIZE"
alloc_mib=$(($(stat -c %b "$SRC") * $(stat -c %B "$SRC") / 1048576))

# The OVA, and its qcow2 disk as a file of its own for the direct upload.
# shellcheck source=benches/lib/bench_ova.sh
. "$ROOT/benches/lib/bench_ova.sh"
HREF=$(href_of qcow2)
OVA=$WORK/bench.ova
QCOW2=$WORK/disk/$HREF
if [ "$NEED_OVA" = 1 ]; then
  echo "building bench.ova (qcow2, manifest: $OVA_MANIFEST)..." >&2
  bench_disk "$SRC" qcow2 "$SIZE" "$WORK/disk"
  bench_tar "$WORK/disk" qcow2 "$OVA" "$OVA_MANIFEST"
  OVA_BYTES=$(stat -c %s "$OVA")
  # curl reads the package from the page cache; the client reads the qcow2
  # file with O_DIRECT (its qemu-nbd runs with cache=none) in any case.
  cat "$OVA" >/dev/null
fi

# ----------------------------------------------------------------- servers
# The storage daemon ("imageio") and the proxying one ("imageio-proxy"),
# both with the CA-signed certificate; ovaio trusts the CA for remotes.
start_daemons() {
  start_imageio imageio "$IM_DIR" "$PKI/server.key" "$PKI/server.crt" --trust "$PKI/ca.crt"
  start_imageio imageio-proxy "$PX_DIR" "$PKI/server.key" "$PKI/server.crt" \
    --trust "$PKI/ca.crt" --http-ca "$PKI/ca.crt"
}
# start_ovaio_remote NAME: ovaio serve in WORK/NAME trusting the CA.
start_ovaio_remote() {
  start_ovaio "$1" "$OVAIO" "$WORK/$1" --remote-ca "$PKI/ca.crt"
}

new_id() { cat /proc/sys/kernel/random/uuid; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'; }
CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID...: user + system CPU ticks the processes used so far
# (fields 14 and 15 of /proc/PID/stat, counted after the command name).
cpu_ticks() {
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
cpu_s() { awk -v a="$1" -v b="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f\n", (b - a) / hz }'; }

# daemon_ticket ID: a ticket of the storage daemon on the raw target.
daemon_ticket() {
  printf '{"uuid":"%s","size":%d,"url":"file://%s","ops":["read","write"],"timeout":3600,"sparse":true}' \
    "$1" "$SIZE" "$TARGET"
}
# remote_url ID: the storage daemon's data url for ticket ID.
remote_url() { echo "https://127.0.0.1:${PORT[imageio]}/images/$1"; }
# image_ticket ID URL: an image ticket (ovaio, or the proxying daemon) on
# the remote URL.
image_ticket() {
  printf '{"uuid":"%s","size":%d,"url":"%s","ops":["read","write"],"timeout":3600,"sparse":true}' \
    "$1" "$SIZE" "$2"
}
# fresh_target: an empty sparse raw file of the disk's capacity (the
# daemon's file backend writes into an existing volume).
fresh_target() {
  truncate -s 0 "$TARGET"
  truncate -s "$SIZE" "$TARGET"
}

BAD=0
# verify LABEL: the target equals the source, else BAD=1.
verify() {
  qemu-img compare -q -f raw -F raw "$SRC" "$TARGET" >/dev/null 2>&1 && return 0
  echo "  WRONG: $1: the target differs from the source" >&2
  BAD=1
  return 1
}

cat >"$WORK/upload.py" <<'EOF'
import sys
import time

from ovirt_imageio import client

src, url, cafile = sys.argv[1:4]
start = time.monotonic()
client.upload(src, url, cafile)
print(f"{time.monotonic() - start:.3f}")
EOF

# ticket_state SERVER ID: "STATE ERROR" of an ovaio ticket.
ticket_state() {
  control "$1" GET "/tickets/$2" >/dev/null || { echo "unknown"; return 0; }
  python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(d.get("state", "unknown"), d.get("error") or "")' "$WORK/control.out"
}

# show_log SERVER: the end of a server's log, indented.
show_log() { tail -5 "${SLOG[$1]}" 2>/dev/null | sed 's/^/    /' >&2 || true; }

# The transfers below leave their seconds in RESULT when they succeed and
# their target is verified; they fail otherwise.
RESULT=

# ova_import LABEL OVAIO-SERVER: curl -T bench.ova into an ova-import ticket
# of the ovaio server, its disk going to a ticket of the storage daemon.
ova_import() {
  local label=$1 srv=$2 rid oid code t0 t1 st i
  rid=$(new_id)
  oid=$(new_id)
  fresh_target
  control imageio PUT "/tickets/$rid" "$(daemon_ticket "$rid")" || return 1
  control "$srv" PUT "/tickets/$oid" \
    "$(printf '{"uuid":"%s","kind":"ova-import","ops":["write"],"timeout":3600,"size":%d,"ova":{"disks":[{"href":"%s","url":"%s"}]}}' \
      "$oid" "$OVA_BYTES" "$HREF" "$(remote_url "$rid")")" || { control imageio DELETE "/tickets/$rid" || true; return 1; }
  sync
  t0=$(now)
  code=$(curl -sS --cacert "${CA[$srv]}" -T "$OVA" -o "$WORK/ova.resp" -w '%{http_code}' \
    "https://127.0.0.1:${PORT[$srv]}/images/$oid" 2>"$WORK/ova.err") || code=000
  t1=$(now)
  st=$(ticket_state "$srv" "$oid")
  # The upload counts until the ticket reports its outcome.
  for ((i = 0; i < 600; i++)); do
    case ${st%% *} in succeeded | failed | cancelled | unknown) break ;; esac
    sleep 0.05
    st=$(ticket_state "$srv" "$oid")
    t1=$(now)
  done
  control "$srv" DELETE "/tickets/$oid" || true
  control imageio DELETE "/tickets/$rid" || true
  if [ "$code" = 200 ] && [ "${st%% *}" = succeeded ]; then
    verify "$label" && RESULT=$(elapsed "$t0" "$t1")
  else
    echo "  $label: curl -T answered HTTP $code, ticket: $st" >&2
    { cat "$WORK/ova.err"; head -c 300 "$WORK/ova.resp"; echo; } | sed 's/^/    /' >&2
    show_log "$srv"
    return 1
  fi
}

# client_upload LABEL SOURCE SERVER ID: the ovirt_imageio client uploading
# SOURCE to ticket ID of SERVER; its time is the last line of WORK/up.out.
client_upload() {
  local label=$1 src=$2 srv=$3 id=$4
  sync
  if "$PY" "$WORK/upload.py" "$src" "https://127.0.0.1:${PORT[$srv]}/images/$id" "${CA[$srv]}" \
    >"$WORK/up.out" 2>"$WORK/up.err"; then
    return 0
  fi
  echo "  $label: the upload failed:" >&2
  tail -5 "$WORK/up.err" | sed 's/^/    /' >&2
  show_log "$srv"
  return 1
}

# direct_upload LABEL: the client uploads disk1.qcow2 into the storage
# daemon.
direct_upload() {
  local label=$1 rid rc=0
  rid=$(new_id)
  fresh_target
  control imageio PUT "/tickets/$rid" "$(daemon_ticket "$rid")" || return 1
  client_upload "$label" "$QCOW2" imageio "$rid" || rc=1
  control imageio DELETE "/tickets/$rid" || true
  [ "$rc" = 0 ] && verify "$label" && RESULT=$(tail -1 "$WORK/up.out")
}

# proxy_upload LABEL PROXY: the client uploads the raw source through the
# PROXY server (ovaio, or the proxying daemon) into the storage daemon.
proxy_upload() {
  local label=$1 px=$2 rid pid rc=0
  rid=$(new_id)
  pid=$(new_id)
  fresh_target
  control imageio PUT "/tickets/$rid" "$(daemon_ticket "$rid")" || return 1
  control "$px" PUT "/tickets/$pid" "$(image_ticket "$pid" "$(remote_url "$rid")")" ||
    { control imageio DELETE "/tickets/$rid" || true; return 1; }
  client_upload "$label" "$SRC" "$px" "$pid" || rc=1
  control "$px" DELETE "/tickets/$pid" || true
  control imageio DELETE "/tickets/$rid" || true
  [ "$rc" = 0 ] && verify "$label" && RESULT=$(tail -1 "$WORK/up.out")
}

# one_run WHO ROUND: one timed transfer; its seconds go to WHO.t, the CPU
# seconds of the server processes it passes through to WHO.cpu.
one_run() {
  local who=$1 r=$2 c0 c1 pids=("${PID[imageio]}")
  case $who in
    ovaio-ova | ovaio-proxy) pids+=("${PID[ovaio]}") ;;
    imageio-proxy) pids+=("${PID[imageio-proxy]}") ;;
  esac
  c0=$(cpu_ticks "${pids[@]}")
  RESULT=
  case $who in
    ovaio-ova) ova_import "$who $r" ovaio ;;
    imageio-direct) direct_upload "$who $r" ;;
    ovaio-proxy) proxy_upload "$who $r" ovaio ;;
    imageio-proxy) proxy_upload "$who $r" imageio-proxy ;;
  esac || return 0
  c1=$(cpu_ticks "${pids[@]}")
  echo "$RESULT" >>"$WORK/$who.t"
  cpu_s "$c0" "$c1" >>"$WORK/$who.cpu"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b <= 0) print "n/a"; else printf "%.2f", a / b }'; }
mib() { awk -v k="$1" 'BEGIN { if (k !~ /^[0-9]+$/) print "n/a"; else printf "%.1f", k / 1024 }'; }

# ------------------------------------------------------------------ timed
echo "work directory: $WORK" >&2
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
start_daemons
echo "ovirt-imageio $IMAGEIO_HAVE: storage daemon pid ${PID[imageio]} port ${PORT[imageio]}," \
  "proxy daemon pid ${PID[imageio-proxy]} port ${PORT[imageio-proxy]}" >&2
if [ ${#WHO[@]} -gt 0 ]; then
  if [ "$NEED_OVAIO" = 1 ]; then
    start_ovaio_remote ovaio
    echo "ovaio serve pid ${PID[ovaio]} port ${PORT[ovaio]}" >&2
  fi
  for w in "${WHO[@]}"; do : >"$WORK/$w.t"; : >"$WORK/$w.cpu"; done
  for ((r = 1; r <= REPS; r++)); do
    for ((k = 0; k < ${#WHO[@]}; k++)); do
      w=${WHO[$(((k + r - 1) % ${#WHO[@]}))]}
      echo "round $r/$REPS: $w..." >&2
      one_run "$w" "$r"
    done
  done
  stop_server ovaio
fi

# ----------------------------------------------------------------- memory
# A fresh server for each kind of transfer, its VmHWM after one of it.
declare -A HWM IDLE
if [[ " $RUNS " = *" rss "* ]]; then
  for kind in ova proxy; do
    echo "peak RSS: a fresh ovaio, one $kind transfer..." >&2
    start_ovaio_remote "ovaio-$kind"
    IDLE[$kind]=$(status_kib "${PID[ovaio-$kind]}" VmRSS)
    if [ "$kind" = ova ]; then
      ova_import "rss ova" "ovaio-$kind" && HWM[$kind]=$(status_kib "${PID[ovaio-$kind]}" VmHWM)
    else
      proxy_upload "rss proxy" "ovaio-$kind" && HWM[$kind]=$(status_kib "${PID[ovaio-$kind]}" VmHWM)
    fi
    stop_server "ovaio-$kind"
  done
fi
stop_servers
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ----------------------------------------------------------------- report
has() { [[ " ${WHO[*]} " = *" $1 "* ]]; }
row() { printf '%-46s %9s %9s %9s %9s %8s\n' "$@"; }
# pair_rows TITLE REF WHO...: MB/s median, min, max, CPU-s and the ratio to REF.
pair_rows() {
  local title=$1 ref=$2 w med lo hi cmed ref_med
  shift 2
  row "$title" "MB/s med" "min" "max" "CPU-s" "/$ref"
  read -r ref_med _ _ < <(stats "$WORK/$ref.t")
  for w in "$@"; do
    read -r med lo hi < <(stats "$WORK/$w.t")
    read -r cmed _ _ < <(stats "$WORK/$w.cpu")
    # The slowest time is the lowest rate.
    row "$w" "$(mbps "$SIZE" "$med")" "$(mbps "$SIZE" "$hi")" "$(mbps "$SIZE" "$lo")" "$cmed" "$(ratio "$ref_med" "$med")"
  done
}
echo
echo "remote volumes: ${SIZE_MIB} MiB disk (${alloc_mib} MiB data) into an ovirt-imageio $IMAGEIO_HAVE daemon"
echo "(file backend, raw target, TLS); MB/s of virtual size; median, min, max of $REPS rounds;"
echo "CPU-s: median server-side CPU per transfer; $(nproc) CPUs; load average before $LOAD_BEFORE, after $LOAD_AFTER"
# present REF-LAST WHO...: those of WHO that ran, REF-LAST last (the
# reference of the ratios) when it ran.
present() {
  local w out=()
  for w in "$@"; do has "$w" && out+=("$w"); done
  echo "${out[*]}"
}
read -r -a EDGE <<<"$(present ovaio-ova imageio-direct)"
read -r -a PROXY <<<"$(present ovaio-proxy imageio-proxy)"
if [ ${#EDGE[@]} -gt 0 ]; then
  echo
  echo "edge: bench.ova ($((OVA_BYTES / 1048576)) MiB, qcow2 disk, manifest $OVA_MANIFEST) against its disk uploaded directly"
  pair_rows "edge" "${EDGE[-1]}" "${EDGE[@]}"
  has ovaio-ova && echo "  ovaio-ova       curl -T bench.ova into an ova-import ticket of ovaio -> daemon (CPU: ovaio + daemon)"
  has imageio-direct && echo "  imageio-direct  client.upload(disk1.qcow2) into the daemon (CPU: daemon)"
fi
if [ ${#PROXY[@]} -gt 0 ]; then
  echo
  echo "proxy: client.upload(raw source) through a proxy into the daemon"
  pair_rows "proxy" "${PROXY[-1]}" "${PROXY[@]}"
  has ovaio-proxy && echo "  ovaio-proxy     an image ticket of ovaio -> daemon (CPU: ovaio + daemon)"
  has imageio-proxy && echo "  imageio-proxy   a second ovirt-imageio daemon as proxy -> daemon (CPU: both daemons)"
fi
if [[ " $RUNS " = *" rss "* ]]; then
  echo
  printf '%-46s %9s %9s\n' "ovaio, fresh server, one transfer" "idle MiB" "VmHWM MiB"
  for kind in ova proxy; do
    [ -n "${IDLE[$kind]-}" ] || continue
    printf '%-46s %9s %9s\n' "$([ "$kind" = ova ] && echo "OVA import into the daemon" || echo "proxied upload into the daemon")" \
      "$(mib "${IDLE[$kind]}")" "$(mib "${HWM[$kind]-n/a}")"
  done
fi

# ---------------------------------------------------------------- targets
verdict() { # LABEL RATIO TARGET
  if [ "$2" = n/a ]; then
    echo "$1: not judged (a side has no verified run)"
  else
    awk -v l="$1" -v r="$2" -v t="$3" 'BEGIN { printf "%s: %.2fx (target >= %s): %s\n", l, r, t, (r + 0 >= t) ? "PASS" : "FAIL" }'
  fi
}
echo
if has ovaio-ova && has imageio-direct; then
  read -r a _ _ < <(stats "$WORK/imageio-direct.t")
  read -r b _ _ < <(stats "$WORK/ovaio-ova.t")
  verdict "edge ovaio-ova/imageio-direct" "$(ratio "$a" "$b")" 1.0
fi
if has ovaio-proxy && has imageio-proxy; then
  read -r a _ _ < <(stats "$WORK/imageio-proxy.t")
  read -r b _ _ < <(stats "$WORK/ovaio-proxy.t")
  verdict "proxy ovaio-proxy/imageio-proxy" "$(ratio "$a" "$b")" 1.5
fi
if [[ " $RUNS " = *" rss "* ]]; then
  max=
  for kind in "${!HWM[@]}"; do
    if [ -z "$max" ] || [ "${HWM[$kind]}" -gt "$max" ]; then max=${HWM[$kind]}; fi
  done
  if [ -z "$max" ]; then
    echo "ovaio peak RSS: not judged (no transfer completed)"
  else
    awk -v k="$max" 'BEGIN { printf "ovaio peak RSS: %.1f MiB (target < 64): %s\n", k / 1024, (k < 64 * 1024) ? "PASS" : "FAIL" }'
  fi
fi
[ "$BAD" -eq 0 ] || { echo "FAIL: a target differs from the source"; exit 2; }
