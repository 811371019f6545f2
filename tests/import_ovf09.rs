//! VMware's OVF 0.9 draft (its own namespace, typed `Section` and
//! `Content` elements, the `vmdk.html#sparse` format URI, a SHA-1
//! manifest), as older ovftool and VirtualBox releases wrote it: imported
//! like any OVF 1.x package and judged by qemu-img.

mod support;

use support::image::{self, MAIN, Source, Target};
use support::ova::{self, Manifest, Ova};
use support::{Work, ovaio};

/// A descriptor in the 0.9 form for one disk entry.
fn ovf_09(href: &str, size: u64, capacity: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="0.9" xml:lang="en-US" xmlns="http://www.vmware.com/schema/ovf/1/envelope" xmlns:ovf="http://www.vmware.com/schema/ovf/1/envelope" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{href}" ovf:id="file1" ovf:size="{size}"/>
  </References>
  <Section xsi:type="ovf:DiskSection_Type">
    <Info>Meta-information about the virtual disks</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/specifications/vmdk.html#sparse"/>
  </Section>
  <Content xsi:type="ovf:VirtualSystem_Type" ovf:id="legacy">
    <Info>A virtual machine</Info>
    <Section xsi:type="ovf:VirtualHardwareSection_Type">
      <Info>Virtual hardware requirements</Info>
    </Section>
  </Content>
</Envelope>
"#
    )
}

#[test]
fn ovf_0_9_packages_import_like_1_x() {
    let w = Work::new();
    let p = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let disk = p.disk(1, "legacy-disk1.vmdk");
    let mut package = Ova::new().disk(disk).manifest(Manifest::Sha1Spaced);
    package.ovf_text = Some(ovf_09(
        "legacy-disk1.vmdk",
        support::file_len(&p.file),
        p.capacity,
    ));
    let pkg = package.build(w.root(), "legacy.ova");
    for target in [Target::Raw, Target::Qcow2] {
        let out = w.mkdir(&format!("out-{}", target.name()));
        let run = ovaio()
            .arg("import")
            .arg(&pkg)
            .arg("--dir")
            .arg(&out)
            .arg("--format")
            .arg(target.name())
            .arg("--json")
            .run();
        run.assert_success();
        let summary = run.json();
        assert_eq!(summary["manifest"], "verified", "{summary}");
        let d = &summary["disks"][0];
        assert_eq!(d["source_format"], "vmdk", "{d}");
        assert_eq!(d["warnings"], serde_json::json!([]), "{d}");
        let file = out.join(format!("legacy-disk1.{}", target.name()));
        image::assert_target(&p.raw, &file, target, p.capacity);
    }
    let run = ovaio().arg("inspect").arg(&pkg).arg("--json").run();
    run.assert_success();
    let report = run.json();
    assert_eq!(report["name"], "legacy", "{report}");
    assert_eq!(report["disks"][0]["capacity"], p.capacity, "{report}");
}
