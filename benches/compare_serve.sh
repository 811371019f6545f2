#!/usr/bin/env bash
# Compares `ovaio serve` with the ovirt-imageio daemon on the same input,
# through the same client, in one run:
#   upload   ovirt_imageio.client.upload(image, url, cafile) into an image
#            ticket of each server; best of REPS; MB/s and ovaio/imageio
#   OVA      curl -T bench.ova into an ova-import ticket of ovaio serve
#            against cat bench.ova | ovaio import - (both ovaio; best of REPS)
#   8-way    CONCURRENCY uploads at once (one ticket, target and client
#            process each) into a freshly started server; aggregate MB/s and
#            the server's peak RSS (VmHWM), per transfer
# Every target is checked against the source with `qemu-img compare`.
# Prints a table of the figures with their ratios.
#
# Environment:
#   IMAGE        source image: simple (default) or hard (benches/lib/source_image.sh)
#   SIZE_MIB     virtual disk size in MiB (default 1024, 4096 for hard; about
#                half is data)
#   REPS         timed runs per single upload and per OVA import, the best
#                is kept (default 3)
#   CONCURRENCY  uploads at once in the 8-way part (default 8)
#   OVA_FORMAT   disk format inside the OVA: qcow2 (default) or vmdk
#                (streamOptimized)
#   OVA_MANIFEST none (default), after-ovf or last: where the OVA's SHA-256
#                manifest goes (before it, ovaio hashes the disk in SHA-1,
#                SHA-256 and SHA-512; after it, in SHA-256 only)
#   OVAIO        ovaio binary (default target/release/ovaio, always rebuilt
#                with cargo build --release)
#   BENCH_DIR    parent of the work directory (default /tmp/ovaio-bench)
#   KEEP=1       keep the work directory (server logs; images are deleted)
#   PARTS        all (default) or ova: only the OVA upload against
#                `ovaio import -` from a pipe (no imageio, no venv), REPS
#                paired rounds, medians, and the target serve >= 0.95x pipe
#   OVA_CLIENT   what uploads the OVA: curl (default; HTTP/2, as curl
#                negotiates it), curl-h1 (curl --http1.1) or ovaio
#                (`ovaio upload`, HTTP/1.1)
#   SERVE_CONFIG a configuration file for ovaio serve (--config), e.g. to
#                try other [data] buffer_size or queue_depth values
#   BASELINE     another ovaio binary (an older build): then only the
#                single upload and the OVA upload run, into this build's
#                server and the baseline's, taking turns, and the table
#                gives the cost of what changed between them (median and
#                best of REPS, baseline/ovaio throughput)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-simple}
SIZE_MIB=${SIZE_MIB:-$([ "$IMAGE" = hard ] && echo 4096 || echo 1024)}
REPS=${REPS:-3}
CONCURRENCY=${CONCURRENCY:-8}
OVA_FORMAT=${OVA_FORMAT:-qcow2}
OVA_MANIFEST=${OVA_MANIFEST:-none}
OVA_CLIENT=${OVA_CLIENT:-curl}
OVAIO=${OVAIO:-$ROOT/target/release/ovaio}
BENCH_DIR=${BENCH_DIR:-/tmp/ovaio-bench}
KEEP=${KEEP:-0}
BASELINE=${BASELINE:-}
PARTS=${PARTS:-all}
TIME=/usr/bin/time
VENV=$ROOT/target/test-venv
PY=$VENV/bin/python
IMAGEIO_VERSION=2.5.1
# Seconds a server may take to print that it is ready.
START_TIMEOUT=30

die() { echo "compare_serve: $*" >&2; exit 1; }

