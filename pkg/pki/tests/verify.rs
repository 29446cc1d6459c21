#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Issuing leaf certificates and checking them: what `inspect` reads, and each way
//! `verify` refuses.

use std::net::IpAddr;
use std::time::Duration;

use basalt_pki::{
    inspect, issue_client_cert, issue_server_cert, roles_of, verify, CertAndKey, CertInfo,
    PkiError, Role, SecretsBundle, CLOCK_SKEW_ALLOWANCE,
};
use base64::Engine as _;
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::pem::parse_x509_pem;

const HOUR: Duration = Duration::from_secs(3600);

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[test]
fn client_certificates_carry_roles() {
    let bundle = SecretsBundle::generate().unwrap();
    let before = now();
    let cert = issue_client_cert(
        &bundle.certs.os,
        "ops",
        &[Role::Operator, Role::Reader, Role::Operator],
        HOUR,
    )
    .unwrap();
    let info = verify(&cert.crt, &bundle.certs.os.crt, now()).unwrap();
    assert_eq!(info, inspect(&cert.crt).unwrap());
    assert_eq!(info.subject_cn, "ops");
    assert_eq!(info.issuer_cn, "basalt-os-ca");
    assert_eq!(
        info.organizations,
        ["os:operator", "os:reader"],
        "deduplicated"
    );
    assert_eq!(roles_of(&info), [Role::Operator, Role::Reader]);
    assert!(info.client_auth && !info.server_auth && !info.is_ca);
    assert!(info.dns_sans.is_empty() && info.ip_sans.is_empty());

    // Backdated for clock skew, valid for the hour asked.
    let skew = before - info.not_before;
    assert!(
        skew >= CLOCK_SKEW_ALLOWANCE - time::Duration::seconds(2)
            && skew <= CLOCK_SKEW_ALLOWANCE + time::Duration::seconds(2),
        "{skew}"
    );
    let lifetime = info.not_after - before;
    assert!(
        (lifetime - time::Duration::hours(1)).abs() < time::Duration::seconds(5),
        "{lifetime}"
    );

    let none = issue_client_cert(&bundle.certs.os, "nobody", &[], HOUR).unwrap();
    let info = inspect(&none.crt).unwrap();
    assert!(info.organizations.is_empty());
    assert!(roles_of(&info).is_empty());
}

#[test]
fn server_certificates_type_their_sans() {
    let bundle = SecretsBundle::generate().unwrap();
    let sans = [
        "10.5.0.2".to_owned(),
        "node-1.example.org".to_owned(),
        "fd00::2".to_owned(),
        "localhost".to_owned(),
    ];
    let cert = issue_server_cert(&bundle.certs.etcd, "node-1", &sans, HOUR).unwrap();
    let info = verify(&cert.crt, &bundle.certs.etcd.crt, now()).unwrap();
    assert_eq!(info.subject_cn, "node-1");
    assert!(info.organizations.is_empty());
    assert_eq!(info.dns_sans, ["node-1.example.org", "localhost"]);
    assert_eq!(
        info.ip_sans,
        [
            "10.5.0.2".parse::<IpAddr>().unwrap(),
            "fd00::2".parse().unwrap()
        ]
    );
    assert!(info.server_auth && info.client_auth && !info.is_ca);

    let err =
        issue_server_cert(&bundle.certs.etcd, "n", &["bad name".to_owned()], HOUR).unwrap_err();
    assert!(matches!(err, PkiError::InvalidSan { .. }), "{err:?}");
}

fn parse_der(pem: &str) -> Vec<u8> {
    parse_x509_pem(pem.as_bytes()).unwrap().1.contents
}

#[test]
fn leaves_name_their_authority_key() {
    let bundle = SecretsBundle::generate().unwrap();
    for ca in [&bundle.certs.os, &bundle.certs.k8s] {
        let leaf = issue_client_cert(ca, "admin", &[Role::Admin], HOUR).unwrap();
        let ca_der = parse_der(&ca.crt);
        let leaf_der = parse_der(&leaf.crt);
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let (_, leaf_cert) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        let ski = ca_cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap();
        let aki = leaf_cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, ski);
        // Serial numbers are random and positive.
        let other = issue_client_cert(ca, "admin", &[Role::Admin], HOUR).unwrap();
        let other_der = parse_der(&other.crt);
        let (_, other_cert) = x509_parser::parse_x509_certificate(&other_der).unwrap();
        assert_ne!(leaf_cert.raw_serial(), other_cert.raw_serial());
        assert!(leaf_cert.raw_serial().len() >= 16);
    }
}

#[test]
fn leaves_never_outlive_their_ca() {
    let bundle = SecretsBundle::generate().unwrap();
    let ca = inspect(&bundle.certs.k8s.crt).unwrap();
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    let leaf = issue_client_cert(&bundle.certs.k8s, "admin", &[Role::Admin], century).unwrap();
    assert_eq!(inspect(&leaf.crt).unwrap().not_after, ca.not_after);

    let err = issue_client_cert(&bundle.certs.k8s, "admin", &[], Duration::ZERO).unwrap_err();
    assert!(matches!(err, PkiError::InvalidValidity { .. }), "{err:?}");
}

