//! `ovaio export (--ovf FILE.ovf | --name NAME [VM flags]) --disk HREF=PATH[:raw|qcow2]...
//! [--disk-format qcow2|vmdk [--compress]] -o OUT.ova|s3://BUCKET/KEY|-`

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::cli::progress::Bar;
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::ova::manifest::Algorithm;
use crate::ova::ovf::vm::{self, Controller, GuestOs, VmSpec};
use crate::pipeline::export::{DiskFormat, ExportDisk, ExportPlan, ExportRequest, OvfSource};
use crate::pipeline::progress::Progress;
use crate::s3::S3Url;
use crate::sink::partial::{Existing, PartialFile};
use crate::source::volume::AllowedRoots;
use crate::volume::Format as VolumeFormat;

/// Arguments of `ovaio export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// OVF descriptor to complete with the exact sizes (the rest is kept).
    #[arg(long, value_name = "FILE.ovf")]
    ovf: Option<PathBuf>,
    /// Generate an OVF 1.0 descriptor for a VM of this name: hardware
    /// families vmx-13 and virtualbox-2.2, CPUs, memory, guest OS, a disk
    /// controller every disk is attached to, NICs (the flags below).
    #[arg(long, value_name = "NAME", conflicts_with = "ovf")]
    name: Option<String>,
    /// Virtual CPUs of the generated VM [default: 1].
    #[arg(long, value_name = "N", value_parser = vm::parse_cpus, conflicts_with = "ovf")]
    cpus: Option<u32>,
    /// Memory of the generated VM: MiB, or a number with M, G or T (4G)
    /// [default: 2G].
    #[arg(long, value_name = "SIZE", value_parser = vm::parse_memory, conflicts_with = "ovf")]
    memory: Option<u64>,
    /// Guest OS of the generated VM: other, other64, linux, linux64,
    /// debian64, ubuntu64, rhel64, centos64, oracle64, sles64, freebsd64,
    /// windows7-64, windows2012r2, windows2016, windows10-64, or a CIM
    /// OSType number [default: other64].
    #[arg(long, value_name = "TYPE", value_parser = GuestOs::parse, conflicts_with = "ovf")]
    os: Option<GuestOs>,
    /// Disk controller of the generated VM, every disk attached to it:
    /// sata (AHCI) or scsi (LSI Logic); more are added past 30 (SATA) or 15
    /// (SCSI) disks, up to 4 [default: sata].
    #[arg(long, value_name = "sata|scsi", value_parser = Controller::parse, conflicts_with = "ovf")]
    controller: Option<Controller>,
    /// Give the generated VM an E1000 network adapter connected to
    /// NETWORK (listed in a NetworkSection); repeat for more, up to 10.
    #[arg(long = "nic", value_name = "NETWORK", value_parser = text, conflicts_with = "ovf")]
    nics: Vec<String>,
    /// Product name for the generated descriptor's ProductSection.
    #[arg(long, value_name = "TEXT", value_parser = text, conflicts_with = "ovf")]
    product: Option<String>,
    /// Vendor for the generated descriptor's ProductSection.
    #[arg(long, value_name = "TEXT", value_parser = text, conflicts_with = "ovf")]
    vendor: Option<String>,
    /// Product version for the generated descriptor's ProductSection.
    #[arg(long, value_name = "TEXT", value_parser = text, conflicts_with = "ovf")]
    product_version: Option<String>,
    /// Annotation (a description of the VM) for the generated descriptor.
    #[arg(long, value_name = "TEXT", value_parser = text, conflicts_with = "ovf")]
    annotation: Option<String>,
    /// A disk: `HREF=PATH[:raw|qcow2]` (the source format; probed when
    /// omitted). Repeat in References order. PATH may also be an NBD URL
    /// or a remote volume, `https://HOST:PORT/images/TICKET`.
    #[arg(long = "disk", value_name = "HREF=PATH[:FORMAT]", required = true)]
    disks: Vec<String>,
    /// Format of the disks written: qcow2 (oVirt, OpenStack, libvirt) or
    /// vmdk (streamOptimized: VMware, VirtualBox) [default: qcow2].
    #[arg(long, value_name = "qcow2|vmdk", value_parser = DiskFormat::parse)]
    disk_format: Option<DiskFormat>,
    /// With --disk-format vmdk: deflate the grains. The package is smaller,
    /// but every source is read and compressed twice (once to size the
    /// disk before the first byte is written); without it grains are
    /// stored, sized from the allocation map, and each source is read once.
    #[arg(long)]
    compress: bool,
    /// Output OVA, s3://BUCKET/KEY, or `-` for standard output. A file is
    /// written as OUT.ova.partial and renamed when complete; an object is
    /// a multipart upload that appears only when complete (endpoint and
    /// credentials from the AWS_* environment variables).
    #[arg(short = 'o', long = "output", value_name = "OUT.ova|s3://BUCKET/KEY|-")]
    output: String,
    /// Part size of an s3:// output, in bytes or with a K, M or G suffix
    /// (5M to 5G) [default: 8M, or larger when the package needs more
    /// than 10,000 parts].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    part_size: Option<u64>,
    /// PEM CA bundle trusted for the S3 endpoint [default: the system
    /// roots].
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Digest algorithm of the manifest: sha256 (current ovftool), sha1
    /// (the OVF 1.x specification; COT reads an OVF 1.x manifest so), or
    /// sha512 [default: sha256].
    #[arg(long, value_name = "sha1|sha256|sha512", value_parser = crate::ticket::manifest_algorithm)]
    manifest: Option<Algorithm>,
    /// Do not write a manifest.
    #[arg(long, conflicts_with = "manifest")]
    no_manifest: bool,
    /// Align each disk's data to 4 KiB with `pad` entries (as oVirt writes).
    #[arg(long)]
    align: bool,
    /// Also leave out allocated clusters that hold only zeros (reads the data twice).
    #[arg(long)]
    detect_zeros: bool,
    /// Only read sources (and backing files) under this directory; repeatable.
    #[arg(long = "root", value_name = "DIR")]
    roots: Vec<PathBuf>,
    /// Replace OUT.ova if it exists (without it an existing file is
    /// refused before anything is written).
    #[arg(long)]
    force: bool,
    /// PEM CA bundle trusted for remote volumes in --disk [default: the
    /// system roots].
    #[arg(long, value_name = "FILE")]
    remote_ca: Option<PathBuf>,
    /// Print a JSON summary (on stderr when the OVA goes to stdout).
    #[arg(long)]
    json: bool,
    /// No progress bar even on a terminal.
    #[arg(long, short)]
    quiet: bool,
}

