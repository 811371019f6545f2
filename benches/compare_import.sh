#!/usr/bin/env bash
# Compares `ovaio import` from a pipe with the usual ways of getting a disk
# out of an OVA, for source formats vmdk (streamOptimized), qcow2 and raw
# and target formats raw and qcow2. Per combination, `REPS` paired rounds
# of (the order reverses every round, `sync` before every timed run):
#   mf        cat mf.ova | ovaio import - --disk HREF=OUT:FMT
#             (SHA-256 manifest right after the OVF: SHA-256 only is hashed)
#   last      the same, manifest last (SHA-1, SHA-256 and SHA-512 until it)
#   nomf      the same, no manifest (all three hashed, nothing to check)
#   noverify  mf.ova with --no-verify (nothing hashed)
#   tar+conv  tar -xf none.ova HREF; qemu-img convert
#   tar+sha+conv  tar -xf mf.ova; sha256sum -c of the manifest; qemu-img
#             convert (the peer that verifies)
#   offset    qemu-img convert reading the disk in place inside none.ova
# Prints medians with min and max, the ratios, and judges the targets:
# verified ovaio (mf) >= 2x faster than tar+sha+conv, noverify <= 1.0x the
# time of qemu-img at the offset, mf <= 1.25x noverify, peak RSS < 64 MiB.
#
# Environment:
#   IMAGE      hard (default) or simple: the source image, see
#              benches/lib/source_image.sh
#   SIZE_MIB   virtual disk size in MiB (default 4096 for hard, 1024 for
#              simple; about half is data)
#   REPS       paired rounds per combination; medians are reported (default 3)
#   OVAIO      ovaio binary (default target/release/ovaio, built if missing)
#   BENCH_DIR  parent of the work directory (default /tmp/ovaio-bench)
#   KEEP=1     keep the work directory
#   QEMU_CACHE cache mode of qemu-img convert's output (default writeback:
#              qemu-img fsyncs its output as ovaio does; qemu-img's own
#              default, unsafe, skips the fsync)
#   FORMATS    source formats (default "vmdk qcow2 raw")
#   TARGETS    target formats (default "raw qcow2")
#   ROWS       methods timed (default: all of the above, in that order)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-hard}
SIZE_MIB=${SIZE_MIB:-$([ "$IMAGE" = hard ] && echo 4096 || echo 1024)}
REPS=${REPS:-3}
OVAIO=${OVAIO:-$ROOT/target/release/ovaio}
BENCH_DIR=${BENCH_DIR:-/tmp/ovaio-bench}
KEEP=${KEEP:-0}
QEMU_CACHE=${QEMU_CACHE:-writeback}
FORMATS=${FORMATS-vmdk qcow2 raw}
TARGETS=${TARGETS-raw qcow2}
ALL_ROWS="mf last nomf noverify tar+conv tar+sha+conv offset"
ROWS=${ROWS:-$ALL_ROWS}
TIME=/usr/bin/time

die() { echo "compare_import: $*" >&2; exit 1; }

