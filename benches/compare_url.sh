#!/usr/bin/env bash
# Compares `ovaio import URL` with the pipeline it replaces, on the same
# package served over loopback HTTP, in one run:
#   url    ovaio import http://127.0.0.1:PORT/bench.ova --dir OUT
#   pipe   curl -sS http://127.0.0.1:PORT/bench.ova | ovaio import - --dir OUT
# The package: the source image (hard by default: runs of 4 KiB-32 MiB,
# mixed random, text and zeros) converted to FORMAT in a one-disk OVA with a
# SHA-256 manifest after the OVF (benches/lib/bench_ova.sh), so both rows
# verify it. The server is python3's http.server (one GET each; it sends
# the file with 64 KiB writes and ignores Range, which no row needs: nothing
# is cut). Paired rounds, the order alternating, outputs removed and `sync`
# before each run; median and min-max of the wall time, the ratio
# pipe/url (target >= 0.95: the URL import at least 95 % of the pipeline's
# speed) and the peak RSS of `ovaio import URL` (target < 64 MiB). The first
# target of each row is compared with the source by `qemu-img compare`.
#
# Environment:
#   IMAGE      hard (default) or simple (benches/lib/source_image.sh)
#   SIZE_MIB   virtual size of the disk in MiB (default 2048: about half is
#              data, so a qcow2 or VMDK package of about 1 GiB)
#   FORMAT     the disk in the package: qcow2 (default), vmdk or raw (a raw
#              package holds the whole virtual size)
#   TARGET     target format: raw (default) or qcow2
#   REPS       paired rounds (default 3)
#   OVAIO      ovaio binary (default target/release/ovaio, rebuilt)
#   BENCH_DIR  parent of the work directory (default /tmp/ovaio-bench)
#   KEEP=1     keep the work directory (less the images)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-hard}
SIZE_MIB=${SIZE_MIB:-2048}
FORMAT=${FORMAT:-qcow2}
TARGET=${TARGET:-raw}
REPS=${REPS:-3}
OVAIO=${OVAIO:-$ROOT/target/release/ovaio}
BENCH_DIR=${BENCH_DIR:-/tmp/ovaio-bench}
KEEP=${KEEP:-0}
TIME=/usr/bin/time

die() { echo "compare_url: $*" >&2; exit 1; }
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be an integer >= 1"
[[ $FORMAT =~ ^(qcow2|vmdk|raw)$ ]] || die "FORMAT must be qcow2, vmdk or raw"
[[ $TARGET =~ ^(raw|qcow2)$ ]] || die "TARGET must be raw or qcow2"
for t in qemu-img tar curl python3 awk sha256sum sync; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
[ -x "$TIME" ] || die "$TIME (GNU time) is required"
if [ "$OVAIO" = "$ROOT/target/release/ovaio" ]; then
  echo "building ovaio (release)..." >&2
  (cd "$ROOT" && cargo build --release >&2) || die "cargo build failed"
fi
"$OVAIO" import --help | grep -q 'http://' || die "$OVAIO cannot import from a URL"

