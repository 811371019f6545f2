#!/usr/bin/env bash
# Release-profile variants measured on the same work, in one run:
#   base      Cargo.toml's [profile.release] as it stands
#   thin      lto = "thin"
#   fat-cgu1  lto = "fat", codegen-units = 1
#   cgu1      codegen-units = 1
# Each variant is built into target/profiles/NAME (base: target/; overrides through
# CARGO_PROFILE_RELEASE_* variables, so Cargo.toml is not edited), then the
# variants take turns on each workload, REPS rounds, with `sync` between
# runs; the median wall time of each (min and max beside it), the
# stripped binary size, and the ratios to `base` are printed.
#   import-qcow2  cat OVA(qcow2 disk) | ovaio import - --disk ...=OUT:raw
#   import-vmdk   cat OVA(streamOptimized) | ovaio import - --disk ...=OUT:qcow2
#   export        ovaio export --name bench --disk disk1.qcow2=SRC -o OUT.ova
# panic = "abort" is not a candidate: the server answers a panicking
# request with a 500 and keeps serving the others (hyper and tokio catch
# the unwind per task); aborting would end every transfer at once.
#
# Environment: IMAGE (simple or hard, see benches/lib/source_image.sh),
# SIZE_MIB (default 1024, 4096 for hard), REPS (default 5), VARIANTS (default
# "base thin fat-cgu1 cgu1"), BENCH_DIR (default /tmp/ovaio-bench), KEEP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-simple}
SIZE_MIB=${SIZE_MIB:-$([ "$IMAGE" = hard ] && echo 4096 || echo 1024)}
REPS=${REPS:-5}
VARIANTS=${VARIANTS:-base thin fat-cgu1 cgu1}
BENCH_DIR=${BENCH_DIR:-/tmp/ovaio-bench}
KEEP=${KEEP:-0}

die() { echo "compare_profiles: $*" >&2; exit 1; }
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be an integer >= 1"
for t in qemu-img tar awk strip date sync; do
  command -v "$t" >/dev/null 2>&1 || die "$t is required"
done

# variant_env NAME: the profile overrides of a variant.
variant_env() {
  case $1 in
    base) echo "" ;;
    thin) echo "CARGO_PROFILE_RELEASE_LTO=thin" ;;
    fat-cgu1) echo "CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1" ;;
    cgu1) echo "CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1" ;;
    *) die "unknown variant $1" ;;
  esac
}

declare -A BIN BUILD_S SIZE_B
for v in $VARIANTS; do
  # base is Cargo.toml's own release profile: the usual target directory.
  dir=$ROOT/target/profiles/$v
  [ "$v" = base ] && dir=$ROOT/target
  echo "building $v ($(variant_env "$v"))..." >&2
  t0=$(date +%s.%N)
  # shellcheck disable=SC2046
  (cd "$ROOT" && env $(variant_env "$v") cargo build --release --locked --bin ovaio \
    --target-dir "$dir" >&2) || die "build of $v failed"
  t1=$(date +%s.%N)
  BUILD_S[$v]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')
  BIN[$v]=$dir/release/ovaio
  strip -o "$dir/ovaio.stripped" "${BIN[$v]}"
  SIZE_B[$v]=$(stat -c %s "$dir/ovaio.stripped")
done

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/profiles.XXXXXX")
cleanup() { if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

# shellcheck source=benches/lib/source_image.sh
. "$ROOT/benches/lib/source_image.sh"
SRC=$WORK/source.raw
echo "making a ${SIZE_MIB} MiB source image..." >&2
make_source "$SRC" $((SIZE_MIB * 1024 * 1024))
qemu-img convert -f raw -O qcow2 "$SRC" "$WORK/disk1.qcow2"
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$SRC" "$WORK/disk1.vmdk"
# OVAs with a minimal descriptor, the disk as it is (ovaio export would
# re-encode the VMDK as qcow2).
make_ova() { # FMT
  local fmt=$1 size cap
  size=$(stat -c %s "$WORK/disk1.$fmt")
  cap=$(stat -c %s "$SRC")
  cat >"$WORK/bench-$fmt.ovf" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="disk1.$fmt" ovf:id="file1" ovf:size="$size"/></References>
  <DiskSection><Info>Disks</Info><Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="$cap"/></DiskSection>
  <VirtualSystem ovf:id="bench"><Info>bench</Info></VirtualSystem>
</Envelope>
EOF
  tar --format=ustar -C "$WORK" -cf "$WORK/bench-$fmt.ova" "bench-$fmt.ovf" "disk1.$fmt"
}
make_ova qcow2
make_ova vmdk

# run_one VARIANT WORKLOAD: prints the wall seconds of one run.
run_one() {
  local v=$1 w=$2 bin=${BIN[$1]} t0 t1 out=$WORK/out
  rm -f "$out".*
  sync
  t0=$(date +%s.%N)
  case $w in
    import-qcow2) "$bin" import - --disk "disk1.qcow2=$out.raw:raw" <"$WORK/bench-qcow2.ova" >/dev/null ;;
    import-vmdk) "$bin" import - --disk "disk1.vmdk=$out.qcow2:qcow2" <"$WORK/bench-vmdk.ova" >/dev/null ;;
    export) "$bin" export --name bench --disk "disk1.qcow2=$SRC:raw" -o "$out.ova" >/dev/null ;;
  esac
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

WORKLOADS="import-qcow2 import-vmdk export"
# Warm the page cache with the inputs and every binary once.
cat "$WORK"/*.ova "$SRC" >/dev/null
for v in $VARIANTS; do for w in $WORKLOADS; do run_one "$v" "$w" >/dev/null; done; done

declare -A TIMES
for ((r = 1; r <= REPS; r++)); do
  echo "round $r of $REPS..." >&2
  for w in $WORKLOADS; do
    # Rotate the order each round so no variant always follows another.
    set -- $VARIANTS
    for ((k = 0; k < (r - 1) % $#; k++)); do set -- "${@:2}" "$1"; done
    for v in "$@"; do
      TIMES[$v,$w]+="$(run_one "$v" "$w") "
    done
  done
done

# stats "t1 t2 ...": median min max
stats() {
  tr ' ' '\n' <<<"$1" | awk 'NF' | sort -n | awk '
    { a[NR] = $1 }
    END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
          printf "%.3f %.3f %.3f", m, a[1], a[NR] }'
}

base=${VARIANTS%% *}
echo
echo "release profiles, ${SIZE_MIB} MiB source, median of $REPS paired rounds (min-max); ratio = variant/$base"
printf "%-10s %8s %10s %7s" variant build_s size_MiB size
for w in $WORKLOADS; do printf " %24s %6s" "$w s" ratio; done
echo
declare -A MED
for v in $VARIANTS; do
  for w in $WORKLOADS; do
    read -r m _ _ <<<"$(stats "${TIMES[$v,$w]}")"
    MED[$v,$w]=$m
  done
done
for v in $VARIANTS; do
  printf "%-10s %8s %10.1f %7.3f" "$v" "${BUILD_S[$v]}" \
    "$(awk -v s="${SIZE_B[$v]}" 'BEGIN { print s / 1048576 }')" \
    "$(awk -v a="${SIZE_B[$v]}" -v b="${SIZE_B[$base]}" 'BEGIN { print a / b }')"
  for w in $WORKLOADS; do
    read -r m lo hi <<<"$(stats "${TIMES[$v,$w]}")"
    printf " %24s %6.3f" "$m ($lo-$hi)" "$(awk -v a="$m" -v b="${MED[$base,$w]}" 'BEGIN { print a / b }')"
  done
  echo
done
