#!/usr/bin/env bash
# Compares `ovaio export -o s3://` with exporting to a file and copying it
# with the AWS CLI, on the same source and the same object storage (s3s-fs
# on loopback), in one run:
#   s3     ovaio export --name vm --disk disk1.qcow2=SRC:FMT -o s3://bench/a.ova
#          (a multipart upload fed while the package is written; parts of
#          8 MiB by default, at most 3 in flight)
#   peer   ovaio export ... -o local.ova && aws s3 cp local.ova s3://bench/b.ova
#          (the AWS CLI's defaults: multipart above 8 MiB, 8 MiB parts, 10
#          requests at once; shown at the start)
# The source: the hard image (runs of 4 KiB-32 MiB, mixed random, text and
# zeros) as FORMAT. The object storage's root and local.ova are both in
# the work directory, on one file system. Paired rounds, the order
# alternating, the run's object (and local.ova) removed and `sync` before
# each run;
# median and min-max of the wall time, the ratio peer/s3 (target >= 1.5)
# and the peak RSS of `ovaio export -o s3://` (target < 64 MiB). Both
# objects must hold the very members of local.ova, and the package must
# import back to the source (checked on the last round's, outside the
# timing).
#
# Environment:
#   IMAGE      hard (default) or simple (benches/lib/source_image.sh)
#   SIZE_MIB   virtual size of the disk in MiB (default 2048: about 1 GiB
#              of data, so a package of about 1 GiB)
#   FORMAT     the source volume: qcow2 (default) or raw
#   PART_SIZE  ovaio's --part-size (default: ovaio's own, 8M)
#   REPS       paired rounds (default 3)
#   OVAIO      ovaio binary (default target/release/ovaio, rebuilt)
#   S3S        the s3s-fs binary (default $OVAIO_TEST_S3S, else
#              target/tools/bin/s3s-fs)
#   VENV       the venv with the AWS CLI (default target/test-venv; awscli
#              is installed into it with pip when missing)
#   BENCH_DIR  parent of the work directory (default /tmp/ovaio-bench)
#   KEEP=1     keep the work directory (less the images and packages)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-hard}
SIZE_MIB=${SIZE_MIB:-2048}
FORMAT=${FORMAT:-qcow2}
PART_SIZE=${PART_SIZE:-}
REPS=${REPS:-3}
OVAIO=${OVAIO:-$ROOT/target/release/ovaio}
S3S=${S3S:-${OVAIO_TEST_S3S:-$ROOT/target/tools/bin/s3s-fs}}
VENV=${VENV:-$ROOT/target/test-venv}
BENCH_DIR=${BENCH_DIR:-/tmp/ovaio-bench}
KEEP=${KEEP:-0}
TIME=/usr/bin/time
BUCKET=bench

die() { echo "compare_s3: $*" >&2; exit 1; }
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be an integer >= 1"
[[ $FORMAT =~ ^(qcow2|raw)$ ]] || die "FORMAT must be qcow2 or raw"
for t in qemu-img python3 tar awk cmp sha256sum sync; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
[ -x "$TIME" ] || die "$TIME (GNU time) is required"
[ -x "$S3S" ] || die "no s3s-fs at $S3S: set OVAIO_TEST_S3S, or install it with
  cargo install s3s-fs --version 0.14.1 --features binary --locked --root $ROOT/target/tools"
if [ ! -x "$VENV/bin/aws" ]; then
  echo "installing awscli into $VENV..." >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || die "cannot make the venv $VENV"
  "$VENV/bin/pip" install -q awscli >&2 || die "pip install awscli failed"
fi
AWS=$VENV/bin/aws
if [ "$OVAIO" = "$ROOT/target/release/ovaio" ]; then
  echo "building ovaio (release)..." >&2
  (cd "$ROOT" && cargo build --release >&2) || die "cargo build failed"
fi
"$OVAIO" export --help | grep -q 's3://' || die "$OVAIO cannot export into s3://"