mkdir -p "$BENCH_DIR"
WORK=$(cd "$(mktemp -d "$BENCH_DIR/url.XXXXXX")" && pwd -P)
HTTP_PID=""
cleanup() {
  if [ -n "$HTTP_PID" ]; then
    kill "$HTTP_PID" 2>/dev/null || true
    wait "$HTTP_PID" 2>/dev/null || true
  fi
  if [ "$KEEP" = 1 ]; then
    find "$WORK" \( -name '*.img' -o -name '*.ova' -o -name '*.raw' -o -name '*.qcow2' \) -delete
    echo "work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SIZE=$((SIZE_MIB * 1024 * 1024))
SRC=$WORK/source.img
echo "writing the ${SIZE_MIB} MiB source image ($IMAGE)..." >&2
# shellcheck source=benches/lib/source_image.sh
. "$ROOT/benches/lib/source_image.sh"
# shellcheck source=benches/lib/stats.sh
. "$ROOT/benches/lib/stats.sh"
make_source "$SRC" "$SIZE"
# shellcheck source=benches/lib/bench_ova.sh
. "$ROOT/benches/lib/bench_ova.sh"
mkdir -p "$WORK/www"
PKG=$WORK/www/bench.ova
echo "packing it as $FORMAT..." >&2
make_bench_ova "$SRC" "$FORMAT" "$SIZE" "$PKG" "$WORK/pack" after-ovf
LEN=$(stat -c %s "$PKG")
STEM=$(href_of "$FORMAT")
STEM=${STEM%.*}
# Both rows read the package from the page cache.
cat "$PKG" >/dev/null

# The server: its port from its first line.
python3 -u -m http.server --bind 127.0.0.1 --directory "$WORK/www" 0 \
  >"$WORK/http.out" 2>"$WORK/http.log" &
HTTP_PID=$!
for _ in $(seq 100); do grep -q 'port' "$WORK/http.out" 2>/dev/null && break; sleep 0.1; done
HTTP_PORT=$(sed -n 's/.* port \([0-9]*\) .*/\1/p' "$WORK/http.out" | head -1)
[ -n "$HTTP_PORT" ] || die "python3 -m http.server did not start: $(cat "$WORK/http.log")"
URL=http://127.0.0.1:$HTTP_PORT/bench.ova
curl -sSfI "$URL" >/dev/null || die "the package is not served at $URL"

OUT=$WORK/out
BAD=0
# one ROW ROUND: a timed import into an empty OUT ("secs kib" appended to
# WORK/t-ROW), the target checked on the first round.
one() {
  local row=$1 r=$2 s e rc=0
  rm -rf "$OUT"
  mkdir -p "$OUT"
  sync
  s=$(date +%s.%N)
  case $row in
    url)
      "$TIME" -f '%M' -o "$WORK/rss" "$OVAIO" import "$URL" --dir "$OUT" --format "$TARGET" -q >/dev/null \
        2>"$WORK/err" || rc=$?
      ;;
    pipe)
      curl -sS "$URL" |
        "$TIME" -f '%M' -o "$WORK/rss" "$OVAIO" import - --dir "$OUT" --format "$TARGET" -q >/dev/null \
          2>"$WORK/err" || rc=$?
      ;;
  esac
  e=$(date +%s.%N)
  if [ "$rc" -ne 0 ]; then
    echo "  $row round $r failed ($rc): $(tail -3 "$WORK/err")" >&2
    BAD=1
    return 0
  fi
  echo "$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }') $(tail -1 "$WORK/rss")" >>"$WORK/t-$row"
  if [ "$r" -eq 1 ]; then
    qemu-img compare -q -f raw -F "$TARGET" "$SRC" "$OUT/$STEM.$TARGET" ||
      { echo "  WRONG: $row: the target differs from the source" >&2; BAD=1; }
  fi
}

: >"$WORK/t-url"
: >"$WORK/t-pipe"
for ((r = 1; r <= REPS; r++)); do
  for row in $( ((r % 2)) && echo "url pipe" || echo "pipe url"); do
    echo "round $r/$REPS: $row..." >&2
    one "$row" "$r"
  done
done
rm -rf "$OUT"


read -r u_med u_lo u_hi < <(stats "$WORK/t-url")
read -r p_med p_lo p_hi < <(stats "$WORK/t-pipe")
U_RSS=$(max_rss "$WORK/t-url")
P_RSS=$(max_rss "$WORK/t-pipe")
echo
echo "ovaio import from a URL vs curl | ovaio import -: $((LEN >> 20)) MiB package ($FORMAT disk of $SIZE_MIB MiB, $IMAGE image, manifest after the OVF) into $TARGET"
echo "loopback python3 http.server; $REPS paired rounds, sync before each; $(nproc) CPUs"
printf '%-34s %9s %15s %8s %12s\n' "method" "median s" "min-max s" "MB/s" "RSS MiB"
printf '%-34s %9s %15s %8s %12s\n' "ovaio import URL" "$u_med" "$u_lo-$u_hi" "$(mbps "$LEN" "$u_med")" "$U_RSS"
printf '%-34s %9s %15s %8s %12s\n' "curl URL | ovaio import -" "$p_med" "$p_lo-$p_hi" "$(mbps "$LEN" "$p_med")" "$P_RSS"
awk -v u="$u_med" -v p="$p_med" -v rss="$U_RSS" 'BEGIN {
  if (u !~ /^[0-9.]+$/ || p !~ /^[0-9.]+$/ || u <= 0) { print "ratio: n/a"; exit }
  r = p / u
  printf "pipe/url (speed of the URL import relative to the pipeline): %.2f (target >= 0.95): %s\n", r, (r >= 0.95 ? "PASS" : "FAIL")
  if (rss ~ /^[0-9.]+$/) printf "peak RSS of ovaio import URL: %.1f MiB (target < 64 MiB): %s\n", rss, (rss < 64 ? "PASS" : "FAIL") }'
[ "$BAD" -eq 0 ] || { echo "FAIL: a run failed or a target differs from its source"; exit 2; }
