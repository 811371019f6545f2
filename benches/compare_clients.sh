#!/usr/bin/env bash
# Compares `ovaio upload` with the ovirt_imageio client on the same input,
# in one run: the same raw image (about half data) uploaded into an
# `image` ticket of the same `ovaio serve` (a raw target, emptied before
# each run), by
#   ovaio     `ovaio upload SRC URL --cacert CA`
#   imageio   `ovirt_imageio.client.upload(SRC, URL, CA)` (the time of the
#             call, without the interpreter's start-up)
# Paired rounds, the order alternating, `sync` before each; median with
# min and max; MB/s of the image's virtual size and the ratio
# ovaio/imageio (target >= 1.0). Every target is compared with the source
# by `qemu-img compare`.
#
# Environment:
#   SIZE_MIB   virtual size of the image in MiB (default 1024)
#   IMAGE      simple (default) or hard (benches/lib/hard_image.py)
#   REPS       rounds (default 3)
#   BENCH_DIR  parent of the work directory (default /tmp/ovaio-bench)
#   KEEP=1     keep the work directory
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
IMAGE=${IMAGE:-simple}
REPS=${REPS:-3}
BENCH_DIR=${BENCH_DIR:-/tmp/ovaio-bench}
KEEP=${KEEP:-0}
OVAIO=$ROOT/target/release/ovaio
VENV=$ROOT/target/test-venv
PY=$VENV/bin/python

die() { echo "compare_clients: $*" >&2; exit 1; }
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be an integer >= 1"
for t in qemu-img curl awk python3; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
"$PY" -c 'import ovirt_imageio.client' 2>/dev/null ||
  die "the ovirt_imageio client is required in $VENV (run scripts/test.sh once)"

echo "building ovaio (release)..." >&2
(cd "$ROOT" && cargo build --release >&2) || die "cargo build failed"

mkdir -p "$BENCH_DIR"
WORK=$(cd "$(mktemp -d "$BENCH_DIR/run.XXXXXX")" && pwd -P)
[ ${#WORK} -le 60 ] || die "BENCH_DIR is too long for the sockets: $WORK"
# shellcheck source=benches/lib/servers.sh
. "$ROOT/benches/lib/servers.sh"
trap "finish_work -name '*.img'" EXIT
trap 'exit 130' INT TERM

SIZE=$((SIZE_MIB * 1024 * 1024))
SRC=$WORK/source.img
echo "writing the ${SIZE_MIB} MiB source image ($IMAGE)..." >&2
# shellcheck source=benches/lib/source_image.sh
. "$ROOT/benches/lib/source_image.sh"
# shellcheck source=benches/lib/stats.sh
. "$ROOT/benches/lib/stats.sh"
make_source "$SRC" "$SIZE"

start_ovaio ovaio "$OVAIO" "$WORK/ovaio"
TARGET=$WORK/ovaio/root/target.img
cat >"$WORK/upload.py" <<'PY'
import sys
import time

from ovirt_imageio import client

src, url, cafile = sys.argv[1:4]
start = time.monotonic()
client.upload(src, url, cafile)
print(f"{time.monotonic() - start:.3f}")
PY

BAD=0
# one WHO ROUND: an empty target, a ticket, the upload, the check.
one() {
  local who=$1 r=$2 id="up-$1-$2" s e
  rm -f "$TARGET"
  truncate -s "$SIZE" "$TARGET"
  control ovaio PUT "/tickets/$id" \
    "$(printf '{"uuid":"%s","size":%d,"url":"file://%s","ops":["read","write"],"timeout":3600}' "$id" "$SIZE" "$TARGET")" ||
    return 1
  local url="https://127.0.0.1:${PORT[ovaio]}/images/$id"
  sync
  if [ "$who" = ovaio ]; then
    s=$(date +%s.%N)
    "$OVAIO" upload "$SRC" "$url" --cacert "${CA[ovaio]}" -q >"$WORK/up.out" 2>"$WORK/up.err" ||
      { echo "  ovaio upload $r failed: $(tail -3 "$WORK/up.err")" >&2; return 1; }
    e=$(date +%s.%N)
    awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f\n", e - s }' >>"$WORK/t-ovaio"
  else
    "$PY" "$WORK/upload.py" "$SRC" "$url" "${CA[ovaio]}" >"$WORK/up.out" 2>"$WORK/up.err" ||
      { echo "  imageio upload $r failed: $(tail -3 "$WORK/up.err")" >&2; return 1; }
    tail -1 "$WORK/up.out" >>"$WORK/t-imageio"
  fi
  control ovaio DELETE "/tickets/$id" || true
  qemu-img compare -q -f raw -F raw "$SRC" "$TARGET" ||
    { echo "  WRONG: $who round $r: the target differs from the source" >&2; BAD=1; }
}

: >"$WORK/t-ovaio"
: >"$WORK/t-imageio"
for ((r = 1; r <= REPS; r++)); do
  for who in $( ((r % 2)) && echo "ovaio imageio" || echo "imageio ovaio"); do
    echo "round $r/$REPS: $who..." >&2
    one "$who" "$r" || true
  done
done


echo
echo "image upload into an ovaio image ticket: ${SIZE_MIB} MiB ($IMAGE image), $REPS rounds; $(nproc) CPUs"
printf '%-40s %10s %10s %10s\n' "client" "MB/s med" "min" "max"
read -r o_med o_lo o_hi < <(stats "$WORK/t-ovaio")
read -r i_med i_lo i_hi < <(stats "$WORK/t-imageio")
printf '%-40s %10s %10s %10s\n' "ovaio upload" "$(mbps "$SIZE" "$o_med")" "$(mbps "$SIZE" "$o_hi")" "$(mbps "$SIZE" "$o_lo")"
printf '%-40s %10s %10s %10s\n' "ovirt_imageio client.upload" "$(mbps "$SIZE" "$i_med")" "$(mbps "$SIZE" "$i_hi")" "$(mbps "$SIZE" "$i_lo")"
awk -v o="$o_med" -v i="$i_med" 'BEGIN {
  if (o !~ /^[0-9.]+$/ || i !~ /^[0-9.]+$/ || o <= 0) { print "ratio: n/a"; exit }
  r = i / o; printf "ovaio/imageio: %.2fx (target >= 1.0): %s\n", r, (r >= 1.0 ? "PASS" : "FAIL") }'
[ "$BAD" -eq 0 ] || { echo "FAIL: a target differs from its source"; exit 2; }