[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be an integer >= 1"
[[ $CONCURRENCY =~ ^[0-9]+$ && $CONCURRENCY -ge 1 ]] || die "CONCURRENCY must be an integer >= 1"
[[ $OVA_FORMAT = qcow2 || $OVA_FORMAT = vmdk ]] || die "OVA_FORMAT must be qcow2 or vmdk"
[[ $OVA_MANIFEST =~ ^(none|after-ovf|last)$ ]] || die "OVA_MANIFEST must be none, after-ovf or last"
[[ $PARTS = all || $PARTS = ova ]] || die "PARTS must be all or ova"
[[ $OVA_CLIENT =~ ^(curl|curl-h1|ovaio)$ ]] || die "OVA_CLIENT must be curl, curl-h1 or ovaio"
for t in qemu-img qemu-nbd curl tar dd truncate awk sed stat python3; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar is required"
[ -x "$TIME" ] || die "$TIME (GNU time) is required"

# ---------------------------------------------------------------- ovaio binary
if [ "$OVAIO" = "$ROOT/target/release/ovaio" ]; then
  echo "building ovaio (cargo build --release)..." >&2
  (cd "$ROOT" && cargo build --release >&2) || die "cargo build --release failed"
fi
"$OVAIO" serve --help >/dev/null 2>&1 || die "$OVAIO has no 'serve' command"

# ------------------------------------------------------ ovirt-imageio (venv)
# The venv scripts/test.sh makes; created here when missing.
if [ "$PARTS" = ova ]; then
  IMAGEIO_HAVE=unused
elif ! "$PY" -c 'import ovirt_imageio.client' >/dev/null 2>&1 || [ ! -x "$VENV/bin/ovirt-imageio" ]; then
  echo "installing ovirt-imageio==$IMAGEIO_VERSION into $VENV..." >&2
  python3 -m venv "$VENV" || die "cannot create $VENV (python3-venv missing?)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "ovirt-imageio==$IMAGEIO_VERSION" >&2 ||
    die "pip install ovirt-imageio==$IMAGEIO_VERSION failed"
fi
[ "$PARTS" = ova ] ||
  IMAGEIO_HAVE=$("$PY" -c 'from ovirt_imageio._internal import version; print(version.string)' 2>/dev/null || echo unknown)

# ----------------------------------------------------------- work directory
mkdir -p "$BENCH_DIR"
WORK=$(cd "$(mktemp -d "$BENCH_DIR/run.XXXXXX")" && pwd -P)
# Unix socket paths are limited to 107 bytes.
[ ${#WORK} -le 60 ] || die "BENCH_DIR is too long for the control sockets: $WORK"

# shellcheck source=benches/lib/stats.sh
. "$ROOT/benches/lib/stats.sh"
# shellcheck source=benches/lib/servers.sh
. "$ROOT/benches/lib/servers.sh"
CLIENT_PIDS=()

cleanup() {
  local p
  for p in "${CLIENT_PIDS[@]}"; do
    # SIGINT lets the client stop its qemu-nbd.
    kill -INT "$p" 2>/dev/null || true
  done
  for p in "${CLIENT_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  finish_work \( -name '*.raw' -o -name '*.img' -o -name '*.ova' \)
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SIZE=$((SIZE_MIB * 1024 * 1024))
SRC=$WORK/source.img
OV_DIR=$WORK/ovaio
IM_DIR=$WORK/imageio
mkdir -p "$OV_DIR/state" "$OV_DIR/root" "$IM_DIR/conf/conf.d" "$IM_DIR/run" "$IM_DIR/data"
OV_ROOT=$OV_DIR/root
CERT=$OV_DIR/state/tls/server.crt
KEY=$OV_DIR/state/tls/server.key
# Where each server's targets live (the same file system).
declare -A DATA=([ovaio]=$OV_ROOT [imageio]=$IM_DIR/data)

# ------------------------------------------------------------- source image
# shellcheck source=benches/lib/source_image.sh
. "$ROOT/benches/lib/source_image.sh"

# ----------------------------------------------------------------- servers
# start_serve [NAME BINARY DIR]: ovaio serve (start_ovaio in
# benches/lib/servers.sh), by default this build as "ovaio" in OV_DIR,
# with SERVE_CONFIG when set; its targets go to DIR/root.
start_serve() {
  local name=${1:-ovaio} bin=${2:-$OVAIO} dir=${3:-$OV_DIR}
  start_ovaio "$name" "$bin" "$dir" ${SERVE_CONFIG:+--config "$SERVE_CONFIG"}
  DATA[$name]=$dir/root
}

# The ovirt-imageio daemon: TLS with ovaio's certificate and key, no local
# service (start_imageio in benches/lib/servers.sh).
start_daemon() { start_imageio imageio "$IM_DIR" "$KEY" "$CERT"; }

# cpu_s PID: user + system CPU seconds PID used so far (fields 14 and 15 of
# /proc/PID/stat, counted after the parenthesised command name).
CLK_TCK=$(getconf CLK_TCK)
cpu_s() { sed 's/.*) //' "/proc/$1/stat" | awk -v hz="$CLK_TCK" '{ printf "%.2f\n", ($12 + $13) / hz }'; }

# image_ticket ID PATH: a write ticket for the raw volume PATH.
image_ticket() {
  printf '{"uuid":"%s","size":%d,"url":"file://%s","ops":["write"],"timeout":3600,"sparse":true}' \
    "$1" "$SIZE" "$2"
}

# ------------------------------------------------------------------- client
# The same client for both servers; the time covers client.upload() only
# (OPTIONS, qemu-img info, qemu-nbd, the transfer and the final flush), not
# the interpreter's start.
cat >"$WORK/upload.py" <<'EOF'
import sys
import time

from ovirt_imageio import client

src, url, cafile = sys.argv[1:4]
start = time.monotonic()
client.upload(src, url, cafile)
print(f"{time.monotonic() - start:.3f}")
EOF

# fresh_target PATH: an empty sparse file of SIZE bytes (imageio's file
# backend needs the volume to exist; ovaio gets the same).
fresh_target() {
  truncate -s 0 "$1"
  truncate -s "$SIZE" "$1"
}

# verify PATH LABEL: the target equals the source, else BAD=1.
BAD=0
verify() {
  if qemu-img compare -q -f raw -F raw "$SRC" "$1" >/dev/null 2>&1; then
    return 0
  fi
  echo "  WRONG: $2 ($1) differs from the source" >&2
  BAD=1
  return 1
}

min_of() { awk 'NR == 1 || $1 < m { m = $1 } END { if (NR) print m; else print "n/a" }' "$1"; }
# mbps BYTES SECS
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s !~ /^[0-9.]+$/ || s <= 0) print "n/a"; else printf "%.1f\n", b / 1e6 / s }'; }
# ratio A B: A/B, or n/a
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b <= 0) print "n/a"; else printf "%.2f\n", a / b }'; }
mib() { awk -v k="$1" 'BEGIN { if (k !~ /^[0-9.]+$/) print "n/a"; else printf "%.1f\n", k / 1024 }'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'; }

# single SERVER REP: one timed upload into a fresh ticket and target.
single() {
  local srv=$1 r=$2 id="single-$1-$2" target="${DATA[$1]}/single.raw"
  fresh_target "$target"
  control "$srv" PUT "/tickets/$id" "$(image_ticket "$id" "$target")" || return 1
  if "$PY" "$WORK/upload.py" "$SRC" "https://127.0.0.1:${PORT[$srv]}/images/$id" "${CA[$srv]}" \
    >"$WORK/up.out" 2>"$WORK/up.err"; then
    if verify "$target" "$srv upload $r"; then
      tail -1 "$WORK/up.out" >>"$WORK/single-$srv.t"
    fi
  else
    echo "  $srv upload $r failed:" >&2
    tail -5 "$WORK/up.err" | sed 's/^/    /' >&2
  fi
  control "$srv" DELETE "/tickets/$id" || true
}

# ------------------------------------------------------------------- OVA
# shellcheck source=benches/lib/bench_ova.sh
. "$ROOT/benches/lib/bench_ova.sh"

# make_ova: bench.ova holding the source as disk1.$OVA_FORMAT after a
# minimal OVF 1.0 descriptor; a manifest where OVA_MANIFEST says.
HREF=$(href_of "$OVA_FORMAT")
OVA=$WORK/bench.ova
make_ova() {
  local mf=$OVA_MANIFEST
  [ "$mf" = none ] && mf=
  make_bench_ova "$SRC" "$OVA_FORMAT" "$SIZE" "$OVA" "$WORK/ova" $mf
}

# ova_serve REP [SERVER]: OVA_CLIENT uploads bench.ova into an ova-import
# ticket of an ovaio server (raw target); "seconds client-CPU-s
# server-CPU-s" go to ova-serve.t (SERVER ovaio) or ova-serve-SERVER.t.
ova_serve() {
  local r=$1 srv=${2:-ovaio} id="ova-$1" t0 t1 c0 c1 code url
  local target=${DATA[$srv]}/ova-serve.raw times=$WORK/ova-serve.t
  [ "$srv" = ovaio ] || times=$WORK/ova-serve-$srv.t
  rm -f "$target"
  control "$srv" PUT "/tickets/$id" "$(printf '{"uuid":"%s","kind":"ova-import","ops":["write"],"timeout":3600,"size":%d,"ova":{"disks":[{"href":"%s","url":"file://%s","format":"raw"}]}}' \
    "$id" "$(stat -c %s "$OVA")" "$HREF" "$target")" || return 1
  url="https://127.0.0.1:${PORT[$srv]}/images/$id"
  c0=$(cpu_s "${PID[$srv]}")
  t0=$(now)
  case $OVA_CLIENT in
    ovaio)
      if "$TIME" -f '%U %S' -o "$WORK/client.time" "$OVAIO" upload --quiet --cacert "${CA[$srv]}" \
        "$OVA" "$url" >"$WORK/ova.resp" 2>"$WORK/ova.err"; then code=200; else code=000; fi ;;
    *)
      local -a http=()
      [ "$OVA_CLIENT" = curl-h1 ] && http=(--http1.1)
      code=$("$TIME" -f '%U %S' -o "$WORK/client.time" curl -sS "${http[@]}" \
        --cacert "${CA[$srv]}" -T "$OVA" -o "$WORK/ova.resp" -w '%{http_code}' "$url" \
        2>"$WORK/ova.err") || code=000 ;;
  esac
  t1=$(now)
  c1=$(cpu_s "${PID[$srv]}")
  if [ "$code" = 200 ]; then
    if verify "$target" "$srv serve OVA import $r"; then
      echo "$(elapsed "$t0" "$t1") $(tail -1 "$WORK/client.time" | awk '{ printf "%.2f", $1 + $2 }') $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')" >>"$times"
    fi
  else
    echo "  $OVA_CLIENT into the ova-import ticket: HTTP $code" >&2
    { cat "$WORK/ova.err"; head -c 300 "$WORK/ova.resp"; echo; } | sed 's/^/    /' >&2
  fi
  control "$srv" DELETE "/tickets/$id" || true
  rm -f "$target"
}

