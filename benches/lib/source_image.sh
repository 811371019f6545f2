# Shared by the comparison scripts: one deterministic, sparse, half-data
# source image, so that import and export are measured on the same input.
# Source it, then call `make_source PATH SIZE_BYTES`.

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
make_source() {
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
