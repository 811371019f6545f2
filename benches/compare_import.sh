#!/usr/bin/env bash
# Compares `ovaio import` with the usual ways of getting a disk out of an OVA:
#   ovaio      cat X.ova | ovaio import - --disk HREF=OUT:FMT
#   extract    tar -xf X.ova HREF && qemu-img convert -O FMT HREF OUT
#   offset     qemu-img convert reading the disk in place inside the OVA
# for source formats vmdk (streamOptimized), qcow2 and raw, and target formats
# raw and qcow2. Prints a table and checks the targets: ovaio at least 2x
# faster than extract+convert, at most 1.2x the time of qemu-img at the
# offset, and a peak RSS below 64 MiB.
#
# Environment:
#   SIZE_MIB   virtual disk size in MiB (default 1024; about half is data)
#   REPS       timed runs per command, the best is kept (default 3)
#   OVAIO      ovaio binary (default target/release/ovaio, built if missing)
#   BENCH_DIR  parent of the work directory (default /tmp/ovaio-bench)
#   KEEP=1     keep the work directory
#   QEMU_CACHE cache mode of qemu-img convert's output (default writeback:
#              qemu-img fsyncs its output as ovaio does; qemu-img's own
#              default, unsafe, skips the fsync)
#   FORMATS    source formats of the main comparison (default "vmdk qcow2
#              raw"; empty skips it, e.g. to run the manifest case alone)
#   MF_FORMATS source formats of the manifest-placement case (default
#              "vmdk raw"; empty skips it): the same package with its SHA-256
#              manifest right after the OVF and last, where ovaio must hash
#              the disk in SHA-1, SHA-256 and SHA-512 until the manifest
#              says which it uses
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
REPS=${REPS:-3}
OVAIO=${OVAIO:-$ROOT/target/release/ovaio}
BENCH_DIR=${BENCH_DIR:-/tmp/ovaio-bench}
KEEP=${KEEP:-0}
QEMU_CACHE=${QEMU_CACHE:-writeback}
MF_FORMATS=${MF_FORMATS-vmdk raw}
FORMATS=${FORMATS-vmdk qcow2 raw}
TIME=/usr/bin/time

die() { echo "compare_import: $*" >&2; exit 1; }

