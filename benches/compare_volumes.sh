#!/usr/bin/env bash
# Compares ovaio's volume layer with the tools oVirt uses for qcow2 disks,
# on the same input, in one run:
#   upload   ovirt_imageio.client.upload(image, url, cafile) of the same raw
#            image (about half data) into an empty qcow2 volume:
#              ovaio      an image ticket on the qcow2 file itself (ovaio's
#                         own qcow2 backend);
#              imageio    the ovirt-imageio daemon with a ticket on
#                         nbd:unix:SOCK, qemu-nbd serving the qcow2 file the
#                         way vdsm starts it;
#              ovaio-nbd  ovaio with a ticket on the same kind of qemu-nbd
#                         socket (ovaio's NBD backend).
#            Paired rounds, the servers' order rotating, `sync` between
#            runs; median with min and max; MB/s and ratios against imageio.
#            Also the CPU time the server side spent on each upload (the
#            server process, plus qemu-nbd where one serves the volume):
#            the client shares the machine, so on few cores the client's
#            own CPU bounds every server's throughput, and the CPU ratio
#            shows what each server costs per byte.
#   writes   COUNT random 64 KiB writes (the same offsets for both) into an
#            empty qcow2 image: ovaio's volume layer (benches/volume_writes.rs)
#            against `qemu-io -t writeback` fed the same `write` commands
#            and a final `flush`; writes per second, median of REPS.
# Every uploaded volume is compared with the source by `qemu-img compare`
# and checked by `qemu-img check`.
#
# Environment:
#   SIZE_MIB   virtual size of the image in MiB (default 1024)
#   REPS       rounds (default 3)
#   COUNT      random writes per run (default 8192: 512 MiB)
#   LOCAL=1    both servers also serve their data API on a Unix socket
#              (ovaio: --data-socket; imageio: its [local] service, on by
#              default in oVirt) and the client, seeing it advertised,
#              moves there off TLS; default 0: TLS on both
#   SERVERS    the uploads to run (default "ovaio imageio ovaio-nbd";
#              imageio is the reference of the ratios)
#   BENCH_DIR  parent of the work directory (default /tmp/ovaio-bench)
#   KEEP=1     keep the work directory
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
REPS=${REPS:-3}
COUNT=${COUNT:-8192}
SERVERS=${SERVERS:-ovaio imageio ovaio-nbd}
BENCH_DIR=${BENCH_DIR:-/tmp/ovaio-bench}
KEEP=${KEEP:-0}
LOCAL=${LOCAL:-0}
OVAIO=$ROOT/target/release/ovaio
VENV=$ROOT/target/test-venv
PY=$VENV/bin/python
START_TIMEOUT=30

die() { echo "compare_volumes: $*" >&2; exit 1; }
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be an integer >= 1"
[[ $COUNT =~ ^[0-9]+$ && $COUNT -ge 1 ]] || die "COUNT must be an integer >= 1"
for w in $SERVERS; do
  case $w in ovaio | imageio | ovaio-nbd) ;; *) die "SERVERS: unknown upload '$w'" ;; esac
done
for t in qemu-img qemu-nbd qemu-io curl truncate awk sed python3; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
"$PY" -c 'import ovirt_imageio.client' 2>/dev/null && [ -x "$VENV/bin/ovirt-imageio" ] ||
  die "the ovirt-imageio daemon and client are required in $VENV (run scripts/test.sh once)"

echo "building ovaio and the write bench (release)..." >&2
(cd "$ROOT" && cargo build --release >&2 && cargo bench --no-run --bench volume_writes >&2) ||
  die "cargo build failed"
