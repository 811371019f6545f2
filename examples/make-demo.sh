#!/usr/bin/env bash
# Rebuilds examples/demo.ova: a 16 MiB compressed qcow2 disk with a little data, an
# OVF 1.0 descriptor and a SHA-256 manifest, packed by GNU tar, OVF first.
set -euo pipefail
cd "$(dirname "$0")"
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
python3 - "$w/disk.raw" <<'PY'
import sys
with open(sys.argv[1], "wb") as f:
    f.truncate(16 << 20)
    for i, off in enumerate((0, 1 << 20, 9 << 20)):
        f.seek(off)
        f.write((f"ovaio demo block {i}\n".encode()) * 4096)
PY
qemu-img convert -c -f raw -O qcow2 "$w/disk.raw" "$w/demo-disk1.qcow2"
size=$(stat -c %s "$w/demo-disk1.qcow2")
cat > "$w/demo.ovf" <<OVF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:id="file1" ovf:href="demo-disk1.qcow2" ovf:size="$size"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:diskId="disk1" ovf:fileRef="file1" ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^20"
          ovf:format="http://www.gnome.org/~markmc/qcow-image-format.html"/>
  </DiskSection>
  <VirtualSystem ovf:id="demo">
    <Info>A demo virtual machine</Info>
    <Name>demo</Name>
  </VirtualSystem>
</Envelope>
OVF
(cd "$w" && for f in demo.ovf demo-disk1.qcow2; do echo "SHA256($f)= $(sha256sum "$f" | cut -d' ' -f1)"; done > demo.mf)
tar --format=ustar --owner=0 --group=0 --mtime=@0 -C "$w" -cf demo.ova demo.ovf demo-disk1.qcow2 demo.mf
ls -l demo.ova