[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be an integer >= 1"
for t in qemu-img tar dd truncate awk sha256sum sync sort; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
[ -x "$TIME" ] || die "$TIME (GNU time) is required"
command -v openssl >/dev/null 2>&1 || command -v python3 >/dev/null 2>&1 ||
  die "openssl or python3 is required to generate data"
for row in $ROWS; do
  [[ " $ALL_ROWS " == *" $row "* ]] || die "unknown row '$row' (rows: $ALL_ROWS)"
done

# ---------------------------------------------------------------- ovaio binary
if [ ! -x "$OVAIO" ]; then
  if [ "$OVAIO" = "$ROOT/target/release/ovaio" ]; then
    echo "building ovaio (cargo build --release)..." >&2
    (cd "$ROOT" && cargo build --release >&2) || true
  fi
  [ -x "$OVAIO" ] || die "no ovaio binary at $OVAIO"
fi

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/run.XXXXXX")
cleanup() {
  if [ "$KEEP" = 1 ]; then
    echo "work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

SIZE=$((SIZE_MIB * 1024 * 1024))
SRC=$WORK/source.img

# shellcheck source=benches/lib/source_image.sh
. "$ROOT/benches/lib/source_image.sh"
# shellcheck source=benches/lib/bench_ova.sh
. "$ROOT/benches/lib/bench_ova.sh"
# shellcheck source=benches/lib/stats.sh
. "$ROOT/benches/lib/stats.sh"

# data_offset OVA HREF: byte offset of HREF's data inside the OVA. `tar -R`
# prints the block number of each member's header; its data follows it.
data_offset() {
  local blk
  blk=$(tar -tvR -f "$1" | awk -v h="$2" '$NF == h { sub(":", "", $2); print $2; exit }')
  [ -n "$blk" ] || die "no member $2 in $1"
  echo $(((blk + 1) * 512))
}

# ---------------------------------------------------------------- timing
TF=$WORK/time.out
# run_row ROW SFMT DFMT OUT: one timed run of ROW; appends "wall kib cpu" to
# $WORK/ROW.t (kib and cpu of ovaio alone, 0 for the peers). Returns
# non-zero and shows the command's stderr when it fails.
run_row() {
  local row=$1 sfmt=$2 dfmt=$3 out=$4 href rc=0 pkg=$WORK/none.ova
  href=$(href_of "$sfmt")
  local flags=()
  case $row in
    mf | noverify) pkg=$WORK/mf.ova ;;
    last) pkg=$WORK/last.ova ;;
  esac
  [ "$row" = noverify ] && flags=(--no-verify)
  rm -rf "$out" "$WORK/x"
  sync
  case $row in
    mf | last | nomf | noverify)
      { cat "$pkg" || true; } | "$TIME" -f '%e %M %U %S' -o "$TF" \
        "$OVAIO" import - --quiet "${flags[@]}" --disk "$href=$out:$dfmt" \
        >/dev/null 2>"$WORK/cmd.err" || rc=$?
      ;;
    tar+conv)
      "$TIME" -f '%e %M %U %S' -o "$TF" bash -c '
        mkdir "$1" && tar -xf "$2" -C "$1" "$3" &&
        qemu-img convert -t "$4" -f "$5" -O "$6" "$1/$3" "$7"' _ \
        "$WORK/x" "$pkg" "$href" "$QEMU_CACHE" "$sfmt" "$dfmt" "$out" \
        >/dev/null 2>"$WORK/cmd.err" || rc=$?
      ;;
    tar+sha+conv)
      "$TIME" -f '%e %M %U %S' -o "$TF" bash -c '
        mkdir "$1" && tar -xf "$2" -C "$1" &&
        (cd "$1" && sed -E "s/^SHA256\((.*)\)= ([0-9a-f]+)$/\2  \1/" bench.mf | sha256sum --quiet -c -) &&
        qemu-img convert -t "$4" -f "$5" -O "$6" "$1/$3" "$7"' _ \
        "$WORK/x" "$WORK/mf.ova" "$href" "$QEMU_CACHE" "$sfmt" "$dfmt" "$out" \
        >/dev/null 2>"$WORK/cmd.err" || rc=$?
      ;;
    offset)
      "$TIME" -f '%e %M %U %S' -o "$TF" qemu-img convert -t "$QEMU_CACHE" -O "$dfmt" "$JSON" "$out" \
        >/dev/null 2>"$WORK/cmd.err" || rc=$?
      ;;
  esac
  rm -rf "$WORK/x"
  if [ "$rc" -ne 0 ]; then
    echo "  $row failed ($rc) on $sfmt -> $dfmt:" >&2
    sed 's/^/    /' "$WORK/cmd.err" | tail -5 >&2
    return "$rc"
  fi
  case $row in
    mf | last | nomf | noverify) tail -1 "$TF" | awk '{ print $1, $2, $3 + $4 }' >>"$WORK/$row.t" ;;
    *) tail -1 "$TF" | awk '{ print $1, 0, 0 }' >>"$WORK/$row.t" ;;
  esac
}