WRITES_BIN=$(cd "$ROOT" && cargo bench --no-run --bench volume_writes --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "volume_writes" and m.get("executable"):
        print(m["executable"])')
[ -x "$WRITES_BIN" ] || die "cannot find the volume_writes bench binary"

mkdir -p "$BENCH_DIR"
WORK=$(cd "$(mktemp -d "$BENCH_DIR/run.XXXXXX")" && pwd -P)
[ ${#WORK} -le 60 ] || die "BENCH_DIR is too long for the sockets: $WORK"
# shellcheck source=benches/lib/servers.sh
. "$ROOT/benches/lib/servers.sh"
NBD_PID=
cleanup() {
  [ -n "$NBD_PID" ] && stop_pid "$NBD_PID"
  finish_work \( -name '*.img' -o -name '*.qcow2' \)
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SIZE=$((SIZE_MIB * 1024 * 1024))
SRC=$WORK/source.img
OV_DIR=$WORK/ovaio
IM_DIR=$WORK/imageio
mkdir -p "$OV_DIR/state" "$OV_DIR/root" "$IM_DIR/conf/conf.d" "$IM_DIR/run"
CERT=$OV_DIR/state/tls/server.crt
KEY=$OV_DIR/state/tls/server.key
VOL=$OV_DIR/root/vol.qcow2
NBD_SOCK=$WORK/nbd.sock

# shellcheck source=benches/lib/source_image.sh
. "$ROOT/benches/lib/source_image.sh"
# shellcheck source=benches/lib/stats.sh
. "$ROOT/benches/lib/stats.sh"
echo "writing the ${SIZE_MIB} MiB source image..." >&2
make_source "$SRC" "$SIZE"

start_ovaio_server() {
  local extra=()
  [ "$LOCAL" = 1 ] && extra=(--data-socket "$OV_DIR/data.sock")
  start_ovaio ovaio "$OVAIO" "$OV_DIR" "${extra[@]}"
}

start_imageio_server() {
  local extra=()
  [ "$LOCAL" = 1 ] && extra=(--local)
  start_imageio imageio "$IM_DIR" "$KEY" "$CERT" "${extra[@]}"
}

# fresh_volume: an empty qcow2 image at VOL (64 KiB clusters, as vdsm makes them).
fresh_volume() {
  rm -f "$VOL"
  qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=65536 "$VOL" "$SIZE"
}

# start_nbd: qemu-nbd on VOL as vdsm starts it for a transfer.
start_nbd() {
  rm -f "$NBD_SOCK"
  qemu-nbd --socket="$NBD_SOCK" --persistent --shared=8 --format=qcow2 --cache=none \
    --aio=native --discard=unmap --allocation-depth "$VOL" </dev/null 2>>"$WORK/qemu-nbd.err" &
  NBD_PID=$!
  local i
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    [ -S "$NBD_SOCK" ] && return 0
    kill -0 "$NBD_PID" 2>/dev/null || die "qemu-nbd exited: $(tail -3 "$WORK/qemu-nbd.err")"
    sleep 0.1
  done
  die "qemu-nbd did not create its socket"
}
stop_nbd() { [ -n "$NBD_PID" ] && stop_pid "$NBD_PID"; NBD_PID=; }

cat >"$WORK/upload.py" <<'EOF'
import sys
import time

from ovirt_imageio import client

src, url, cafile = sys.argv[1:4]
start = time.monotonic()
client.upload(src, url, cafile)
print(f"{time.monotonic() - start:.3f}")
EOF

BAD=0
# one_upload WHO ROUND: a fresh volume, a ticket, the client's upload, checks.
one_upload() {
  local who=$1 r=$2 id="up-$1-$2" srv url
  fresh_volume
  case $who in
    ovaio) srv=ovaio; url="file://$VOL" ;;
    imageio) srv=imageio; start_nbd; url="nbd:unix:$NBD_SOCK" ;;
    ovaio-nbd) srv=ovaio; start_nbd; url="nbd:unix:$NBD_SOCK" ;;
  esac
  control "$srv" PUT "/tickets/$id" \
    "$(printf '{"uuid":"%s","size":%d,"url":"%s","ops":["read","write"],"timeout":3600,"sparse":true}' "$id" "$SIZE" "$url")" ||
    { stop_nbd; return 1; }
  sync
  local cpu0 cpu1
  cpu0=$(server_ticks "$srv")
  if "$PY" "$WORK/upload.py" "$SRC" "https://127.0.0.1:${PORT[$srv]}/images/$id" "${CA[$srv]}" \
    >"$WORK/up.out" 2>"$WORK/up.err"; then
    cpu1=$(server_ticks "$srv")
    control "$srv" DELETE "/tickets/$id" || true
    stop_nbd
    if qemu-img compare -q -f raw -F qcow2 "$SRC" "$VOL" && qemu-img check -q "$VOL"; then
      awk -v a="$cpu0" -v b="$cpu1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f\n", (b - a) / hz }' >>"$WORK/cpu-$who.t"
    tail -1 "$WORK/up.out" >>"$WORK/up-$who.t"
    else
      echo "  WRONG: $who round $r: the volume differs from the source or fails check" >&2
      BAD=1
    fi
  else
    echo "  $who upload $r failed: $(tail -3 "$WORK/up.err")" >&2
    control "$srv" DELETE "/tickets/$id" || true
    stop_nbd
  fi
}

# server_ticks SRV: CPU ticks (user + system) used so far by the server
# process and, when one runs, qemu-nbd (started afresh for each upload).
server_ticks() {
  local t=0 p
  for p in "${PID[$1]}" $NBD_PID; do
    t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b <= 0) print "n/a"; else printf "%.2f", a / b }'; }