mkdir -p "$BENCH_DIR"
WORK=$(cd "$(mktemp -d "$BENCH_DIR/s3.XXXXXX")" && pwd -P)
S3_PID=""
cleanup() {
  if [ -n "$S3_PID" ]; then
    kill "$S3_PID" 2>/dev/null || true
    wait "$S3_PID" 2>/dev/null || true
  fi
  if [ "$KEEP" = 1 ]; then
    find "$WORK" -type f \( -name '*.img' -o -name '*.ova' -o -name '*.qcow2' -o -path "$WORK/s3/*" \) -delete
    echo "work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SIZE=$((SIZE_MIB * 1024 * 1024))
RAW=$WORK/source.img
echo "writing the ${SIZE_MIB} MiB source image ($IMAGE)..." >&2
# shellcheck source=benches/lib/source_image.sh
. "$ROOT/benches/lib/source_image.sh"
# shellcheck source=benches/lib/stats.sh
. "$ROOT/benches/lib/stats.sh"
make_source "$RAW" "$SIZE"
if [ "$FORMAT" = qcow2 ]; then
  SRC=$WORK/source.qcow2
  qemu-img convert -f raw -O qcow2 "$RAW" "$SRC"
else
  SRC=$RAW
fi
# Every run reads the source from the page cache.
cat "$SRC" >/dev/null

# The object storage: a bucket is a directory under its root.
mkdir -p "$WORK/s3/$BUCKET"
S3_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=ovaio-bench AWS_SECRET_ACCESS_KEY=ovaio-bench-secret
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
"$S3S" --host 127.0.0.1 --port "$S3_PORT" \
  --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/s3" \
  >"$WORK/s3s.log" 2>&1 &
S3_PID=$!
for _ in $(seq 100); do
  "$AWS" s3 ls "s3://$BUCKET" >/dev/null 2>&1 && break
  kill -0 "$S3_PID" 2>/dev/null || die "s3s-fs exited: $(tail -5 "$WORK/s3s.log")"
  sleep 0.1
done
"$AWS" s3 ls "s3://$BUCKET" >/dev/null || die "s3s-fs does not answer on $AWS_ENDPOINT_URL"
aws_setting() { "$AWS" configure get "default.s3.$1" 2>/dev/null || echo "default ($2)"; }
echo "aws s3 cp settings: multipart_threshold $(aws_setting multipart_threshold 8MB)," \
  "multipart_chunksize $(aws_setting multipart_chunksize 8MB)," \
  "max_concurrent_requests $(aws_setting max_concurrent_requests 10)" >&2

EXPORT=("$OVAIO" export --name vm --disk "disk1.qcow2=$SRC:$FORMAT" -q)
PART_ARGS=()
[ -n "$PART_SIZE" ] && PART_ARGS=(--part-size "$PART_SIZE")
LOCAL=$WORK/local.ova

# The peer as one script, timed as a whole.
cat >"$WORK/peer.sh" <<'EOF'
set -eu
aws=$1 local=$2 object=$3
shift 3
"$@" -o "$local"
"$aws" s3 cp --only-show-errors "$local" "$object"
EOF

BAD=0
# one ROW ROUND: a timed export ("secs kib" appended to WORK/t-ROW) after
# its last object (and the peer's file) is removed; the last round's stay.
one() {
  local row=$1 r=$2 s e rc=0
  case $row in
    s3) rm -f "$WORK/s3/$BUCKET/a.ova" ;;
    peer) rm -f "$WORK/s3/$BUCKET/b.ova" "$LOCAL" "$LOCAL.partial" ;;
  esac
  sync
  s=$(date +%s.%N)
  case $row in
    s3)
      "$TIME" -f '%M' -o "$WORK/rss" "${EXPORT[@]}" "${PART_ARGS[@]}" -o "s3://$BUCKET/a.ova" \
        >/dev/null 2>"$WORK/err" || rc=$?
      ;;
    peer)
      bash "$WORK/peer.sh" "$AWS" "$LOCAL" "s3://$BUCKET/b.ova" "${EXPORT[@]}" >/dev/null 2>"$WORK/err" || rc=$?
      echo 0 >"$WORK/rss"
      ;;
  esac
  e=$(date +%s.%N)
  if [ "$rc" -ne 0 ]; then
    echo "  $row round $r failed ($rc): $(tail -3 "$WORK/err")" >&2
    BAD=1
    return 0
  fi
  echo "$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }') $(tail -1 "$WORK/rss")" >>"$WORK/t-$row"
}