# bench_combo SFMT DFMT: REPS rounds of every row; appends to $RESULTS one
# line per row: "SFMT->DFMT ROW median min max rss_mib cpu_median status".
bench_combo() {
  local sfmt=$1 dfmt=$2 r row rows out=$WORK/out.$2 status
  local -A state=()
  for row in $ROWS; do : >"$WORK/$row.t"; state[$row]=ok; done
  for ((r = 1; r <= REPS; r++)); do
    if ((r % 2)); then rows=$ROWS; else rows=$(echo "$ROWS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for row in $rows; do
      [ "${state[$row]}" = ok ] || continue
      run_row "$row" "$sfmt" "$dfmt" "$out" || { state[$row]=failed; continue; }
      # Outputs are checked once, outside the timing: ovaio's every way, and
      # qemu-img's at the offset, so that its numbers are honest.
      if [ "$r" -eq 1 ] && [[ $row != tar+* ]] && ! qemu-img compare -q -f raw -F "$dfmt" "$SRC" "$out" >/dev/null 2>&1; then
        echo "  $row wrote an image that differs from the source: $sfmt -> $dfmt" >&2
        state[$row]=wrong
      fi
      rm -f "$out"
    done
  done
  for row in $ROWS; do
    status=${state[$row]}
    if [ "$status" = ok ] && [ -s "$WORK/$row.t" ]; then
      # shellcheck disable=SC2046
      echo "$sfmt->$dfmt $row $(printf '%.2f %.2f %.2f' $(stats "$WORK/$row.t"))" \
        "$(max_rss "$WORK/$row.t")" \
        "$(stats "$WORK/$row.t" 3 | awk '{ printf "%.2f", $1 }') ok" >>"$RESULTS"
    else
      echo "$sfmt->$dfmt $row n/a n/a n/a n/a n/a $status" >>"$RESULTS"
    fi
  done
}

# ------------------------------------------------------------------ main
echo "work directory: $WORK" >&2
uptime >&2
echo "generating a ${SIZE_MIB} MiB sparse $IMAGE source image..." >&2
make_source "$SRC" "$SIZE"
alloc_mib=$(($(stat -c %b "$SRC") * $(stat -c %B "$SRC") / 1048576))
echo "source: ${SIZE_MIB} MiB virtual, ${alloc_mib} MiB allocated" >&2

RESULTS=$WORK/results
: >"$RESULTS"
for sfmt in $FORMATS; do
  echo "building the $sfmt packages..." >&2
  bench_disk "$SRC" "$sfmt" "$SIZE" "$WORK/pkg"
  for place in none after-ovf last; do
    name=$place
    [ "$place" = after-ovf ] && name=mf
    bench_tar "$WORK/pkg" "$sfmt" "$WORK/$name.ova" "$place"
  done
  rm -rf "$WORK/pkg"
  href=$(href_of "$sfmt")
  ova=$WORK/none.ova
  off=$(data_offset "$ova" "$href")
  len=$(tar -tvf "$ova" "$href" | awk '{ print $3 }')
  if [ "$sfmt" = raw ]; then
    JSON="json:{\"driver\":\"raw\",\"offset\":$off,\"size\":$len,\"file\":{\"driver\":\"file\",\"filename\":\"$ova\"}}"
  else
    JSON="json:{\"driver\":\"$sfmt\",\"file\":{\"driver\":\"raw\",\"offset\":$off,\"size\":$len,\"file\":{\"driver\":\"file\",\"filename\":\"$ova\"}}}"
  fi
  echo "  $(($(stat -c %s "$ova") / 1048576)) MiB each; warming the page cache" >&2
  cat "$WORK"/*.ova >/dev/null
  for dfmt in $TARGETS; do
    echo "timing $sfmt -> $dfmt ($REPS paired rounds)..." >&2
    bench_combo "$sfmt" "$dfmt"
  done
  rm -f "$WORK"/*.ova
done
uptime >&2

echo
echo "ovaio import from a pipe vs tar+qemu-img and qemu-img at the offset"
echo "($IMAGE image, ${SIZE_MIB} MiB virtual, ${alloc_mib} MiB data; median (min-max) of $REPS paired rounds,"
echo " sync before each run; OVAs in page cache; qemu-img -t $QEMU_CACHE; RSS and CPU of ovaio alone)"
awk -v rows="$ROWS" '
function ratio(a, b) {
  if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/) return "n/a"
  if (b < 0.01) b = 0.01
  return sprintf("%.2f", a / b)
}
BEGIN {
  printf "%-13s %-13s %8s %13s %8s %8s\n", "combination", "method", "median s", "min-max s", "RSS MiB", "CPU s"
  nrows = split(rows, order, " ")
}
{
  combo = $1; row = $2
  if (!(combo in seen)) { seen[combo] = 1; combos[++nc] = combo }
  med[combo, row] = $3
  shown = (combo == last_combo) ? "" : combo
  last_combo = combo
  if ($8 != "ok") {
    printf "%-13s %-13s %8s\n", shown, row, toupper($8)
    if ($8 == "wrong") wrong++
    next
  }
  ov = (row == "mf" || row == "last" || row == "nomf" || row == "noverify")
  printf "%-13s %-13s %8s %13s %8s %8s\n", shown, row, $3, $4 "-" $5, ov ? $6 : "", ov ? $7 : ""
  if (ov && (max_rss == "" || $6 + 0 > max_rss)) max_rss = $6 + 0
}
END {
  printf "\nratios of medians (time of the first over the second; targets: peer-sha/mf >= 2,\n"
  printf "mf/noverify <= 1.25, noverify/off <= 1.0)\n"
  printf "%-13s %12s %14s %12s %13s %10s %14s %14s\n", "combination", "peer-sha/mf", "tar+conv/nomf", "mf/noverify", "noverify/off", "mf/offset", "last/noverify", "nomf/noverify"
  for (i = 1; i <= nc; i++) {
    c = combos[i]
    a = ratio(med[c, "tar+sha+conv"], med[c, "mf"])
    b = ratio(med[c, "tar+conv"], med[c, "nomf"])
    d = ratio(med[c, "mf"], med[c, "noverify"])
    e = ratio(med[c, "noverify"], med[c, "offset"])
    f = ratio(med[c, "mf"], med[c, "offset"])
    g = ratio(med[c, "last"], med[c, "noverify"])
    h = ratio(med[c, "nomf"], med[c, "noverify"])
    printf "%-13s %12s %14s %12s %13s %10s %14s %14s\n", c, a, b, d, e, f, g, h
    if (a == "n/a" || d == "n/a" || e == "n/a") { missing++; continue }
    if (a + 0 < 2) bad_speed++
    if (worst_speed == "" || a + 0 < worst_speed) worst_speed = a + 0
    if (d + 0 > 1.25) bad_verify++
    if (worst_verify == "" || d + 0 > worst_verify) worst_verify = d + 0
    if (e + 0 > 1.0) bad_parity++
    if (worst_parity == "" || e + 0 > worst_parity) worst_parity = e + 0
  }
  print ""
  if (wrong) {
    printf "targets: FAIL (%d run(s) wrote a wrong image)\n", wrong
    exit 2
  }
  if (missing) {
    printf "targets: not judged (%d combination(s) without the rows they need)\n", missing
    exit
  }
  printf "targets: verified >=2x faster than tar+sha256sum+convert: %s (worst %.2fx)\n", bad_speed ? "FAIL" : "PASS", worst_speed
  printf "         --no-verify <=1.0x qemu-img@offset: %s (worst %.2f)\n", bad_parity ? "FAIL" : "PASS", worst_parity
  printf "         verified (one algorithm) <=1.25x --no-verify: %s (worst %.2f)\n", bad_verify ? "FAIL" : "PASS", worst_verify
  printf "         peak RSS <64 MiB: %s (max %.1f MiB)\n", (max_rss + 0 >= 64) ? "FAIL" : "PASS", max_rss
}' "$RESULTS" || status=$?
exit "${status:-0}"