# ------------------------------------------------------------------ uploads
start_ovaio_server
start_imageio_server
read -r -a WHO <<<"$SERVERS"
for w in "${WHO[@]}"; do : >"$WORK/up-$w.t"; : >"$WORK/cpu-$w.t"; done
for ((r = 1; r <= REPS; r++)); do
  for ((k = 0; k < ${#WHO[@]}; k++)); do
    w=${WHO[$(((k + r - 1) % ${#WHO[@]}))]}
    echo "upload $r/$REPS: $w..." >&2
    one_upload "$w" "$r" || true
  done
done

# ------------------------------------------------------------------- writes
# The offsets: xorshift64* as in benches/volume_writes.rs.
python3 - "$COUNT" "$SIZE" 7 >"$WORK/qemu-io.cmds" <<'EOF'
import sys
count, size, seed = map(int, sys.argv[1:4])
slots, x, mask = size // 65536, max(seed, 1), (1 << 64) - 1
for _ in range(count):
    x ^= x >> 12
    x = (x ^ (x << 25)) & mask
    x ^= x >> 27
    print(f"write -q -P 0x5a {((x * 0x2545F4914F6CDD1D) & mask) % slots * 65536} 64k")
print("flush")
EOF
: >"$WORK/w-ovaio.t"
: >"$WORK/w-qemu.t"
for ((r = 1; r <= REPS; r++)); do
  for who in $( ((r % 2)) && echo "ovaio qemu" || echo "qemu ovaio"); do
    fresh_volume
    sync
    echo "writes $r/$REPS: $who..." >&2
    if [ "$who" = ovaio ]; then
      "$WRITES_BIN" "$VOL" "$COUNT" 7 >>"$WORK/w-ovaio.t"
    else
      s=$(date +%s.%N)
      qemu-io -t writeback -f qcow2 "$VOL" <"$WORK/qemu-io.cmds" >/dev/null
      e=$(date +%s.%N)
      awk -v n="$COUNT" -v s="$s" -v e="$e" 'BEGIN { printf "%.0f\n", n / (e - s) }' >>"$WORK/w-qemu.t"
    fi
    qemu-img check -q "$VOL" || { echo "  WRONG: $who writes left an image that fails check" >&2; BAD=1; }
  done
done

# ------------------------------------------------------------------- report
echo
echo "qcow2 volumes, ${SIZE_MIB} MiB image (about half data), $REPS rounds; $(nproc) CPUs; client over $([ "$LOCAL" = 1 ] && echo "the servers' Unix sockets" || echo TLS)"
printf '%-44s %10s %10s %10s %8s\n' "upload (ovirt_imageio client)" "MB/s med" "min" "max" "/imageio"
read -r im_med _ _ < <(stats "$WORK/up-imageio.t")
for w in "${WHO[@]}"; do
  read -r med lo hi < <(stats "$WORK/up-$w.t")
  # Slowest time is the lowest rate.
  printf '%-44s %10s %10s %10s %8s\n' "$w" "$(mbps "$SIZE" "$med")" "$(mbps "$SIZE" "$hi")" "$(mbps "$SIZE" "$lo")" "$(ratio "$im_med" "$med")"
done
echo
printf '%-44s %10s %10s %10s %8s\n' "server CPU per upload (with qemu-nbd)" "CPU-s med" "min" "max" "imageio/"
read -r im_cpu _ _ < <(stats "$WORK/cpu-imageio.t")
for w in "${WHO[@]}"; do
  read -r med lo hi < <(stats "$WORK/cpu-$w.t")
  printf '%-44s %10s %10s %10s %8s\n' "$w" "$med" "$lo" "$hi" "$(ratio "$im_cpu" "$med")"
done
echo
printf '%-44s %10s %10s %10s %8s\n' "random 64 KiB writes ($COUNT)" "writes/s" "min" "max" "/qemu-io"
read -r q_med q_lo q_hi < <(stats "$WORK/w-qemu.t")
read -r o_med o_lo o_hi < <(stats "$WORK/w-ovaio.t")
printf '%-44s %10s %10s %10s %8s\n' "ovaio volume layer" "$o_med" "$o_lo" "$o_hi" "$(ratio "$o_med" "$q_med")"
printf '%-44s %10s %10s %10s %8s\n' "qemu-io -t writeback" "$q_med" "$q_lo" "$q_hi" "1.00"
[ "$BAD" -eq 0 ] || { echo "FAIL: a volume differs from its source or fails qemu-img check"; exit 2; }