/// `N`, `NK`, `NM` or `NG` (binary units; `KiB`, `MiB`, `GiB` too).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().map_err(|_| format!("'{s}' is not a size"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(format!("'{s}': the unit is K, M or G")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Free text of the generated descriptor (product, vendor, NIC network...).
fn text(s: &str) -> std::result::Result<String, String> {
    vm::check_text(s).map(|()| s.to_owned())
}

impl ExportArgs {
    /// The VM the generated descriptor describes.
    fn vm(&self, name: &str) -> VmSpec {
        let mut vm = VmSpec::new(name);
        if let Some(n) = self.cpus {
            vm.cpus = n;
        }
        if let Some(m) = self.memory {
            vm.memory_mib = m;
        }
        if let Some(os) = &self.os {
            vm.os = os.clone();
        }
        if let Some(c) = self.controller {
            vm.controller = c;
        }
        vm.networks = self.nics.clone();
        vm.product.product = self.product.clone();
        vm.product.vendor = self.vendor.clone();
        vm.product.version = self.product_version.clone();
        vm.annotation = self.annotation.clone();
        vm
    }
}

fn parse_disk(spec: &str) -> Result<ExportDisk> {
    let (href, path, format) = crate::cli::split_disk_spec(spec, &["raw", "qcow2"])?;
    let net = crate::volume::NetUrl::parse(path).map_err(|why| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("--disk {href}=…: {why}"),
        )
    })?;
    Ok(ExportDisk {
        href: href.to_owned(),
        path: match &net {
            Some(u) => PathBuf::from(u.to_string()),
            None => PathBuf::from(path),
        },
        net,
        format: match format {
            Some("qcow2") => Some(VolumeFormat::Qcow2),
            Some(_) => Some(VolumeFormat::Raw),
            None => None,
        },
    })
}

