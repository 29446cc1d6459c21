#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Certificates issued here, checked by a real peer: the `openssl` binary.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use basalt_pki::{issue_client_cert, issue_server_cert, CertAndKey, Role, SecretsBundle};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl binary runs (hack/setup.sh installs it)")
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

fn verify(ca: &str, leaf: &str) -> Output {
    openssl(&["verify", "-CAfile", ca, leaf])
}

fn text(cert: &str) -> String {
    let out = openssl(&["x509", "-noout", "-text", "-in", cert]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn subject_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("Subject:"))
        .unwrap_or_else(|| panic!("no subject in {text}"))
}

/// Every CA of a bundle issues client and server certificates that openssl verifies
/// against that CA, and refuses against the same CA of another bundle.
#[test]
fn openssl_verifies_what_every_ca_issues() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = SecretsBundle::generate().unwrap();
    let other = SecretsBundle::generate().unwrap();
    let cas: [(&str, &CertAndKey, &CertAndKey); 4] = [
        ("os", &bundle.certs.os, &other.certs.os),
        ("k8s", &bundle.certs.k8s, &other.certs.k8s),
        (
            "k8sAggregator",
            &bundle.certs.k8s_aggregator,
            &other.certs.k8s_aggregator,
        ),
        ("etcd", &bundle.certs.etcd, &other.certs.etcd),
    ];
    for (name, ca, wrong_ca) in cas {
        let ca_path = write(dir.path(), &format!("{name}-ca.crt"), &ca.crt);
        let wrong_path = write(dir.path(), &format!("{name}-wrong-ca.crt"), &wrong_ca.crt);

        let admin = issue_client_cert(ca, "admin", &[Role::Admin], DAY).unwrap();
        let backup =
            issue_client_cert(ca, "backup", &[Role::Reader, Role::EtcdBackup], DAY).unwrap();
        let sans = ["127.0.0.1".to_owned(), "node-1.example.org".to_owned()];
        let server = issue_server_cert(ca, "node-1", &sans, DAY).unwrap();

        for (leaf_name, leaf) in [("admin", &admin), ("backup", &backup), ("server", &server)] {
            let leaf_path = write(dir.path(), &format!("{name}-{leaf_name}.crt"), &leaf.crt);
            let key_path = write(dir.path(), &format!("{name}-{leaf_name}.key"), &leaf.key);

            let out = verify(&ca_path, &leaf_path);
            assert!(
                out.status.success(),
                "{name}/{leaf_name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let out = verify(&wrong_path, &leaf_path);
            assert!(
                !out.status.success(),
                "{name}/{leaf_name} verified against another bundle's CA"
            );

            // openssl reads the key and agrees it is the certificate's.
            let from_cert = openssl(&["x509", "-noout", "-pubkey", "-in", &leaf_path]);
            let from_key = openssl(&["pkey", "-pubout", "-in", &key_path]);
            assert!(from_key.status.success(), "{name}/{leaf_name} key");
            assert_eq!(from_cert.stdout, from_key.stdout, "{name}/{leaf_name}");

            let text = text(&leaf_path);
            // Ed25519 leaves under the Ed25519 CA, P-256 under the others.
            let algorithm = if name == "os" {
                "ED25519"
            } else {
                "id-ecPublicKey"
            };
            assert!(text.contains(algorithm), "{name}/{leaf_name}: {text}");
            assert!(text.contains("CA:FALSE"), "{name}/{leaf_name}: {text}");
            assert!(text.contains("Digital Signature"), "{name}/{leaf_name}");
            assert!(
                text.contains("X509v3 Authority Key Identifier"),
                "{name}/{leaf_name}"
            );
            assert!(
                text.contains("TLS Web Client Authentication"),
                "{name}/{leaf_name}"
            );
        }

        let admin_text = text(
            &dir.path()
                .join(format!("{name}-admin.crt"))
                .to_string_lossy(),
        );
        assert_eq!(
            subject_line(&admin_text),
            "Subject: O = os:admin, CN = admin"
        );
        assert!(!admin_text.contains("TLS Web Server Authentication"));

        let backup_text = text(
            &dir.path()
                .join(format!("{name}-backup.crt"))
                .to_string_lossy(),
        );
        assert_eq!(
            subject_line(&backup_text),
            "Subject: O = os:reader, O = os:etcd:backup, CN = backup"
        );

        let server_text = text(
            &dir.path()
                .join(format!("{name}-server.crt"))
                .to_string_lossy(),
        );
        assert_eq!(subject_line(&server_text), "Subject: CN = node-1");
        assert!(server_text.contains("TLS Web Server Authentication"));
        assert!(
            server_text.contains("IP Address:127.0.0.1, DNS:node-1.example.org"),
            "{server_text}"
        );
    }
}

/// openssl agrees that the CAs are CAs and that each key belongs to its certificate.
#[test]
fn openssl_reads_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = SecretsBundle::generate().unwrap();
    for (name, ca) in [
        ("os", &bundle.certs.os),
        ("k8s", &bundle.certs.k8s),
        ("k8sAggregator", &bundle.certs.k8s_aggregator),
        ("etcd", &bundle.certs.etcd),
    ] {
        let crt = write(dir.path(), &format!("{name}.crt"), &ca.crt);
        let key = write(dir.path(), &format!("{name}.key"), &ca.key);
        let text = text(&crt);
        assert!(text.contains("CA:TRUE"), "{name}: {text}");
        assert!(
            text.contains("Certificate Sign, CRL Sign"),
            "{name}: {text}"
        );
        // Self-signed roots verify against themselves.
        assert!(verify(&crt, &crt).status.success(), "{name}");
        let from_cert = openssl(&["x509", "-noout", "-pubkey", "-in", &crt]);
        let from_key = openssl(&["pkey", "-pubout", "-in", &key]);
        assert!(from_key.status.success(), "{name}");
        assert_eq!(from_cert.stdout, from_key.stdout, "{name}");
    }
    let sa = write(dir.path(), "sa.key", &bundle.certs.k8s_service_account.0);
    let out = openssl(&["pkey", "-noout", "-text", "-in", &sa]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("prime256v1"));
}