# ova_pipe REP: cat bench.ova | ovaio import - (a pipe, as from a network
# stream); "seconds peak-RSS-KiB cat-CPU-s ovaio-CPU-s" to ova-pipe.t.
ova_pipe() {
  local r=$1 target=$OV_ROOT/ova-pipe.raw t0 t1 rc=0
  rm -f "$target"
  t0=$(now)
  { "$TIME" -f '%U %S' -o "$WORK/cat.time" cat "$OVA" || true; } | "$TIME" -f '%M %U %S' -o "$WORK/pipe.time" \
    "$OVAIO" import - --quiet --disk "$HREF=$target:raw" >/dev/null 2>"$WORK/pipe.err" || rc=$?
  t1=$(now)
  if [ "$rc" -eq 0 ]; then
    if verify "$target" "ovaio import - $r"; then
      echo "$(elapsed "$t0" "$t1") $(tail -1 "$WORK/pipe.time" | awk '{ print $1 }')" \
        "$(tail -1 "$WORK/cat.time" | awk '{ printf "%.2f", $1 + $2 }')" \
        "$(tail -1 "$WORK/pipe.time" | awk '{ printf "%.2f", $2 + $3 }')" >>"$WORK/ova-pipe.t"
    fi
  else
    echo "  ovaio import - failed ($rc):" >&2
    tail -5 "$WORK/pipe.err" | sed 's/^/    /' >&2
  fi
  rm -f "$target"
}