pub(crate) fn run(a: ExportArgs) -> Result<()> {
    crate::volume::imageio::configure(&crate::volume::imageio::RemoteConfig {
        ca_file: a.remote_ca.clone(),
        ..Default::default()
    })?;
    crate::s3::configure(&crate::s3::S3Config {
        ca_file: a.cacert.clone(),
        ..Default::default()
    })?;
    let object = match crate::source::url::scheme(&a.output).as_deref() {
        Some("s3") => Some(S3Url::parse(&a.output).map_err(|why| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("-o {}: {why}", a.output),
            )
        })?),
        _ => None,
    };
    if a.part_size.is_some() && object.is_none() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "--part-size is for an s3:// output",
        ));
    }
    let disks = a
        .disks
        .iter()
        .map(|s| parse_disk(s))
        .collect::<Result<Vec<_>>>()?;
    let (ovf, ovf_name) = match (&a.ovf, &a.name) {
        (Some(path), _) => {
            let bytes = std::fs::read(path).map_err(|e| Error::from(e).at_path(path))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "vm.ovf".into());
            (OvfSource::Descriptor(bytes), name)
        }
        (None, Some(name)) => {
            let vm = a.vm(name);
            // The same checks as the descriptor's, before any source is
            // read, naming the flag (every field is one: `nic` is --nic).
            vm.check(disks.len()).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("--{}: {}", e.field.replace('_', "-"), e.message),
                )
            })?;
            (OvfSource::Generate(vm), format!("{name}.ovf"))
        }
        (None, None) => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "say what describes the VM: give --ovf FILE.ovf (a descriptor to complete) or --name NAME (one is generated)",
            ));
        }
    };
    let disk_format = a.disk_format.unwrap_or_default();
    if a.compress && disk_format != DiskFormat::Vmdk {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "--compress deflates VMDK grains: give it with --disk-format vmdk (qcow2 disks are written uncompressed)",
        ));
    }
    let roots = if a.roots.is_empty() {
        AllowedRoots::any()
    } else {
        AllowedRoots::new(&a.roots)?
    };
    let to_stdout = a.output == "-";
    // Fail before the (possibly long) planning if the output cannot be made.
    if let Some(url) = &object
        && !a.force
    {
        crate::s3::refuse_existing(url, "pass --force")?;
    }
    let partial = if to_stdout || object.is_some() {
        None
    } else {
        Some(PartialFile::create(
            &AllowedRoots::any(),
            &PathBuf::from(&a.output),
            if a.force {
                Existing::Replace
            } else {
                Existing::Keep
            },
        )?)
    };
    // Signals cancel the planning too: with --compress it reads every
    // source once.
    let progress = Arc::new(Progress::new(None));
    crate::cli::signals::cancel_on_signals(&progress)?;
    let plan = ExportPlan::prepare_watched(
        ExportRequest {
            disks,
            ovf,
            ovf_name,
            manifest: (!a.no_manifest).then(|| a.manifest.unwrap_or(Algorithm::Sha256)),
            align: a.align,
            detect_zeros: a.detect_zeros,
            disk_format,
            compress: a.compress,
            roots,
        },
        &progress,
    )?;
    progress.set_total(plan.total_size());
    let bar = Bar::start(progress.clone(), !a.quiet);
    let mut parts = None;
    let summary = match partial {
        None if let Some(url) = &object => {
            let (s, p) = plan.write_object(url, a.part_size, progress.clone())?;
            parts = Some(p);
            s
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = BufWriter::with_capacity(limits::EXPORT_OUT_BUFFER, stdout.lock());
            let s = plan.write_to(&mut w, progress.clone())?;
            w.flush()
                .map_err(|e| Error::from(e).with_message("writing to stdout"))?;
            s
        }
        Some((partial, file)) => plan.write_partial(partial, file, progress.clone())?,
    };
    drop(bar);
    let mut json = serde_json::to_value(&summary).map_err(|e| Error::internal(e.to_string()))?;
    if let Some(p) = &parts {
        p.add_to(&mut json);
    }
    if a.json {
        if to_stdout {
            // Standard output carries the package.
            let _ = writeln!(std::io::stderr(), "{json}");
        } else {
            outln!("{json}")?;
        }
    } else if !to_stdout {
        for d in &summary.disks {
            outln!(
                "{} ({}, {} bytes) -> {} ({}, {} bytes)",
                d.source.display(),
                d.source_format,
                d.capacity,
                d.href,
                d.format,
                d.size
            )?;
        }
        match parts {
            Some(p) => outln!(
                "wrote {} ({} bytes in {} parts)",
                a.output,
                summary.size,
                p.count
            )?,
            None => outln!("wrote {} ({} bytes)", a.output, summary.size)?,
        }
    }
    Ok(())
}
