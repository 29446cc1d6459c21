#![allow(clippy::unwrap_used, clippy::expect_used)]
//! An independent client: Python grpcio, with stubs generated from our .proto files only,
//! calls Version and List over mTLS (hack/setup.sh installs grpcio and grpcio-tools).

mod common;

use basalt_pki::Role;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_client_calls_version_and_list_over_mtls() {
    let cluster = Cluster::new();
    let apid = cluster.start("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    let cert = cluster.client_cert(&[Role::Reader]);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (ca, crt, key) = (
        write("ca.crt", &cluster.ca().crt),
        write("client.crt", &cert.crt),
        write("client.key", &cert.key),
    );
    // The virtualenv hack/setup.sh makes with grpcio in it.
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    let out = tokio::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/client.py"
        ))
        .args(["--proto-dir", basalt_api::PROTO_DIR])
        .args(["--addr", &apid.local_addr().to_string()])
        .arg("--ca")
        .arg(&ca)
        .arg("--crt")
        .arg(&crt)
        .arg("--key")
        .arg(&key)
        .args(["--tag", env!("CARGO_PKG_VERSION")])
        .output()
        .await
        .unwrap_or_else(|e| panic!("{python} does not run ({e}): run hack/setup.sh"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("python client: OK"), "{stdout}");
    apid.shutdown().await.unwrap();
}