# ova_rounds: REPS rounds of ova_serve and ova_pipe, taking turns, with
# `sync` before each run.
ova_rounds() {
  local r
  for ((r = 1; r <= REPS; r++)); do
    echo "OVA $r/$REPS: $OVA_CLIENT into ovaio serve and ovaio import -, taking turns..." >&2
    if ((r % 2)); then
      sync; ova_serve "$r" || true
      sync; ova_pipe "$r"
    else
      sync; ova_pipe "$r"
      sync; ova_serve "$r" || true
    fi
  done
}

# ------------------------------------------------------------------ 8-way
# many SERVER: CONCURRENCY clients at once, one ticket and target each;
# writes "wall_s ok_count min_s max_s" to many-SERVER.t.
many() {
  local srv=$1 i id target t0 t1 c0 ok=0 rc
  local -a pids=()
  for ((i = 1; i <= CONCURRENCY; i++)); do
    id="many-$srv-$i"
    target="${DATA[$srv]}/many-$i.raw"
    fresh_target "$target"
    control "$srv" PUT "/tickets/$id" "$(image_ticket "$id" "$target")" || return 1
  done
  c0=$(cpu_s "${PID[$srv]}")
  t0=$(now)
  for ((i = 1; i <= CONCURRENCY; i++)); do
    "$PY" "$WORK/upload.py" "$SRC" "https://127.0.0.1:${PORT[$srv]}/images/many-$srv-$i" "$CERT" \
      >"$WORK/many-$i.out" 2>"$WORK/many-$i.err" &
    pids+=($!)
  done
  CLIENT_PIDS=("${pids[@]}")
  for ((i = 1; i <= CONCURRENCY; i++)); do
    rc=0
    wait "${pids[i - 1]}" || rc=$?
    if [ "$rc" -ne 0 ]; then
      echo "  $srv: concurrent upload $i failed ($rc):" >&2
      tail -3 "$WORK/many-$i.err" | sed 's/^/    /' >&2
    fi
  done
  t1=$(now)
  CLIENT_PIDS=()
  HWM[$srv]=$(status_kib "${PID[$srv]}" VmHWM)
  CPU8[$srv]=$(awk -v a="$c0" -v b="$(cpu_s "${PID[$srv]}")" 'BEGIN { printf "%.2f\n", b - a }')
  for ((i = 1; i <= CONCURRENCY; i++)); do
    target="${DATA[$srv]}/many-$i.raw"
    if [ -s "$WORK/many-$i.out" ] && verify "$target" "$srv concurrent upload $i"; then
      ok=$((ok + 1))
      tail -1 "$WORK/many-$i.out" >>"$WORK/many-$srv.each"
    fi
    rm -f "$target"
    control "$srv" DELETE "/tickets/many-$srv-$i" || true
  done
  if [ "$ok" -eq "$CONCURRENCY" ]; then
    echo "$(elapsed "$t0" "$t1") $(awk 'NR == 1 || $1 < a { a = $1 } NR == 1 || $1 > b { b = $1 } END { print a, b }' "$WORK/many-$srv.each")" \
      >"$WORK/many-$srv.t"
  else
    echo "n/a n/a n/a" >"$WORK/many-$srv.t"
  fi
}