#[test]
fn verify_refuses_another_ca() {
    let bundle = SecretsBundle::generate().unwrap();
    let other = SecretsBundle::generate().unwrap();
    let cert = issue_client_cert(&bundle.certs.etcd, "backup", &[Role::EtcdBackup], HOUR).unwrap();

    // Same name, other key: only the signature tells them apart.
    let err = verify(&cert.crt, &other.certs.etcd.crt, now()).unwrap_err();
    assert!(matches!(err, PkiError::BadSignature { .. }), "{err:?}");
    assert!(err.to_string().contains("backup"), "{err}");

    let err = verify(&cert.crt, &bundle.certs.k8s.crt, now()).unwrap_err();
    let PkiError::WrongIssuer {
        subject,
        issuer,
        ca,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(
        (subject.as_str(), issuer.as_str(), ca.as_str()),
        ("backup", "CN=etcd-ca", "CN=kubernetes")
    );
}

/// Flips one bit of the signature, which is the last thing in the DER.
fn tamper(cert: &CertAndKey) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut der = parse_der(&cert.crt);
    *der.last_mut().unwrap() ^= 1;
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        b64.encode(der)
    )
}

#[test]
fn verify_refuses_a_tampered_signature() {
    let bundle = SecretsBundle::generate().unwrap();
    for ca in [&bundle.certs.os, &bundle.certs.k8s] {
        let cert = issue_client_cert(ca, "admin", &[Role::Admin], HOUR).unwrap();
        let err = verify(&tamper(&cert), &ca.crt, now()).unwrap_err();
        assert!(matches!(err, PkiError::BadSignature { .. }), "{err:?}");
    }
}

#[test]
fn verify_checks_the_validity_window() {
    let bundle = SecretsBundle::generate().unwrap();
    let cert = issue_client_cert(&bundle.certs.os, "brief", &[], Duration::from_secs(1)).unwrap();
    let info = inspect(&cert.crt).unwrap();

    let err = verify(
        &cert.crt,
        &bundle.certs.os.crt,
        now() + time::Duration::days(1),
    )
    .unwrap_err();
    let PkiError::Expired { subject, not_after } = &err else {
        panic!("{err:?}");
    };
    assert_eq!((subject.as_str(), *not_after), ("brief", info.not_after));

    let err = verify(
        &cert.crt,
        &bundle.certs.os.crt,
        now() - time::Duration::days(1),
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::NotYetValid { .. }), "{err:?}");

    // An hour-long certificate under a CA checked twenty years on: the CA has expired.
    let long = issue_client_cert(&bundle.certs.os, "long", &[], HOUR).unwrap();
    let err = verify(
        &long.crt,
        &bundle.certs.os.crt,
        now() + time::Duration::days(7300),
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::Expired { .. }), "{err:?}");
}

#[test]
fn a_leaf_is_not_a_ca() {
    let bundle = SecretsBundle::generate().unwrap();
    let leaf = issue_server_cert(&bundle.certs.k8s, "node-1", &[], HOUR).unwrap();
    let other = issue_client_cert(&bundle.certs.k8s, "admin", &[Role::Admin], HOUR).unwrap();

    let err = verify(&other.crt, &leaf.crt, now()).unwrap_err();
    assert!(matches!(err, PkiError::NotACa { .. }), "{err:?}");
    assert!(err.to_string().contains("node-1"), "{err}");

    let err = issue_client_cert(&leaf, "admin", &[Role::Admin], HOUR).unwrap_err();
    assert!(matches!(err, PkiError::NotACa { .. }), "{err:?}");
}

#[test]
fn issuing_needs_the_ca_key() {
    let bundle = SecretsBundle::generate().unwrap();
    let other = SecretsBundle::generate().unwrap();
    let crossed = CertAndKey {
        crt: bundle.certs.etcd.crt.clone(),
        key: other.certs.etcd.key.clone(),
    };
    let err = issue_client_cert(&crossed, "admin", &[Role::Admin], HOUR).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err:?}");
    assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");

    let err = issue_client_cert(&bundle.certs.etcd, "", &[], HOUR).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCommonName { .. }), "{err:?}");
}

#[test]
fn roles_of_ignores_other_organizations() {
    let info = CertInfo {
        subject_cn: "x".into(),
        organizations: vec![
            "system:masters".into(),
            "os:etcd:backup".into(),
            "os:admin".into(),
            "os:etcd:backup".into(),
        ],
        issuer_cn: "ca".into(),
        not_before: now(),
        not_after: now(),
        is_ca: false,
        dns_sans: vec![],
        ip_sans: vec![],
        server_auth: false,
        client_auth: true,
    };
    assert_eq!(roles_of(&info), [Role::EtcdBackup, Role::Admin]);
}

#[test]
fn inspect_refuses_what_is_not_one_certificate() {
    let bundle = SecretsBundle::generate().unwrap();
    for bad in [
        String::new(),
        "garbage".to_owned(),
        bundle.certs.os.key.clone(),
        format!("{}{}", bundle.certs.os.crt, bundle.certs.k8s.crt),
    ] {
        let err = inspect(&bad).unwrap_err();
        assert!(
            matches!(err, PkiError::InvalidCertificate { .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
    }
}
