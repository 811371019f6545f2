# Sourced by the comparison scripts: the one-disk OVA they all measure.
# make_bench_ova SRC FMT SIZE OUT SCRATCH [MANIFEST] converts the raw image
# SRC to FMT (vmdk = streamOptimized, qcow2, raw), names it href_of FMT, and
# wraps it after a minimal OVF 1.0 descriptor (capacity SIZE bytes) in the
# ustar archive OUT. No manifest unless MANIFEST says where its SHA-256
# manifest bench.mf goes (sha256sum of the OVF and the disk): `after-ovf`
# or `last`. SCRATCH is a directory it creates and removes. bench_disk and
# bench_tar do the two halves, for several packages of one conversion.

ovf_format_uri() {
  case $1 in
    vmdk) echo "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ;;
    qcow2) echo "http://www.gnome.org/~markmc/qcow-image-format.html" ;;
    raw) echo "http://en.wikipedia.org/wiki/Byte" ;;
  esac
}

href_of() {
  case $1 in
    vmdk) echo disk1.vmdk ;;
    qcow2) echo disk1.qcow2 ;;
    raw) echo disk1.img ;;
  esac
}

# bench_disk SRC FMT SIZE DIR: DIR/HREF (the source as FMT), DIR/bench.ovf
# describing it, and DIR/bench.mf with the SHA-256 of both.
bench_disk() {
  local src=$1 fmt=$2 size=$3 dir=$4 href disk
  href=$(href_of "$fmt")
  mkdir -p "$dir"
  disk=$dir/$href
  case $fmt in
    vmdk) qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$src" "$disk" ;;
    qcow2) qemu-img convert -f raw -O qcow2 "$src" "$disk" ;;
    raw) cp --sparse=always "$src" "$disk" ;;
  esac
  cat >"$dir/bench.ovf" <<EOF_OVF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:id="file1" ovf:href="$href" ovf:size="$(stat -c %s "$disk")"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="$size" ovf:capacityAllocationUnits="byte" ovf:format="$(ovf_format_uri "$fmt")"/>
  </DiskSection>
  <VirtualSystem ovf:id="bench">
    <Info>A virtual machine</Info>
    <Name>bench</Name>
  </VirtualSystem>
</Envelope>
EOF_OVF
  (cd "$dir" && sha256sum bench.ovf "$href") |
    awk '{ printf "SHA256(%s)= %s\n", $2, $1 }' >"$dir/bench.mf"
}

# bench_tar DIR FMT OUT [MANIFEST]: wraps what bench_disk made in DIR into
# the ustar archive OUT, the OVF first; the manifest where MANIFEST says:
# none (or empty), after-ovf or last.
bench_tar() {
  local dir=$1 fmt=$2 out=$3 manifest=${4:-none} href
  href=$(href_of "$fmt")
  case $manifest in
    '' | none) tar --format=ustar -cf "$out" -C "$dir" bench.ovf "$href" ;;
    after-ovf) tar --format=ustar -cf "$out" -C "$dir" bench.ovf bench.mf "$href" ;;
    last) tar --format=ustar -cf "$out" -C "$dir" bench.ovf "$href" bench.mf ;;
    *) echo "bench_tar: unknown manifest place '$manifest'" >&2; return 1 ;;
  esac
}

make_bench_ova() {
  local src=$1 fmt=$2 size=$3 out=$4 dir=$5 manifest=${6:-}
  bench_disk "$src" "$fmt" "$size" "$dir"
  bench_tar "$dir" "$fmt" "$out" "$manifest"
  rm -rf "$dir"
}
