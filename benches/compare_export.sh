#!/usr/bin/env bash
# Compares `ovaio export` with the usual way of building an OVA from a
# volume:
#   ovaio   ovaio export --name vm --disk disk1.qcow2=SRC -o out.ova
#   peer    qemu-img convert -O qcow2 SRC disk1.qcow2, write vm.ovf with the
#           file's size, tar --format=ustar -cf out.ova vm.ovf disk1.qcow2,
#           fsync out.ova and its directory
# for source formats raw (sparse) and qcow2, each twice: without a manifest
# (ovaio --no-manifest against the plain peer) and with a SHA-256 manifest
# (ovaio's default against the peer that also runs sha256sum and writes
# vm.mf). Then the same with streamOptimized VMDK disks, from the raw source
# with a manifest:
#   ovaio   ovaio export --disk-format vmdk (stored grains; judged) and
#           --disk-format vmdk --compress (deflated grains; reported)
#   peer    qemu-img convert -O vmdk -o subformat=streamOptimized, OVF,
#           sha256sum, tar, fsync
# Prints a table and checks the targets over the judged rows: ovaio at least
# 2x faster than convert-then-tar, and a peak RSS below 64 MiB.
#
# Environment:
#   IMAGE      source image: simple (default) or hard (benches/lib/source_image.sh)
#   SIZE_MIB   virtual disk size in MiB (default 1024, 4096 for hard; about
#              half is data)
#   REPS       paired rounds (ovaio and the peer taking turns, sync before
#              each run); the median is reported with min-max (default 3)
#   OVAIO      ovaio binary (default target/release/ovaio, built if missing)
#   BENCH_DIR  parent of the work directory (default /tmp/ovaio-bench)
#   KEEP=1     keep the work directory
#   PEER_SYNC  how the peer makes its OVA durable: file (default: fsync of
#              out.ova and its directory, what ovaio does) or fs (`sync -f`,
#              which also flushes the peer's intermediate disk1.qcow2)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-simple}
SIZE_MIB=${SIZE_MIB:-$([ "$IMAGE" = hard ] && echo 4096 || echo 1024)}
REPS=${REPS:-3}
OVAIO=${OVAIO:-$ROOT/target/release/ovaio}
BENCH_DIR=${BENCH_DIR:-/tmp/ovaio-bench}
KEEP=${KEEP:-0}
PEER_SYNC=${PEER_SYNC:-file}
TIME=/usr/bin/time

die() { echo "compare_export: $*" >&2; exit 1; }