: >"$WORK/t-s3"
: >"$WORK/t-peer"
for ((r = 1; r <= REPS; r++)); do
  for row in $( ((r % 2)) && echo "s3 peer" || echo "peer s3"); do
    echo "round $r/$REPS: $row..." >&2
    one "$row" "$r"
  done
done

# Outside the timing, on the last round's objects: both hold the members
# of the peer's local export, byte for byte (the tar headers' times are
# each export's own), and the package imports back to the source.
members() { tar -tvf "$1" | awk '{ print $3, $6 }'; tar -xOf "$1" | sha256sum; }
members "$LOCAL" >"$WORK/members.want" || { echo "  cannot read $LOCAL" >&2; BAD=1; }
for o in a b; do
  members "$WORK/s3/$BUCKET/$o.ova" 2>&1 | cmp -s - "$WORK/members.want" ||
    { echo "  WRONG: s3://$BUCKET/$o.ova differs from the exported file" >&2; BAD=1; }
done
mkdir -p "$WORK/back"
if "$OVAIO" import "$WORK/s3/$BUCKET/a.ova" --dir "$WORK/back" -q >/dev/null; then
  qemu-img compare -q -f "$FORMAT" -F raw "$SRC" "$WORK/back/disk1.raw" ||
    { echo "  WRONG: the package imports to another disk" >&2; BAD=1; }
else
  echo "  WRONG: s3://$BUCKET/a.ova does not import" >&2
  BAD=1
fi
LEN=$(stat -c %s "$LOCAL" 2>/dev/null || echo 0)
rm -rf "$LOCAL" "$WORK/back" "$WORK/s3/$BUCKET"/*.ova


read -r s_med s_lo s_hi < <(stats "$WORK/t-s3")
read -r p_med p_lo p_hi < <(stats "$WORK/t-peer")
S_RSS=$(max_rss "$WORK/t-s3")
echo
echo "ovaio export -o s3:// vs export to a file + aws s3 cp: $((LEN >> 20)) MiB package ($FORMAT source of $SIZE_MIB MiB, $IMAGE image)"
echo "s3s-fs on loopback, its root on the local package's file system; $REPS paired rounds, sync before each; $(nproc) CPUs"
printf '%-36s %9s %15s %8s %9s\n' "method" "median s" "min-max s" "MB/s" "RSS MiB"
printf '%-36s %9s %15s %8s %9s\n' "ovaio export -o s3://" "$s_med" "$s_lo-$s_hi" "$(mbps "$LEN" "$s_med")" "$S_RSS"
printf '%-36s %9s %15s %8s %9s\n' "ovaio export -o FILE + aws s3 cp" "$p_med" "$p_lo-$p_hi" "$(mbps "$LEN" "$p_med")" ""
awk -v s="$s_med" -v p="$p_med" -v rss="$S_RSS" 'BEGIN {
  if (s !~ /^[0-9.]+$/ || p !~ /^[0-9.]+$/ || s <= 0) { print "ratio: n/a"; exit }
  r = p / s
  printf "peer/s3: %.2fx (target >= 1.5): %s\n", r, (r >= 1.5 ? "PASS" : "FAIL")
  if (rss ~ /^[0-9.]+$/) printf "peak RSS of ovaio export -o s3://: %.1f MiB (target < 64 MiB): %s\n", rss, (rss < 64 ? "PASS" : "FAIL") }'
[ "$BAD" -eq 0 ] || { echo "FAIL: a run failed or an object differs"; exit 2; }
