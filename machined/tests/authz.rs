#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Authentication and authorization: every RPC for every role, exactly as the table
//! says; certificates from another CA, expired or missing are refused by TLS; readers
//! never see sensitive resources.

mod common;

use std::time::Duration;

use apid::authz::RULES;
use basalt_api::client::ClientTls;
use basalt_api::machine::v1 as mapi;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::resource::v1 as rapi;
use basalt_api::resource::v1::resource_service_client::ResourceServiceClient;
use basalt_pki::{issue_client_cert, Role, SecretsBundle};
use basalt_resource::Resource;
use basalt_resources::config::MachineConfigSpec;
use common::*;

#[tokio::test]
async fn every_rpc_allows_and_denies_each_role_as_the_table_says() {
    let cluster = Cluster::new();
    let apid = cluster.start("127.0.0.1").await;
    let identities: Vec<(&str, Vec<Role>)> = vec![
        ("admin", vec![Role::Admin]),
        ("operator", vec![Role::Operator]),
        ("reader", vec![Role::Reader]),
        ("etcd-backup", vec![Role::EtcdBackup]),
        // A node's certificate without a forwarded role list has no role at all.
        ("impersonator", vec![Role::Impersonator]),
        ("no role", vec![]),
    ];
    let mut checked = 0;
    for (name, roles) in &identities {
        let channel = channel(apid.local_addr(), &cluster.tls(roles)).await;
        for (path, streaming) in basalt_api::METHODS {
            let rule = RULES.iter().find(|r| r.path == *path).unwrap();
            let allowed = roles.iter().any(|r| rule.roles.contains(r));
            let result = raw_call(&channel, path, *streaming, bytes::Bytes::new()).await;
            match (&result, allowed) {
                (Err(status), true) => assert!(
                    !denied_by_table(status) && status.code() != tonic::Code::Unauthenticated,
                    "{name} should be allowed {path}: {status:?}"
                ),
                (Err(status), false) => assert!(
                    denied_by_table(status),
                    "{name} should be denied {path} by the table: {status:?}"
                ),
                (Ok(()), true) => {}
                (Ok(()), false) => panic!("{name} was allowed {path}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, identities.len() * basalt_api::METHODS.len());
    println!("checked {checked} (identity, RPC) pairs");
    apid.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_path_outside_the_table_is_denied() {
    let cluster = Cluster::new();
    let apid = cluster.start("127.0.0.1").await;
    let channel = channel(apid.local_addr(), &cluster.tls(&[Role::Admin])).await;
    let status = raw_call(
        &channel,
        "/basalt.machine.v1.MachineService/Nope",
        false,
        bytes::Bytes::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("not in the authorization table"),
        "{status:?}"
    );
}

/// The TLS alert the server sent, as the client saw it.
async fn refused(apid: &machined::Node, tls: &ClientTls) -> String {
    // The handshake may fail at connect, or (TLS 1.3: the client finishes first) at the
    // first call when the server rejects the client's certificate.
    let error = match try_channel(apid.local_addr(), tls).await {
        Err(e) => format!("{e:?}"),
        Ok(channel) => {
            let status = MachineServiceClient::new(channel)
                .version(mapi::VersionRequest {})
                .await
                .unwrap_err();
            format!("{status:?}")
        }
    };
    assert!(error.contains("alert"), "not refused by TLS: {error}");
    error
}

#[tokio::test]
async fn wrong_ca_expired_and_missing_certificates_are_refused_by_tls() {
    let cluster = Cluster::new();
    let apid = cluster.start("127.0.0.1").await;
    let ca = cluster.ca().crt.clone();

    let other = SecretsBundle::generate().unwrap();
    let foreign = issue_client_cert(&other.certs.os, "mallory", &[Role::Admin], HOUR).unwrap();
    let foreign = ClientTls::Mutual {
        ca: ca.clone(),
        crt: foreign.crt,
        key: foreign.key,
    };
    let error = refused(&apid, &foreign).await;
    assert!(
        error.contains("DecryptError")
            || error.contains("BadCertificate")
            || error.contains("UnknownCA"),
        "{error}"
    );

    let expired =
        issue_client_cert(cluster.ca(), "late", &[Role::Admin], Duration::from_secs(1)).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = ClientTls::Mutual {
        ca: ca.clone(),
        crt: expired.crt,
        key: expired.key,
    };
    let error = refused(&apid, &expired).await;
    assert!(error.contains("CertificateExpired"), "{error}");

    // No client certificate at all (and not verifying the server either).
    let error = refused(&apid, &ClientTls::Insecure { pin: None }).await;
    assert!(error.contains("CertificateRequired"), "{error}");

    // The server is still fine for a proper client.
    let channel = channel(apid.local_addr(), &cluster.tls(&[Role::Reader])).await;
    MachineServiceClient::new(channel)
        .version(mapi::VersionRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn readers_and_operators_never_see_sensitive_resources() {
    let cluster = Cluster::new();
    let apid = cluster.start("127.0.0.1").await;
    let state = apid.state().clone();
    let secret = MachineConfigSpec {
        yaml: "secret: yes".into(),
        digest: "d".into(),
    };
    state
        .create(Resource::new("staged", secret).into_any(), "")
        .await
        .unwrap();

    let get = rapi::GetRequest {
        namespace: String::new(),
        r#type: "mc".into(),
        id: "staged".into(),
    };
    let list = rapi::ListRequest {
        r#type: "machineconfigs".into(),
        ..Default::default()
    };
    let watch = rapi::WatchRequest {
        r#type: "mc".into(),
        bootstrap: true,
        ..Default::default()
    };
    for roles in [
        vec![Role::Reader],
        vec![Role::Operator],
        vec![Role::Reader, Role::Operator],
    ] {
        let mut client =
            ResourceServiceClient::new(channel(apid.local_addr(), &cluster.tls(&roles)).await);
        for status in [
            client.get(get.clone()).await.unwrap_err(),
            client.list(list.clone()).await.unwrap_err(),
            client.watch(watch.clone()).await.unwrap_err(),
        ] {
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{roles:?}: {status:?}"
            );
            assert!(status.message().contains("sensitive"), "{status:?}");
        }
    }
    // An admin reads it.
    let mut admin =
        ResourceServiceClient::new(channel(apid.local_addr(), &cluster.tls(&[Role::Admin])).await);
    let got = admin.get(get).await.unwrap().into_inner();
    let spec = &got.messages[0].resource.as_ref().unwrap().spec;
    assert!(spec.contains("secret: yes"), "{spec}");
    // Definitions say which types are sensitive, to everyone.
    let mut reader =
        ResourceServiceClient::new(channel(apid.local_addr(), &cluster.tls(&[Role::Reader])).await);
    let defs = reader
        .definitions(rapi::DefinitionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mc = defs.messages[0]
        .definitions
        .iter()
        .find(|d| d.r#type == "MachineConfigs.config.basalt.dev")
        .unwrap();
    assert!(mc.sensitive);
}

#[tokio::test]
async fn a_client_cannot_claim_roles_in_the_forwarding_header() {
    let cluster = Cluster::new();
    let apid = cluster.start("127.0.0.1").await;
    let reader = channel(apid.local_addr(), &cluster.tls(&[Role::Reader])).await;
    fn claim<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert(apid::authz::ROLES_HEADER, "os:admin".parse().unwrap());
        request
    }
    let status = MachineServiceClient::new(reader.clone())
        .reset(claim(mapi::ResetRequest::default()))
        .await
        .unwrap_err();
    assert!(denied_by_table(&status), "{status:?}");
    let status = ResourceServiceClient::new(reader)
        .get(claim(rapi::GetRequest {
            r#type: "mc".into(),
            id: "active".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    apid.shutdown().await.unwrap();
}
