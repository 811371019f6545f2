# Shared by the comparison scripts: one deterministic, sparse, half-data
# source image, so that import and export are measured on the same input.
# Source it, then call `make_source PATH SIZE_BYTES`. `IMAGE` chooses it:
#   simple  (default) 1-6 MiB incompressible runs alternating with 1-6 MiB
#           holes (make_simple_source below);
#   hard    runs and holes of 4 KiB-32 MiB, log-uniform; runs 72 %
#           incompressible, 24 % log-like text, 4 % written zeros
#           (benches/lib/hard_image.py; needs python3).
# image_default_mib prints the default SIZE_MIB of the chosen image: 4096
# for hard, 1024 for simple.

IMAGE=${IMAGE:-simple}
case $IMAGE in
  simple | hard) ;;
  *) echo "IMAGE must be simple or hard, not '$IMAGE'" >&2; exit 1 ;;
esac
SOURCE_IMAGE_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

image_default_mib() {
  if [ "$IMAGE" = hard ]; then echo 4096; else echo 1024; fi
}

make_source() {
  if [ "$IMAGE" = hard ]; then
    command -v python3 >/dev/null 2>&1 || { echo "IMAGE=hard needs python3" >&2; return 1; }
    python3 "$SOURCE_IMAGE_LIB/hard_image.py" "$1" "$2"
  else
    make_simple_source "$1" "$2"
  fi
}

# An endless deterministic stream of incompressible bytes.
data_stream() {
  if command -v openssl >/dev/null 2>&1; then
    openssl enc -aes-128-ctr -nosalt \
      -K 000102030405060708090a0b0c0d0e0f -iv 00000000000000000000000000000000 \
      -in /dev/zero 2>/dev/null
  else
    python3 -c '
import random, sys
r = random.Random(20240601)
out = sys.stdout.buffer
try:
    while True:
        out.write(r.randbytes(1 << 20))
except BrokenPipeError:
    pass
' 2>/dev/null
  fi
}

# Data runs and holes alternate, each 1 to 6 MiB in 512 KiB steps; both
# lengths cycle through the same eleven values, so about half of the disk is
# data. The raw file is sparse: holes are never written.
make_simple_source() {
  local SRC=$1 SIZE=$2
  local unit=$((512 * 1024)) off=0 i=0 d h
  : >"$SRC"
  {
    while [ "$off" -lt "$SIZE" ]; do
      d=$((2 + (i * 5) % 11))
      h=$((2 + (i * 7 + 3) % 11))
      if [ $((off + d * unit)) -gt "$SIZE" ]; then d=$(((SIZE - off) / unit)); fi
      [ "$d" -gt 0 ] || break
      dd of="$SRC" bs="$unit" count="$d" seek=$((off / unit)) \
        iflag=fullblock conv=notrunc status=none
      off=$((off + (d + h) * unit))
      i=$((i + 1))
    done
  } < <(data_stream)
  truncate -s "$SIZE" "$SRC"
}