# ------------------------------------------------------------------ main
declare -A IDLE IDLE8 HWM SINGLE_HWM SINGLE_CPU CPU8
echo "work directory: $WORK" >&2
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
uptime >&2
echo "generating a ${SIZE_MIB} MiB sparse source image..." >&2
make_source "$SRC" "$SIZE"
alloc_mib=$(($(stat -c %b "$SRC") * $(stat -c %B "$SRC") / 1048576))
echo "source: ${SIZE_MIB} MiB virtual, ${alloc_mib} MiB allocated" >&2

# median_of FILE [COL]: the median of column COL (the first by default).
median_of() { stats "$1" "${2:-1}" | awk '{ print $1 }'; }
# range_of FILE: "min-max" of the first column.
range_of() { stats "$1" | awk '{ print ($1 == "n/a") ? "n/a" : $2 "-" $3 }'; }

# 0. With PARTS=ova: the OVA upload against the pipe, nothing else.
if [ "$PARTS" = ova ]; then
  start_serve
  echo "building bench.ova ($OVA_FORMAT, manifest: $OVA_MANIFEST)..." >&2
  make_ova
  OVA_BYTES=$(stat -c %s "$OVA")
  cat "$OVA" >/dev/null
  OVA_HWM=n/a
  ova_hwm_reset=0
  if { echo 5 >"/proc/${PID[ovaio]}/clear_refs"; } 2>/dev/null; then ova_hwm_reset=1; fi
  : >"$WORK/ova-serve.t"
  : >"$WORK/ova-pipe.t"
  ova_rounds
  if [ "$ova_hwm_reset" = 1 ]; then OVA_HWM=$(status_kib "${PID[ovaio]}" VmHWM); fi
  stop_servers
  uptime >&2
  serve_s=$(median_of "$WORK/ova-serve.t")
  pipe_s=$(median_of "$WORK/ova-pipe.t")
  pipe_rss=$(awk '$2 > m { m = $2 } END { if (NR) printf "%.1f\n", m / 1024; else print "n/a" }' "$WORK/ova-pipe.t")
  row() { printf '%-28s %16s %16s %14s\n' "$@"; }
  echo
  echo "OVA upload over HTTPS ($OVA_CLIENT into ovaio serve) against cat | ovaio import -"
  echo "($IMAGE image, ${SIZE_MIB} MiB virtual, ${alloc_mib} MiB data; bench.ova: $OVA_FORMAT, $((OVA_BYTES / 1048576)) MiB,"
  echo " manifest $OVA_MANIFEST; raw target; median (min-max) of $REPS paired rounds, sync before each)"
  row "figure" "serve" "import -" "serve/import"
  row "time s median" "$serve_s" "$pipe_s" "$(ratio "$serve_s" "$pipe_s")"
  row "time s min-max" "$(range_of "$WORK/ova-serve.t")" "$(range_of "$WORK/ova-pipe.t")" ""
  row "MB/s (median)" "$(mbps "$OVA_BYTES" "$serve_s")" "$(mbps "$OVA_BYTES" "$pipe_s")" "$(ratio "$(mbps "$OVA_BYTES" "$serve_s")" "$(mbps "$OVA_BYTES" "$pipe_s")")"
  client_cpu=$(median_of "$WORK/ova-serve.t" 2)
  serve_cpu=$(median_of "$WORK/ova-serve.t" 3)
  cat_cpu=$(median_of "$WORK/ova-pipe.t" 3)
  pipe_cpu=$(median_of "$WORK/ova-pipe.t" 4)
  row "client CPU s (median)" "$client_cpu" "$cat_cpu" "$(ratio "$client_cpu" "$cat_cpu")"
  row "ovaio CPU s (median)" "$serve_cpu" "$pipe_cpu" "$(ratio "$serve_cpu" "$pipe_cpu")"
  all_serve=$(awk -v a="$client_cpu" -v b="$serve_cpu" 'BEGIN { printf "%.2f", a + b }')
  all_pipe=$(awk -v a="$cat_cpu" -v b="$pipe_cpu" 'BEGIN { printf "%.2f", a + b }')
  row "both CPU s" "$all_serve" "$all_pipe" "$(ratio "$all_serve" "$all_pipe")"
  row "peak RSS MiB" "$(mib "$OVA_HWM")" "$pipe_rss" ""
  cpus=$(nproc)
  bound=$(awk -v a="$all_serve" -v n="$cpus" 'BEGIN { printf "%.2f", a / n }')
  echo "client: $OVA_CLIENT. On $cpus CPUs the upload cannot take less than both processes' CPU time"
  echo "spread over all of them: $bound s, $(ratio "$bound" "$pipe_s") x the pipe's median time."
  speed=$(ratio "$pipe_s" "$serve_s")
  if [ "$speed" = n/a ]; then
    echo "target: not judged (a side has no verified run)"
  else
    awk -v s="$speed" 'BEGIN { printf "target: serve >= 0.95x the pipe'"'"'s throughput: %s (%.2fx)\n", (s + 0 >= 0.95) ? "PASS" : "FAIL", s }'
  fi
  [ "$BAD" -eq 0 ] || { echo "FAIL: some target differs from the source"; exit 2; }
  exit 0
