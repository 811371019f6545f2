//! Server jobs into and out of object storage, configured by the `[s3]`
//! section (no `AWS_*` variable in the server's environment), against a
//! real S3-compatible server; and job sources the allow-list refuses.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::Work;
use support::s3::S3Server;
use support::server::Server;

fn qemu(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("run qemu tool");
    assert!(st.success(), "{args:?}");
}

/// A job run to its end.
fn run_job(s: &Server, job: &Value) -> Value {
    let r = s.control("POST", "/jobs", Some(job));
    assert_eq!(r.status, 201, "POST /jobs: {}", r.text());
    let id = r.json()["id"].as_str().expect("job id").to_owned();
    support::poll(&format!("job {id} ends"), || {
        let j = s.control("GET", &format!("/jobs/{id}"), None).json();
        (!matches!(j["state"].as_str(), Some("pending" | "active"))).then_some(j)
    })
}

/// A server whose `[s3]` section points at `s3`.
fn server_for(w: &Work, s3: &S3Server) -> Server {
    let env: std::collections::HashMap<String, String> = s3.env().into_iter().collect();
    let secret = w.path("s3-secret");
    std::fs::write(&secret, format!("{}\n", env["AWS_SECRET_ACCESS_KEY"])).expect("secret");
    let cfg = w.path("ovaio.toml");
    std::fs::write(
        &cfg,
        format!(
            "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key_file = \"{}\"\n",
            env["AWS_ENDPOINT_URL"],
            env["AWS_ACCESS_KEY_ID"],
            secret.display()
        ),
    )
    .expect("config");
    let cfg = cfg.to_str().expect("utf-8 path").to_owned();
    Server::start_with(w, &["--config", &cfg])
}

fn compare(a: &Path, b: &Path) {
    let out = Command::new("qemu-img")
        .arg("compare")
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img compare");
    assert!(
        out.status.success(),
        "{} and {} differ: {}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn jobs_export_into_and_import_from_object_storage() {
    let w = Work::new();
    let s3 = S3Server::start(&w);
    let s = server_for(&w, &s3);
    let vol = s.root.join("src.qcow2");
    let v = vol.to_str().expect("utf-8");
    qemu(&["qemu-img", "create", "-q", "-f", "qcow2", v, "64M"]);
    qemu(&["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 7M", v]);
    qemu(&["qemu-io", "-f", "qcow2", "-c", "write -P 0x17 40M 3M", v]);

    let export = json!({"type": "export", "target": s3.url("jobs/vm.ova"), "name": "vm",
                        "disks": [{"href": "d1.qcow2", "url": s.file_url("src.qcow2")}]});
    let done = run_job(&s, &export);
    assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log());
    let size = done["result"]["size"].as_u64().expect("size");
    assert_eq!(done["total"].as_u64(), Some(size), "{done}");
    assert_eq!(done["bytes"].as_u64(), Some(size), "{done}");
    assert!(done["rate"].as_u64().is_some_and(|r| r > 0), "{done}");
    assert_eq!(done["result"]["target"], s3.url("jobs/vm.ova"), "{done}");
    let parts = done["result"]["parts"].as_u64().expect("parts");
    let part_size = done["result"]["part_size"].as_u64().expect("part size");
    assert_eq!(parts, size.div_ceil(part_size), "{done}");
    assert!(s3.list().contains(&"jobs/vm.ova".to_owned()));
    assert_eq!(
        std::fs::metadata(s3.object_path("jobs/vm.ova"))
            .expect("object")
            .len(),
        size
    );

    // The same object again without "overwrite": the job fails, the
    // object stays.
    let again = run_job(&s, &export);
    assert_eq!(again["state"], "failed", "{again}");
    assert!(
        again["error"]
            .as_str()
            .is_some_and(|e| e.contains("exists")),
        "{again}"
    );

    let import = json!({"type": "import", "source": s3.url("jobs/vm.ova"),
                        "disks": [{"href": "d1.qcow2", "url": s.file_url("back.qcow2"), "format": "qcow2"}]});
    let done = run_job(&s, &import);
    assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log());
    assert_eq!(done["total"].as_u64(), Some(size), "{done}");
    assert_eq!(done["bytes"].as_u64(), Some(size), "{done}");
    assert_eq!(done["retries"].as_u64(), Some(0), "{done}");
    assert_eq!(done["result"]["manifest"], "verified", "{done}");
    compare(&vol, &s.root.join("back.qcow2"));

    // A missing object: the job fails naming it, and leaves no target.
    let missing = json!({"type": "import", "source": s3.url("jobs/none.ova"),
                         "disks": [{"href": "d1.qcow2", "url": s.file_url("none.raw")}]});
    let done = run_job(&s, &missing);
    assert_eq!(done["state"], "failed", "{done}");
    let e = done["error"].as_str().unwrap_or_default();
    assert!(e.contains("404") && e.contains("s3://"), "{done}");
    assert!(!s.root.join("none.raw").exists());
    assert!(!s.root.join("none.raw.partial").exists());
}

#[test]
fn job_sources_are_checked_when_posted() {
    let w = Work::new();
    let s = Server::start_with(&w, &["--remote-allow", "site-a.example"]);
    let disks = json!([{"href": "d1.qcow2", "url": s.file_url("t.raw")}]);
    for (source, says) in [
        (
            "https://site-b.example:54322/images/abc",
            "not in remote.allow",
        ),
        ("http://127.0.0.1:9/vm.ova", "not in remote.allow"),
        ("https://user:pw@site-a.example/vm.ova", "user information"),
        ("s3://Bad_Bucket/vm.ova", "bucket name"),
        ("s3://bucket", "no key"),
    ] {
        let job = json!({"type": "import", "source": source, "disks": disks});
        let r = s.control("POST", "/jobs", Some(&job));
        assert_eq!(r.status, 400, "{source}: {}", r.text());
        assert!(r.text().contains(says), "{source}: {}", r.text());
        // The refusal never echoes a credential.
        assert!(!r.text().contains("pw@"), "{}", r.text());
    }
    let bad_target = json!({"type": "export", "target": "s3://bucket/", "name": "vm",
                            "disks": [{"href": "d1.qcow2", "url": s.file_url("t.raw")}]});
    let r = s.control("POST", "/jobs", Some(&bad_target));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("key is empty"), "{}", r.text());
}
