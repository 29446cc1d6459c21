#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The secrets bundle: generation, YAML shape and round trip, refusal of bad input,
//! files, and redaction.

use std::os::unix::fs::PermissionsExt;

use basalt_pki::{CertAndKey, KeyPem, PkiError, SecretsBundle};
use base64::Engine as _;
use serde_yaml_ng::Value;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::pem::parse_x509_pem;

fn yaml_map<'a>(value: &'a Value, key: &str) -> &'a Value {
    value
        .get(key)
        .unwrap_or_else(|| panic!("missing {key:?} in {value:?}"))
}

fn keys_of(value: &Value) -> Vec<String> {
    value
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn round_trip_and_shape() {
    let bundle = SecretsBundle::generate().unwrap();
    let yaml = bundle.to_yaml().unwrap();
    assert_eq!(SecretsBundle::from_yaml(&yaml).unwrap(), bundle);

    let doc: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(
        keys_of(&doc),
        ["cluster", "bootstrapToken", "trustdinfo", "certs"]
    );
    assert_ne!(bundle.trustdinfo.token, bundle.bootstrap_token);
    let cluster = yaml_map(&doc, "cluster");
    assert_eq!(keys_of(cluster), ["id", "secret"]);
    for field in ["id", "secret"] {
        let text = yaml_map(cluster, field).as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        assert_eq!(bytes.len(), 32, "cluster.{field}");
    }
    assert_ne!(bundle.cluster.id, bundle.cluster.secret);

    let token = yaml_map(&doc, "bootstrapToken").as_str().unwrap();
    let (id, secret) = token.split_once('.').unwrap();
    let token_chars = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    assert!(id.len() == 6 && token_chars(id), "{token}");
    assert!(secret.len() == 16 && token_chars(secret), "{token}");

    let certs = yaml_map(&doc, "certs");
    assert_eq!(
        keys_of(certs),
        ["os", "k8s", "k8sAggregator", "etcd", "k8sServiceAccount"]
    );
    for ca in ["os", "k8s", "k8sAggregator", "etcd"] {
        let pair = yaml_map(certs, ca);
        assert_eq!(keys_of(pair), ["crt", "key"], "certs.{ca}");
        assert!(yaml_map(pair, "crt")
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(yaml_map(pair, "key")
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    }
    assert!(yaml_map(certs, "k8sServiceAccount")
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----\n"));

    // Two bundles share nothing.
    let other = SecretsBundle::generate().unwrap();
    assert_ne!(other.cluster, bundle.cluster);
    assert_ne!(other.bootstrap_token, bundle.bootstrap_token);
    assert_ne!(other.certs.os, bundle.certs.os);
}

#[test]
fn ca_algorithms_names_and_lifetimes() {
    let bundle = SecretsBundle::generate().unwrap();
    let now = time::OffsetDateTime::now_utc();
    for (pair, cn, ed25519) in [
        (&bundle.certs.os, "basalt-os-ca", true),
        (&bundle.certs.k8s, "kubernetes", false),
        (&bundle.certs.k8s_aggregator, "front-proxy-ca", false),
        (&bundle.certs.etcd, "etcd-ca", false),
    ] {
        let (_, pem) = parse_x509_pem(pair.crt.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let spki = &cert.public_key().algorithm;
        if ed25519 {
            assert_eq!(spki.algorithm, OID_SIG_ED25519, "{cn}");
        } else {
            assert_eq!(spki.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY, "{cn}");
            let curve = spki.parameters.as_ref().unwrap().as_oid().unwrap();
            assert_eq!(curve, OID_EC_P256, "{cn}");
        }
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign(), "{cn}");

        let info = basalt_pki::inspect(&pair.crt).unwrap();
        assert_eq!(info.subject_cn, cn);
        assert_eq!(info.issuer_cn, cn, "self-signed");
        assert!(info.is_ca, "{cn}");
        let lifetime = info.not_after - now;
        assert!(
            lifetime > time::Duration::days(3649) && lifetime <= time::Duration::days(3650),
            "{cn}: {lifetime}"
        );
        assert!(info.not_before < now, "{cn}: backdated for clock skew");
        // Self-signed: a CA verifies against itself.
        basalt_pki::verify(&pair.crt, &pair.crt, now).unwrap();
    }
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the bundle");
    text.replacen(from, to, 1)
}

#[test]
fn from_yaml_rejects_unknown_fields() {
    let yaml = SecretsBundle::generate().unwrap().to_yaml().unwrap();
    for (from, to, unknown) in [
        (
            "bootstrapToken:",
            "surprise: 1\nbootstrapToken:",
            "surprise",
        ),
        ("  secret:", "  pepper: x\n  secret:", "pepper"),
        ("  etcd:\n", "  etcd:\n    ca: x\n", "ca"),
        (
            "  k8sServiceAccount:",
            "  k8sserviceaccount: x\n  k8sServiceAccount:",
            "k8sserviceaccount",
        ),
    ] {
        let err = SecretsBundle::from_yaml(&replace_once(&yaml, from, to)).unwrap_err();
        assert!(matches!(err, PkiError::Yaml { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(unknown), "{unknown}: {text}");
    }
}

/// A bundle changed in one place, the field the error must name, and whether the error
/// is the expected kind.
type Case = (
    &'static str,
    Box<dyn Fn(&mut SecretsBundle)>,
    &'static str,
    fn(&PkiError) -> bool,
);

#[test]
fn from_yaml_names_the_bad_field() {
    let bundle = SecretsBundle::generate().unwrap();
    let other = SecretsBundle::generate().unwrap();
    let leaf = basalt_pki::issue_client_cert(
        &bundle.certs.os,
        "admin",
        &[basalt_pki::Role::Admin],
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let other_etcd_key = other.certs.etcd.key.clone();
    let os_key = bundle.certs.os.key.clone();
    let k8s_key = bundle.certs.k8s.key.clone();
    let two_certs = format!("{}{}", bundle.certs.k8s.crt, other.certs.k8s.crt);

    let invalid_cert = |e: &PkiError| matches!(e, PkiError::InvalidCertificate { .. });
    let invalid_key = |e: &PkiError| matches!(e, PkiError::InvalidKey { .. });
    let mismatch = |e: &PkiError| matches!(e, PkiError::KeyMismatch { .. });
    let invalid_field = |e: &PkiError| matches!(e, PkiError::InvalidField { .. });
    let cases: Vec<Case> = vec![
        (
            "garbage DER in a PEM block",
            Box::new(|b| {
                b.certs.k8s.crt = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n".into()
            }),
            "certs.k8s.crt",
            invalid_cert,
        ),
        (
            "not PEM at all",
            Box::new(|b| b.certs.k8s.crt = "hello".into()),
            "certs.k8s.crt",
            invalid_cert,
        ),
        (
            "two certificates",
            Box::new(move |b| b.certs.k8s.crt = two_certs.clone()),
            "certs.k8s.crt",
            invalid_cert,
        ),
        (
            "the key of another bundle's etcd CA",
            Box::new(move |b| b.certs.etcd.key = other_etcd_key.clone()),
            "certs.etcd.key",
            mismatch,
        ),
        (
            "a P-256 key with the Ed25519 OS CA",
            Box::new(move |b| b.certs.os.key = k8s_key.clone()),
            "certs.os.key",
            mismatch,
        ),
        (
            "a key that is not a key",
            Box::new(|b| {
                b.certs.k8s_aggregator.key =
                    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into()
            }),
            "certs.k8sAggregator.key",
            invalid_key,
        ),
        (
            "a leaf certificate where a CA belongs",
            Box::new(move |b| b.certs.os = leaf.clone()),
            "certs.os.crt",
            invalid_cert,
        ),
        (
            "an Ed25519 service-account key",
            Box::new(move |b| b.certs.k8s_service_account = KeyPem(os_key.clone())),
            "certs.k8sServiceAccount",
            invalid_key,
        ),
        (
            "a service-account key that is a certificate",
            Box::new(|b| b.certs.k8s_service_account = KeyPem(b.certs.k8s.crt.clone())),
            "certs.k8sServiceAccount",
            invalid_key,
        ),
        (
            "a short cluster secret",
            Box::new(|b| b.cluster.secret = "c2hvcnQ=".into()),
            "cluster.secret",
            invalid_field,
        ),
        (
            "a cluster id that is not base64",
            Box::new(|b| b.cluster.id = "not base64!".into()),
            "cluster.id",
            invalid_field,
        ),
        (
            "a malformed bootstrap token",
            Box::new(|b| b.bootstrap_token.0 = "ABCDEF.0123456789abcdef".into()),
            "bootstrapToken",
            invalid_field,
        ),
        (
            "a malformed machine token",
            Box::new(|b| b.trustdinfo.token.0 = "abcdef".into()),
            "trustdinfo.token",
            invalid_field,
        ),
    ];
    for (what, change, field, kind) in cases {
        let mut bad = bundle.clone();
        change(&mut bad);
        let yaml = bad.to_yaml().unwrap();
        let err = SecretsBundle::from_yaml(&yaml).unwrap_err();
        assert!(kind(&err), "{what}: {err:?}");
        let text = err.to_string();
        assert!(text.starts_with(field), "{what}: {text}");
        assert_no_secret(&text, &bundle);
        assert_no_secret(&format!("{err:?}"), &bundle);
    }
}

#[test]
fn from_yaml_never_accepts_a_truncated_bundle() {
    let yaml = SecretsBundle::generate().unwrap().to_yaml().unwrap();
    // Every cut that loses more than the final newline.
    for end in (0..yaml.len() - 1).filter(|i| yaml.is_char_boundary(*i)) {
        assert!(
            SecretsBundle::from_yaml(&yaml[..end]).is_err(),
            "accepted the first {end} of {} bytes",
            yaml.len()
        );
    }
    assert!(SecretsBundle::from_yaml("").is_err());
    assert!(SecretsBundle::from_yaml("certs: [").is_err());
}

#[test]
fn write_to_is_private_and_read_from_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.yaml");
    let bundle = SecretsBundle::generate().unwrap();
    bundle.write_to(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert_eq!(SecretsBundle::read_from(&path).unwrap(), bundle);

    // Replacing an existing, more open file leaves it 0600 too, and no temp files.
    let newer = SecretsBundle::generate().unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    newer.write_to(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert_eq!(SecretsBundle::read_from(&path).unwrap(), newer);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secrets.yaml"]);

    // Errors name the file.
    let missing = dir.path().join("missing.yaml");
    let err = SecretsBundle::read_from(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.yaml"), "{err}");
    std::fs::write(&path, "certs: {}\n").unwrap();
    let err = SecretsBundle::read_from(&path).unwrap_err();
    assert!(matches!(err, PkiError::File { .. }), "{err:?}");
    assert!(err.to_string().contains("secrets.yaml"), "{err}");
    let err = bundle
        .write_to(dir.path().join("no-such-dir/secrets.yaml"))
        .unwrap_err();
    assert!(matches!(err, PkiError::Io { .. }), "{err:?}");
}

/// No private key, cluster secret or token secret of `bundle` appears in `text`.
fn assert_no_secret(text: &str, bundle: &SecretsBundle) {
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let keys = [
        &bundle.certs.os.key,
        &bundle.certs.k8s.key,
        &bundle.certs.k8s_aggregator.key,
        &bundle.certs.etcd.key,
        &bundle.certs.k8s_service_account.0,
    ];
    for key in keys {
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            // Any 16 characters of the base64 body would be a leak.
            for chunk in line.as_bytes().chunks(16).filter(|c| c.len() == 16) {
                let chunk = std::str::from_utf8(chunk).unwrap();
                assert!(!text.contains(chunk), "key material in {text}");
            }
        }
    }
    assert!(!text.contains(&bundle.cluster.secret), "{text}");
    let (_, token_secret) = bundle.bootstrap_token.0.split_once('.').unwrap();
    assert!(!text.contains(token_secret), "{text}");
}

#[test]
fn debug_and_display_redact_secrets() {
    let bundle = SecretsBundle::generate().unwrap();
    for text in [
        format!("{bundle:?}"),
        format!("{bundle:#?}"),
        bundle.to_string(),
    ] {
        assert_no_secret(&text, &bundle);
        assert!(text.contains("etcd-ca"), "{text}");
    }
    let debug = format!("{bundle:?}");
    assert!(
        debug.contains(&bundle.cluster.id),
        "the id is not secret: {debug}"
    );
    assert!(debug.contains("<redacted>"), "{debug}");

    let pair: &CertAndKey = &bundle.certs.os;
    for text in [format!("{pair:?}"), format!("{pair:#?}"), pair.to_string()] {
        assert_no_secret(&text, &bundle);
        assert!(text.contains("CN=basalt-os-ca"), "{text}");
    }
    assert!(format!("{pair:?}").contains("key: \"<redacted>\""));
    let sa = format!("{:?}", bundle.certs.k8s_service_account);
    assert_no_secret(&sa, &bundle);
    assert_eq!(sa, "KeyPem(\"<redacted>\")");
}

/// serde quotes unexpected strings in its errors; a key pasted one level off must not end
/// up in the message.
#[test]
fn misplaced_keys_are_not_quoted_in_errors() {
    let bundle = SecretsBundle::generate().unwrap();
    let yaml = bundle.to_yaml().unwrap();
    let doc: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    for path in [["certs", "os"], ["certs", "etcd"], ["cluster", "cluster"]] {
        let mut doc = doc.clone();
        let key = Value::String(bundle.certs.k8s.key.clone());
        if path[0] == path[1] {
            doc[path[0]] = key;
        } else {
            doc[path[0]][path[1]] = key;
        }
        let err = SecretsBundle::from_yaml(&serde_yaml_ng::to_string(&doc).unwrap()).unwrap_err();
        assert!(matches!(err, PkiError::Yaml { .. }), "{err:?}");
        assert!(err.to_string().contains("<redacted>"), "{err}");
        assert_no_secret(&err.to_string(), &bundle);
        assert_no_secret(&format!("{err:?}"), &bundle);
    }
}