[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be an integer >= 1"
[[ $PEER_SYNC = file || $PEER_SYNC = fs ]] || die "PEER_SYNC must be file or fs"
for t in qemu-img tar dd truncate awk sha256sum sync stat; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar is required"
[ -x "$TIME" ] || die "$TIME (GNU time) is required"
command -v openssl >/dev/null 2>&1 || command -v python3 >/dev/null 2>&1 ||
  die "openssl or python3 is required to generate data"

# ---------------------------------------------------------------- ovaio binary
# The default binary is also rebuilt when it predates the export command.
OVAIO_OK=1
has_export() { [ -x "$OVAIO" ] && "$OVAIO" export --help >/dev/null 2>&1; }
if ! has_export; then
  if [ "$OVAIO" = "$ROOT/target/release/ovaio" ]; then
    echo "building ovaio (cargo build --release)..." >&2
    (cd "$ROOT" && cargo build --release >&2) || true
  fi
  has_export || { echo "warning: no ovaio with 'export' at $OVAIO; its column shows n/a" >&2; OVAIO_OK=0; }
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
RAW=$WORK/source.raw

# ------------------------------------------------------------- source image
# The same image as compare_import.sh.
# shellcheck source=benches/lib/source_image.sh
. "$ROOT/benches/lib/source_image.sh"

# ------------------------------------------------------------------- peer
# The peer as one script, timed as a whole: convert, OVF, [sha256sum and
# manifest,] tar, then with PEER_SYNC=file an fsync of the OVA and its
# directory (what ovaio guarantees), with PEER_SYNC=fs a `sync -f`. qemu-img
# keeps its default cache mode: disk1.qcow2 is a temporary file that needs no
# fsync of its own.
PEER=$WORK/peer.sh
cat >"$PEER" <<'PEER_EOF'
set -eu
src=$1 fmt=$2 size=$3 mf=$4 dir=$5 how=$6 out=${7:-qcow2}
cd "$dir"
if [ "$out" = vmdk ]; then
  disk=disk1.vmdk uri="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
  qemu-img convert -f "$fmt" -O vmdk -o subformat=streamOptimized "$src" "$disk"
else
  disk=disk1.qcow2 uri="http://www.gnome.org/~markmc/qcow-image-format.html"
  qemu-img convert -f "$fmt" -O qcow2 "$src" "$disk"
fi
cat >vm.ovf <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ovf:version="1.0">
  <References>
    <File ovf:id="file1" ovf:href="$disk" ovf:size="$(stat -c %s "$disk")"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:diskId="disk1" ovf:fileRef="file1" ovf:capacity="$size" ovf:capacityAllocationUnits="byte" ovf:format="$uri"/>
  </DiskSection>
  <VirtualSystem ovf:id="vm">
    <Info>A virtual machine</Info>
    <Name>vm</Name>
  </VirtualSystem>
</Envelope>
EOF
members="vm.ovf $disk"
if [ "$mf" = 1 ]; then
  sha256sum vm.ovf "$disk" | awk '{ printf "SHA256(%s)= %s\n", $2, $1 }' >vm.mf
  members="$members vm.mf"
fi
tar --format=ustar -cf out.ova $members
if [ "$how" = fs ]; then sync -f out.ova; else sync out.ova .; fi
PEER_EOF

# ---------------------------------------------------------------- timing
TF=$WORK/time.out

# run_timed CMD...: runs CMD under GNU time ("secs kib" into $TF); on failure
# shows CMD's stderr and returns its status.
run_timed() {
  local rc=0
  "$TIME" -f '%e %M' -o "$TF" "$@" >/dev/null 2>"$WORK/cmd.err" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "  failed ($rc): $*" >&2
    sed 's/^/    /' "$WORK/cmd.err" | tail -5 >&2
  fi
  return "$rc"
}

# median_of, range_of: the median and "min-max" of the first column.
median_of() {
  sort -g | awk '{ v[NR] = $1 } END { if (!NR) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
range_of() { sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { if (NR) print a "-" b; else print "n/a" }'; }

# verify_ova OVA SRC FMT MF [OUT]: checks ovaio's OVA outside the timing:
# member order, the OVF's ovf:size, the manifest's digests, `qemu-img check`
# of the disk (qcow2, or OUT=vmdk) and `qemu-img compare` against the source.
verify_ova() {
  local ova=$1 src=$2 fmt=$3 mf=$4 out=${5:-qcow2} x=$WORK/verify names want size ovf_size
  local disk=disk1.$out
  rm -rf "$x"; mkdir -p "$x"
  tar -xf "$ova" -C "$x" || { echo "  tar -xf failed" >&2; return 1; }
  names=$(tar -tf "$ova" | tr '\n' ' ')
  want="vm.ovf $disk "
  [ "$mf" = 1 ] && want="${want}vm.mf "
  [ "$names" = "$want" ] || { echo "  members are '$names', expected '$want'" >&2; return 1; }
  size=$(stat -c %s "$x/$disk")
  ovf_size=$(grep -o '<File [^>]*>' "$x/vm.ovf" | grep "ovf:href=\"$disk\"" |
    sed -n 's/.*ovf:size="\([0-9]*\)".*/\1/p')
  [ "$ovf_size" = "$size" ] || { echo "  ovf:size '$ovf_size' but the entry holds $size bytes" >&2; return 1; }
  if [ "$mf" = 1 ]; then
    (cd "$x" && sha256sum vm.ovf "$disk" | awk '{ printf "SHA256(%s)= %s\n", $2, $1 }' |
      cmp -s - vm.mf) || { echo "  the manifest does not match the entries" >&2; return 1; }
  fi
  qemu-img check -q -f "$out" "$x/$disk" >&2 || { echo "  qemu-img check failed" >&2; return 1; }
  qemu-img compare -q -f "$fmt" -F "$out" "$src" "$x/$disk" >&2 ||
    { echo "  the disk differs from the source" >&2; return 1; }
  rm -rf "$x"
}

# export_ovaio, export_peer: one timed run each, for bench_one (whose
# locals they use).
export_ovaio() {
  # a. ovaio (the last run's OVA is verified)
  sync
  if [ "$ov_state" = todo ] || [ "$ov_state" = ran ]; then
    rm -f "$out" "$out.partial"
    if run_timed "$OVAIO" "${ovaio_args[@]}"; then
      tail -1 "$TF" >>"$WORK/ov.t"
      ov_state=ran
    else
      ov_state=fail
    fi
    if [ "$ov_state" = ran ] && [ "$r" -eq "$REPS" ]; then
      OV_MIB=$(awk -v b="$(stat -c %s "$out")" 'BEGIN { printf "%.1f", b / 1048576 }')
      if verify_ova "$out" "$src" "$fmt" "$mf" "$out_fmt"; then ov_state=ok; else ov_state=wrong; fi
    fi
    rm -f "$out" "$out.partial"
  fi
}

export_peer() {
  # b. convert, then tar
  rm -rf "$pdir"; mkdir -p "$pdir"
  sync
  run_timed bash "$PEER" "$src" "$fmt" "$SIZE" "$mf" "$pdir" "$PEER_SYNC" "$out_fmt"
  tail -1 "$TF" >>"$WORK/pe.t"
  if [ "$r" -eq 1 ]; then
    PE_MIB=$(awk -v b="$(stat -c %s "$pdir/out.ova")" 'BEGIN { printf "%.1f", b / 1048576 }')
    # the peer's OVA must hold the same disk, or its number means nothing
    (cd "$pdir" && rm -f "disk1.$out_fmt" && tar -xf out.ova "disk1.$out_fmt") &&
      qemu-img compare -q -f "$fmt" -F "$out_fmt" "$src" "$pdir/disk1.$out_fmt" >/dev/null 2>&1 ||
      die "the peer produced a wrong OVA for $fmt ($out_fmt)"
  fi
  rm -rf "$pdir"
}

# bench_one FMT MF [OUT [OVAIO_FLAGS...]]: fills OV_S OV_RSS PE_S OV_MIB
# PE_MIB for source format FMT, with (MF=1) or without (MF=0) a manifest,
# disks in format OUT (qcow2 or vmdk); verifies ovaio's last OVA.
bench_one() {
  local fmt=$1 mf=$2 out_fmt=${3:-qcow2} src=$WORK/source.$1 out=$WORK/out.ova pdir=$WORK/peer r
  shift 3 || shift $#
  local ovaio_args=(export --name vm --disk "disk1.$out_fmt=$src:$fmt" -o "$out" -q "$@")
  [ "$out_fmt" = qcow2 ] || ovaio_args+=(--disk-format "$out_fmt")
  [ "$mf" = 1 ] || ovaio_args+=(--no-manifest)
  OV_MIB=n/a PE_MIB=n/a
  : >"$WORK/ov.t"; : >"$WORK/pe.t"
  OV_S=n/a OV_RSS=n/a
  local ov_state=n/a
  [ "$OVAIO_OK" = 1 ] && ov_state=todo
  for ((r = 1; r <= REPS; r++)); do
    # ovaio and the peer take turns, each after a sync
    if ((r % 2)); then
      export_ovaio; export_peer
    else
      export_peer; export_ovaio
    fi
  done

  PE_S=$(median_of <"$WORK/pe.t")
  PE_RANGE=$(range_of <"$WORK/pe.t")
  OV_RANGE=n/a
  case $ov_state in
    ok)
      OV_S=$(median_of <"$WORK/ov.t")
      OV_RANGE=$(range_of <"$WORK/ov.t")
      OV_RSS=$(awk '$2 > m { m = $2 } END { printf "%.1f\n", m / 1024 }' "$WORK/ov.t")
      ;;
    wrong) OV_S=WRONG ;;
  esac
}

# ------------------------------------------------------------------ main
echo "work directory: $WORK" >&2
uptime >&2
echo "generating a ${SIZE_MIB} MiB sparse source image..." >&2
make_source "$RAW" "$SIZE"
alloc_mib=$(($(stat -c %b "$RAW") * $(stat -c %B "$RAW") / 1048576))
echo "source: ${SIZE_MIB} MiB virtual, ${alloc_mib} MiB allocated" >&2

RESULTS=$WORK/results
: >"$RESULTS"
for fmt in raw qcow2; do
  src=$WORK/source.$fmt
  if [ "$fmt" = qcow2 ]; then
    echo "converting the source to qcow2..." >&2
    qemu-img convert -f raw -O qcow2 "$RAW" "$src"
  fi
  # Both tools read the source from the page cache (dropping it needs root).
  cat "$src" >/dev/null
  for mf in 0 1; do
    name=$fmt; [ "$mf" = 1 ] && name="$fmt+mf"
    echo "timing $name ($REPS paired rounds)..." >&2
    bench_one "$fmt" "$mf" qcow2
    echo "$name $OV_S $PE_S $OV_RSS $OV_MIB $PE_MIB 1 $OV_RANGE $PE_RANGE" >>"$RESULTS"
  done
  [ "$fmt" = raw ] || rm -f "$src"
done
# streamOptimized VMDK from the raw source, with a manifest: stored grains
# (judged) and deflated grains (--compress, reported against the same peer).
cat "$RAW" >/dev/null
echo "timing vmdk+mf ($REPS paired rounds)..." >&2
bench_one raw 1 vmdk
echo "vmdk+mf $OV_S $PE_S $OV_RSS $OV_MIB $PE_MIB 1 $OV_RANGE $PE_RANGE" >>"$RESULTS"
echo "timing vmdk+z+mf ($REPS paired rounds)..." >&2
bench_one raw 1 vmdk --compress
echo "vmdk+z+mf $OV_S $PE_S $OV_RSS $OV_MIB $PE_MIB 0 $OV_RANGE $PE_RANGE" >>"$RESULTS"
rm -f "$RAW"
uptime >&2

echo
echo "ovaio export vs qemu-img convert + tar"
echo "($IMAGE image, ${SIZE_MIB} MiB virtual, ${alloc_mib} MiB data; median of $REPS paired rounds, sync before"
echo " each run, min-max at the right; source in page cache; peer sync: $PEER_SYNC)"
awk '
function ratio(a, b) {
  if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/) return "n/a"
  if (b < 0.01) b = 0.01
  return sprintf("%.2f", a / b)
}
BEGIN {
  printf "%-12s %9s %9s %12s %10s %10s %10s %12s %12s\n", "combination", "ovaio s", "peer s", "peer/ovaio", "RSS MiB", "ovaio MiB", "peer MiB", "ovaio range", "peer range"
  bad_speed = bad_rss = missing = wrong = 0
  min_r = max_rss = ""
}
{
  r = ratio($3, $2)
  printf "%-12s %9s %9s %12s %10s %10s %10s %12s %12s%s\n", $1, $2, $3, r, $4, $5, $6, $8, $9, $7 == 1 ? "" : "  (not judged)"
  if ($2 == "WRONG") { wrong++; next }
  if ($7 != 1) next
  if (r == "n/a" || $4 == "n/a") { missing++; next }
  if (min_r == "" || r + 0 < min_r) min_r = r + 0
  if (max_rss == "" || $4 + 0 > max_rss) max_rss = $4 + 0
  if (r + 0 < 2) bad_speed++
  if ($4 + 0 >= 64) bad_rss++
}
END {
  if (wrong) {
    printf "targets: FAIL (%d combination(s) where ovaio wrote a wrong OVA)\n", wrong
    exit 2
  }
  if (missing) {
    printf "targets: not judged (%d combination(s) without a verified ovaio result)\n", missing
    exit
  }
  printf "targets: >=2x faster than convert+tar: %s (worst %.2fx); ", bad_speed ? "FAIL" : "PASS", min_r
  printf "peak RSS <64 MiB: %s (max %.1f MiB)\n", bad_rss ? "FAIL" : "PASS", max_rss
}' "$RESULTS"