fi

# 0. With BASELINE: this build against another, nothing else.
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || die "BASELINE $BASELINE is not an executable"
  start_serve
  start_serve baseline "$BASELINE" "$WORK/baseline"
  echo "ovaio pid ${PID[ovaio]}, baseline ($BASELINE) pid ${PID[baseline]}" >&2
  make_ova
  OVA_BYTES=$(stat -c %s "$OVA")
  cat "$SRC" "$OVA" >/dev/null
  : >"$WORK/single-ovaio.t"
  : >"$WORK/single-baseline.t"
  : >"$WORK/ova-serve.t"
  : >"$WORK/ova-serve-baseline.t"
  for ((r = 1; r <= REPS; r++)); do
    if ((r % 2)); then order="ovaio baseline"; else order="baseline ovaio"; fi
    for s in $order; do
      echo "round $r/$REPS: $s upload, OVA upload..." >&2
      sync
      c0=$(cpu_s "${PID[$s]}")
      single "$s" "$r" || true
      echo "$(awk -v a="$c0" -v b="$(cpu_s "${PID[$s]}")" 'BEGIN { print b - a }')" >>"$WORK/single-cpu-$s.t"
      rm -f "${DATA[$s]}/single.raw"
      sync
      c0=$(cpu_s "${PID[$s]}")
      ova_serve "$r" "$s" || true
      echo "$(awk -v a="$c0" -v b="$(cpu_s "${PID[$s]}")" 'BEGIN { print b - a }')" >>"$WORK/ova-cpu-$s.t"
    done
  done
  stop_servers
  row() { printf '%-34s %16s %16s %16s\n' "$@"; }
  cmp_row() { # LABEL BYTES FILE_OVAIO FILE_BASELINE
    local m_o m_b b_o b_b
    m_o=$(median_of "$3"); m_b=$(median_of "$4"); b_o=$(min_of "$3"); b_b=$(min_of "$4")
    row "$1 MB/s median (best)" "$(mbps "$2" "$m_o") ($(mbps "$2" "$b_o"))" \
      "$(mbps "$2" "$m_b") ($(mbps "$2" "$b_b"))" "$(ratio "$m_o" "$m_b") ($(ratio "$b_o" "$b_b"))"
  }
  echo
  echo "ovaio serve against a baseline build ($BASELINE), ${SIZE_MIB} MiB, $REPS rounds taking turns,"
  echo "OVA of a $OVA_FORMAT disk, manifest: $OVA_MANIFEST"
  echo "(time ratio ovaio/baseline: 1.02 means this build takes 2 % longer)"
  row "figure" "ovaio" "baseline" "time ovaio/base"
  cpu_row() { # LABEL FILE_OVAIO FILE_BASELINE
    local o b
    o=$(median_of "$2"); b=$(median_of "$3")
    row "$1 server CPU s (median)" "$o" "$b" "$(ratio "$o" "$b")"
  }
  cmp_row "image upload (imageio client)" "$SIZE" "$WORK/single-ovaio.t" "$WORK/single-baseline.t"
  cpu_row "image upload" "$WORK/single-cpu-ovaio.t" "$WORK/single-cpu-baseline.t"
  cmp_row "OVA upload ($OVA_CLIENT)" "$OVA_BYTES" "$WORK/ova-serve.t" "$WORK/ova-serve-baseline.t"
  cpu_row "OVA upload" "$WORK/ova-cpu-ovaio.t" "$WORK/ova-cpu-baseline.t"
  [ "$BAD" -eq 0 ] || { echo "FAIL: some target differs from the source"; exit 2; }
  exit 0