[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be an integer >= 1"
for t in qemu-img tar dd truncate awk sha256sum; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
[ -x "$TIME" ] || die "$TIME (GNU time) is required"
command -v openssl >/dev/null 2>&1 || command -v python3 >/dev/null 2>&1 ||
  die "openssl or python3 is required to generate data"

# ---------------------------------------------------------------- ovaio binary
OVAIO_OK=1
if [ ! -x "$OVAIO" ]; then
  if [ "$OVAIO" = "$ROOT/target/release/ovaio" ]; then
    echo "building ovaio (cargo build --release)..." >&2
    (cd "$ROOT" && cargo build --release >&2) || true
  fi
  [ -x "$OVAIO" ] || { echo "warning: no ovaio binary at $OVAIO; its column shows n/a" >&2; OVAIO_OK=0; }
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

# ------------------------------------------------------------- source image
# shellcheck source=benches/lib/source_image.sh
. "$ROOT/benches/lib/source_image.sh"

# ------------------------------------------------------------------- OVA
# shellcheck source=benches/lib/bench_ova.sh
. "$ROOT/benches/lib/bench_ova.sh"

# make_ova FMT: the source as FMT in bench-FMT.ova (OVF first, no manifest).
make_ova() {
  make_bench_ova "$SRC" "$1" "$SIZE" "$WORK/bench-$1.ova" "$WORK/ova-$1"
}

# data_offset OVA HREF: byte offset of HREF's data inside the OVA. `tar -R`
# prints the block number of each member's header; its data follows it.
data_offset() {
  local blk
  blk=$(tar -tvR -f "$1" | awk -v h="$2" '$NF == h { sub(":", "", $2); print $2; exit }')
  [ -n "$blk" ] || die "no member $2 in $1"
  echo $(((blk + 1) * 512))
}

# ---------------------------------------------------------------- timing
# timed OUTFILE CMD...: runs CMD under GNU time and writes "secs kib" to
# OUTFILE; on failure shows CMD's stderr and returns its status.
TF=$WORK/time.out
timed() {
  local out=$1 rc=0
  shift
  "$TIME" -f '%e %M' -o "$TF" "$@" >/dev/null 2>"$WORK/cmd.err" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "  failed ($rc): $*" >&2
    sed 's/^/    /' "$WORK/cmd.err" | tail -5 >&2
    return "$rc"
  fi
  tail -1 "$TF" >"$out"
}

# The pipe form: `cat` feeds ovaio, time measures ovaio alone.
ovaio_pipe() {
  local ova=$1 spec=$2
  { cat "$ova" || true; } | "$TIME" -f '%e %M' -o "$TF" "$OVAIO" import - --quiet --disk "$spec" \
    >/dev/null 2>"$WORK/cmd.err"
}

min_of() { awk 'NR == 1 || $1 < m { m = $1 } END { print m }'; }

# ovaio_cpu OVA SPEC: ovaio_pipe, recording "wall user system" seconds.
ovaio_cpu() {
  local ova=$1 spec=$2
  { cat "$ova" || true; } | "$TIME" -f '%e %U %S' -o "$TF" "$OVAIO" import - --quiet --disk "$spec" \
    >/dev/null 2>"$WORK/cmd.err"
}

# bench_manifest SRCFMT: the source as SRCFMT in two packages, the SHA-256
# manifest right after the OVF and last, each imported REPS times into a
# raw target, alternating. Appends "SRCFMT wall_after wall_last cpu_after
# cpu_last" (best of each; cpu is user + system) to $MF_RESULTS.
bench_manifest() {
  local sfmt=$1 href out place r rc ok=1
  href=$(href_of "$sfmt")
  out=$WORK/out.raw
  for place in after-ovf last; do
    make_bench_ova "$SRC" "$sfmt" "$SIZE" "$WORK/mf-$place.ova" "$WORK/ova-mf" "$place"
    cat "$WORK/mf-$place.ova" >/dev/null
    : >"$WORK/mf-$place.t"
  done
  echo "timing $sfmt -> raw, manifest after the OVF vs last (best of $REPS)..." >&2
  for ((r = 1; r <= REPS; r++)); do
    for place in after-ovf last; do
      rm -f "$out"
      rc=0
      ovaio_cpu "$WORK/mf-$place.ova" "$href=$out:raw" || rc=$?
      if [ "$rc" -ne 0 ]; then
        echo "  ovaio failed ($rc) on $sfmt with the manifest $place:" >&2
        sed 's/^/    /' "$WORK/cmd.err" | tail -5 >&2
        ok=0
        continue
      fi
      tail -1 "$TF" >>"$WORK/mf-$place.t"
      if [ "$r" -eq "$REPS" ] && ! qemu-img compare -q -f raw -F raw "$SRC" "$out" >/dev/null 2>&1; then
        echo "  ovaio output differs from the source: $sfmt, manifest $place" >&2
        ok=wrong
      fi
    done
  done
  rm -f "$out" "$WORK"/mf-*.ova
  if [ "$ok" = wrong ]; then
    echo "$sfmt WRONG WRONG n/a n/a" >>"$MF_RESULTS"
  elif [ "$ok" = 1 ]; then
    echo "$sfmt $(min_of <"$WORK/mf-after-ovf.t") $(min_of <"$WORK/mf-last.t")" \
      "$(awk '{ print $2 + $3 }' "$WORK/mf-after-ovf.t" | min_of)" \
      "$(awk '{ print $2 + $3 }' "$WORK/mf-last.t" | min_of)" >>"$MF_RESULTS"
  else
    echo "$sfmt n/a n/a n/a n/a" >>"$MF_RESULTS"
  fi
}

# bench_one SRCFMT DSTFMT: fills OV_S OV_RSS EX_S OF_S and verifies ovaio.
bench_one() {
  local sfmt=$1 dfmt=$2 ova=$WORK/bench-$1.ova href out r rc
  href=$(href_of "$sfmt")
  out=$WORK/out.$dfmt
  local xdir=$WORK/extract
  local off len json
  off=$(data_offset "$ova" "$href")
  len=$(tar -tvf "$ova" "$href" | awk '{ print $3 }')
  if [ "$sfmt" = raw ]; then
    json="json:{\"driver\":\"raw\",\"offset\":$off,\"size\":$len,\"file\":{\"driver\":\"file\",\"filename\":\"$ova\"}}"
  else
    json="json:{\"driver\":\"$sfmt\",\"file\":{\"driver\":\"raw\",\"offset\":$off,\"size\":$len,\"file\":{\"driver\":\"file\",\"filename\":\"$ova\"}}}"
  fi

  : >"$WORK/ov.t"; : >"$WORK/ex.t"; : >"$WORK/of.t"
  OV_S=n/a OV_RSS=n/a OV_OK=n/a
  for ((r = 1; r <= REPS; r++)); do
    # a. ovaio from a pipe (the last run's output is kept for verification)
    if [ "$OVAIO_OK" = 1 ] && [ "$OV_OK" != fail ]; then
      rm -f "$out"
      rc=0
      ovaio_pipe "$ova" "$href=$out:$dfmt" || rc=$?
      if [ "$rc" -eq 0 ]; then
        tail -1 "$TF" >>"$WORK/ov.t"
        OV_OK=ran
      else
        echo "  ovaio failed ($rc) on $sfmt -> $dfmt:" >&2
        sed 's/^/    /' "$WORK/cmd.err" | tail -5 >&2
        OV_OK=fail
      fi
    fi
    if [ "$OV_OK" = ran ] && [ "$r" -eq "$REPS" ]; then
      if qemu-img compare -q -f raw -F "$dfmt" "$SRC" "$out" >/dev/null 2>&1; then
        OV_OK=ok
      else
        echo "  ovaio output differs from the source: $sfmt -> $dfmt" >&2
        OV_OK=wrong
      fi
    fi
    rm -f "$out"

    # b. extract, then convert
    rm -rf "$xdir"; mkdir -p "$xdir"
    timed "$WORK/ex1" tar -xf "$ova" -C "$xdir" "$href"
    timed "$WORK/ex2" qemu-img convert -t "$QEMU_CACHE" -f "$sfmt" -O "$dfmt" "$xdir/$href" "$out"
    awk '{ s += $1 } END { printf "%.2f\n", s }' "$WORK/ex1" "$WORK/ex2" >>"$WORK/ex.t"
    rm -rf "$xdir" "$out"

    # c. qemu-img reading the disk in place
    timed "$WORK/of1" qemu-img convert -t "$QEMU_CACHE" -O "$dfmt" "$json" "$out"
    awk '{ print $1 }' "$WORK/of1" >>"$WORK/of.t"
    if [ "$r" -eq 1 ] && ! qemu-img compare -q -f raw -F "$dfmt" "$SRC" "$out" >/dev/null 2>&1; then
      die "qemu-img at offset $off produced a wrong image for $sfmt -> $dfmt"
    fi
    rm -f "$out"
  done

  EX_S=$(min_of <"$WORK/ex.t")
  OF_S=$(min_of <"$WORK/of.t")
  if [ -s "$WORK/ov.t" ] && [ "$OV_OK" = ok ]; then
    OV_S=$(min_of <"$WORK/ov.t")
    OV_RSS=$(awk '$2 > m { m = $2 } END { printf "%.1f\n", m / 1024 }' "$WORK/ov.t")
  elif [ "$OV_OK" = wrong ]; then
    OV_S=WRONG
  fi
}

# ------------------------------------------------------------------ main
echo "work directory: $WORK" >&2
echo "generating a ${SIZE_MIB} MiB sparse source image..." >&2
make_source "$SRC" "$SIZE"
alloc_mib=$(($(stat -c %b "$SRC") * $(stat -c %B "$SRC") / 1048576))
echo "source: ${SIZE_MIB} MiB virtual, ${alloc_mib} MiB allocated" >&2

RESULTS=$WORK/results
: >"$RESULTS"
for sfmt in $FORMATS; do
  echo "building bench-$sfmt.ova..." >&2
  make_ova "$sfmt"
  ova=$WORK/bench-$sfmt.ova
  echo "  $(($(stat -c %s "$ova") / 1048576)) MiB; warming the page cache" >&2
  cat "$ova" >/dev/null
  for dfmt in raw qcow2; do
    echo "timing $sfmt -> $dfmt (best of $REPS)..." >&2
    bench_one "$sfmt" "$dfmt"
    echo "$sfmt->$dfmt $OV_S $EX_S $OF_S $OV_RSS" >>"$RESULTS"
  done
  rm -f "$ova"
done

MF_RESULTS=$WORK/mf-results
: >"$MF_RESULTS"
if [ "$OVAIO_OK" = 1 ]; then
  for sfmt in $MF_FORMATS; do
    bench_manifest "$sfmt"
  done
fi

if [ -s "$RESULTS" ]; then
echo
echo "ovaio import vs extract+convert vs qemu-img at the offset"
echo "(${SIZE_MIB} MiB virtual, ${alloc_mib} MiB data; best of $REPS; OVA in page cache; qemu-img -t $QEMU_CACHE)"
awk '
function ratio(a, b) {
  if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/) return "n/a"
  if (b < 0.01) b = 0.01
  return sprintf("%.2f", a / b)
}
BEGIN {
  printf "%-14s %9s %12s %12s %10s %10s %10s\n", "combination", "ovaio s", "extract+conv", "qemu@offset", "ex/ovaio", "off/ovaio", "RSS MiB"
  bad_speed = bad_parity = bad_rss = missing = wrong = 0
  min_ex = min_off = max_rss = ""
}
{
  rex = ratio($3, $2); rof = ratio($4, $2)
  printf "%-14s %9s %12s %12s %10s %10s %10s\n", $1, $2, $3, $4, rex, rof, $5
  if ($2 == "WRONG") { wrong++; next }
  if (rex == "n/a" || $5 == "n/a") { missing++; next }
  if (min_ex == "" || rex + 0 < min_ex) min_ex = rex + 0
  if (min_off == "" || rof + 0 < min_off) min_off = rof + 0
  if (max_rss == "" || $5 + 0 > max_rss) max_rss = $5 + 0
  if (rex + 0 < 2) bad_speed++
  if ($2 + 0 > 1.2 * $4 + 0.005) bad_parity++
  if ($5 + 0 >= 64) bad_rss++
}
END {
  if (wrong) {
    printf "targets: FAIL (%d combination(s) where ovaio wrote a wrong image)\n", wrong
    exit 2
  }
  if (missing) {
    printf "targets: not judged (%d combination(s) without a verified ovaio result)\n", missing
    exit
  }
  printf "targets: >=2x faster than extract+convert: %s (worst %.2fx); ", bad_speed ? "FAIL" : "PASS", min_ex
  printf "<=1.2x qemu-img@offset time: %s (worst ovaio/offset %.2f); ", bad_parity ? "FAIL" : "PASS", (min_off > 0 ? 1 / min_off : 0)
  printf "peak RSS <64 MiB: %s (max %.1f MiB)\n", bad_rss ? "FAIL" : "PASS", max_rss
}' "$RESULTS" || status=$?
else
  echo "(main comparison skipped: FORMATS is empty)"
fi

if [ -s "$MF_RESULTS" ]; then
  echo
  echo "manifest placement: SHA-256 manifest right after the OVF (SHA-256 hashed) vs last"
  echo "(SHA-1, SHA-256 and SHA-512 hashed until it arrives); raw target; best of $REPS; cpu = user + system"
  awk '
  function ratio(a, b) {
    if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/) return "n/a"
    if (b < 0.01) b = 0.01
    return sprintf("%.2f", a / b)
  }
  BEGIN { printf "%-8s %10s %10s %10s %12s %12s %10s\n", "source", "after s", "last s", "last/after", "after cpu s", "last cpu s", "last/after" }
  {
    printf "%-8s %10s %10s %10s %12s %12s %10s\n", $1, $2, $3, ratio($3, $2), $4, $5, ratio($5, $4)
    if ($2 == "WRONG") wrong++
  }
  END { if (wrong) exit 2 }' "$MF_RESULTS" || status=$?
fi
exit "${status:-0}"