fi

# 1. one upload at a time, best of REPS, the servers' order alternating.
start_serve
start_daemon
echo "ovaio serve pid ${PID[ovaio]} port ${PORT[ovaio]}; ovirt-imageio $IMAGEIO_HAVE pid ${PID[imageio]} port ${PORT[imageio]}" >&2
for s in ovaio imageio; do IDLE[$s]=$(status_kib "${PID[$s]}" VmRSS); done
: >"$WORK/single-ovaio.t"
: >"$WORK/single-imageio.t"
for ((r = 1; r <= REPS; r++)); do
  if ((r % 2)); then order="ovaio imageio"; else order="imageio ovaio"; fi
  for s in $order; do
    echo "upload $r/$REPS: $s..." >&2
    single "$s" "$r" || true
  done
done
rm -f "$OV_ROOT/single.raw" "$IM_DIR/data/single.raw"
for s in ovaio imageio; do
  SINGLE_HWM[$s]=$(status_kib "${PID[$s]}" VmHWM)
  # CPU per upload: everything the server used since its start, over REPS.
  SINGLE_CPU[$s]=$(awk -v c="$(cpu_s "${PID[$s]}")" -v n="$REPS" 'BEGIN { printf "%.2f\n", c / n }')
done

# 2. OVA upload into ovaio serve against ovaio import from a pipe.
echo "building bench.ova ($OVA_FORMAT)..." >&2
make_ova
OVA_BYTES=$(stat -c %s "$OVA")
echo "  $((OVA_BYTES / 1048576)) MiB; warming the page cache" >&2
cat "$OVA" >/dev/null
# Peak RSS of the server over the OVA imports alone, when the kernel lets
# the high-water mark be reset (clear_refs 5).
OVA_HWM=n/a
ova_hwm_reset=0
if { echo 5 >"/proc/${PID[ovaio]}/clear_refs"; } 2>/dev/null; then ova_hwm_reset=1; fi
: >"$WORK/ova-serve.t"
: >"$WORK/ova-pipe.t"
ova_rounds
if [ "$ova_hwm_reset" = 1 ]; then OVA_HWM=$(status_kib "${PID[ovaio]}" VmHWM); fi
rm -f "$OVA"

# 3. CONCURRENCY uploads at once into freshly started servers.
echo "restarting both servers for $CONCURRENCY concurrent uploads..." >&2
stop_servers
start_serve
start_daemon
for s in ovaio imageio; do IDLE8[$s]=$(status_kib "${PID[$s]}" VmRSS); done
: >"$WORK/many-ovaio.each"
: >"$WORK/many-imageio.each"
for s in ovaio imageio; do
  echo "$CONCURRENCY concurrent uploads: $s..." >&2
  many "$s" || echo "n/a n/a n/a" >"$WORK/many-$s.t"
done
stop_servers
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
uptime >&2

# ----------------------------------------------------------------- report
ov_s=$(min_of "$WORK/single-ovaio.t")
im_s=$(min_of "$WORK/single-imageio.t")
ov_mbps=$(mbps "$SIZE" "$ov_s")
im_mbps=$(mbps "$SIZE" "$im_s")
read -r ov8_wall ov8_min ov8_max <"$WORK/many-ovaio.t"
read -r im8_wall im8_min im8_max <"$WORK/many-imageio.t"
ov8_mbps=$(mbps $((SIZE * CONCURRENCY)) "$ov8_wall")
im8_mbps=$(mbps $((SIZE * CONCURRENCY)) "$im8_wall")
per_transfer() { awk -v h="$1" -v i="$2" -v n="$CONCURRENCY" 'BEGIN { if (h !~ /^[0-9]+$/ || i !~ /^[0-9]+$/) print "n/a"; else printf "%.1f\n", (h - i) / 1024 / n }'; }
ov8_hwm=$(mib "${HWM[ovaio]:-n/a}")
im8_hwm=$(mib "${HWM[imageio]:-n/a}")
ov8_per=$(per_transfer "${HWM[ovaio]:-n/a}" "${IDLE8[ovaio]}")
im8_per=$(per_transfer "${HWM[imageio]:-n/a}" "${IDLE8[imageio]}")
serve_s=$(min_of "$WORK/ova-serve.t")
pipe_s=$(min_of "$WORK/ova-pipe.t")
pipe_rss=$(awk '$2 > m { m = $2 } END { if (NR) printf "%.1f\n", m / 1024; else print "n/a" }' "$WORK/ova-pipe.t")
serve_mbps=$(mbps "$OVA_BYTES" "$serve_s")
pipe_mbps=$(mbps "$OVA_BYTES" "$pipe_s")

row() { printf '%-40s %12s %12s %14s\n' "$@"; }
echo
echo "ovaio serve vs ovirt-imageio $IMAGEIO_HAVE daemon, same client (ovirt_imageio.client.upload)"
echo "(${SIZE_MIB} MiB virtual, ${alloc_mib} MiB data; MB = 10^6 bytes of virtual size; best of $REPS;"
echo " the client reads the source through qemu-nbd, cache=none)"
echo "($(nproc) CPUs; load average before: $LOAD_BEFORE, after: $LOAD_AFTER)"
row "figure" "ovaio" "imageio" "ovaio/imageio"
row "upload s (best)" "$ov_s" "$im_s" "$(ratio "$ov_s" "$im_s")"
row "upload MB/s" "$ov_mbps" "$im_mbps" "$(ratio "$ov_mbps" "$im_mbps")"
row "server CPU s per upload" "${SINGLE_CPU[ovaio]}" "${SINGLE_CPU[imageio]}" "$(ratio "${SINGLE_CPU[ovaio]}" "${SINGLE_CPU[imageio]}")"
row "server RSS idle MiB" "$(mib "${IDLE[ovaio]}")" "$(mib "${IDLE[imageio]}")" "$(ratio "$(mib "${IDLE[ovaio]}")" "$(mib "${IDLE[imageio]}")")"
row "server VmHWM after uploads MiB" "$(mib "${SINGLE_HWM[ovaio]}")" "$(mib "${SINGLE_HWM[imageio]}")" "$(ratio "$(mib "${SINGLE_HWM[ovaio]}")" "$(mib "${SINGLE_HWM[imageio]}")")"
row "${CONCURRENCY}-way wall s" "$ov8_wall" "$im8_wall" "$(ratio "$ov8_wall" "$im8_wall")"
row "${CONCURRENCY}-way aggregate MB/s" "$ov8_mbps" "$im8_mbps" "$(ratio "$ov8_mbps" "$im8_mbps")"
row "${CONCURRENCY}-way per client s (min-max)" "$ov8_min-$ov8_max" "$im8_min-$im8_max" ""
row "${CONCURRENCY}-way server CPU s" "${CPU8[ovaio]:-n/a}" "${CPU8[imageio]:-n/a}" "$(ratio "${CPU8[ovaio]:-n/a}" "${CPU8[imageio]:-n/a}")"
row "${CONCURRENCY}-way server VmHWM MiB" "$ov8_hwm" "$im8_hwm" "$(ratio "$ov8_hwm" "$im8_hwm")"
row "${CONCURRENCY}-way per transfer MiB" "$ov8_per" "$im8_per" "$(ratio "$ov8_per" "$im8_per")"
echo
echo "OVA upload: bench.ova ($OVA_FORMAT, $((OVA_BYTES / 1048576)) MiB) to a raw target; MB/s of OVA bytes"
row "figure" "serve" "import -" "serve/import"
row "time s (best)" "$serve_s" "$pipe_s" "$(ratio "$serve_s" "$pipe_s")"
row "MB/s" "$serve_mbps" "$pipe_mbps" "$(ratio "$serve_mbps" "$pipe_mbps")"
row "peak RSS MiB" "$(mib "$OVA_HWM")" "$pipe_rss" "$(ratio "$(mib "$OVA_HWM")" "$pipe_rss")"
if [ "$BAD" -ne 0 ]; then
  echo "FAIL: some target differs from the source (see above)"
  exit 2
fi
