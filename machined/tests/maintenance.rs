#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Maintenance mode: an unconfigured node serves a self-signed certificate and a few
//! calls without client certificates; applying a valid config switches it to the
//! cluster PKI in the same process, after which nothing is served without mTLS.

mod common;

use basalt_api::client::{parse_fingerprint, ClientTls};
use basalt_api::machine::v1 as mapi;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::resource::v1 as rapi;
use basalt_api::resource::v1::resource_service_client::ResourceServiceClient;
use basalt_pki::Role;
use common::*;
use std::time::Duration;

/// What an unconfigured node serves.
const MAINTENANCE_CALLS: &[&str] = &[
    "/basalt.machine.v1.MachineService/Version",
    "/basalt.machine.v1.MachineService/ApplyConfiguration",
    "/basalt.resource.v1.ResourceService/Get",
    "/basalt.resource.v1.ResourceService/List",
    "/basalt.resource.v1.ResourceService/Watch",
    "/basalt.resource.v1.ResourceService/Definitions",
];

fn apply(yaml: &str) -> mapi::ApplyConfigurationRequest {
    mapi::ApplyConfigurationRequest {
        data: yaml.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn unconfigured_node_accepts_one_insecure_apply_then_requires_mtls() {
    let cluster = Cluster::new();
    let apid = cluster.start_unconfigured("127.0.0.1").await;
    assert!(apid.in_maintenance());
    let fingerprint = parse_fingerprint(&apid.maintenance_fingerprint().unwrap()).unwrap();

    // A wrong pin fails the handshake; the right one works.
    let err = try_channel(
        apid.local_addr(),
        &ClientTls::Insecure { pin: Some([7; 32]) },
    )
    .await
    .unwrap_err();
    assert!(format!("{err:?}").contains("fingerprint"), "{err:?}");
    let insecure = ClientTls::Insecure {
        pin: Some(fingerprint),
    };
    let maintenance_channel = channel(apid.local_addr(), &insecure).await;
    let mut machine = MachineServiceClient::new(maintenance_channel.clone());
    let version = machine
        .version(mapi::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(version.messages[0].maintenance);

    // Only version, non-sensitive reads and apply are served.
    let status = machine
        .service_list(mapi::ServiceListRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("maintenance mode"), "{status:?}");
    for (path, streaming) in basalt_api::METHODS {
        if MAINTENANCE_CALLS.contains(path) {
            continue;
        }
        let status = raw_call(&maintenance_channel, path, *streaming, bytes::Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{path}");
        assert!(
            status.message().contains("maintenance mode"),
            "{path}: {status:?}"
        );
    }
    let mut resources = ResourceServiceClient::new(maintenance_channel.clone());
    // A stream opened now must not outlive maintenance mode (checked below).
    let mut watch = resources
        .watch(rapi::WatchRequest {
            r#type: "machinestatuses".into(),
            bootstrap: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("the bootstrap event");
    let stage = resources
        .get(rapi::GetRequest {
            r#type: "machinestatus".into(),
            id: "machine".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stage.messages[0]
        .resource
        .as_ref()
        .unwrap()
        .spec
        .contains("maintenance"));
    let status = resources
        .get(rapi::GetRequest {
            r#type: "mc".into(),
            id: "active".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // A malformed config is refused with its position, and nothing changes.
    let status = machine
        .apply_configuration(apply("kind: Nope\n"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(apid.in_maintenance());

    // Dry run: a diff, still in maintenance.
    let yaml = controlplane_yaml(&cluster);
    let mut dry = apply(&yaml);
    dry.dry_run = true;
    let result = machine.apply_configuration(dry).await.unwrap().into_inner();
    assert!(
        result.messages[0].diff.contains("+ MachineConfig"),
        "{}",
        result.messages[0].diff
    );
    assert!(
        !result.messages[0].diff.contains("PRIVATE KEY"),
        "secrets leak into the diff"
    );
    assert!(apid.in_maintenance());

    let result = machine
        .apply_configuration(apply(&yaml))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.messages[0].mode, mapi::ApplyMode::NoReboot as i32);
    assert!(!apid.in_maintenance());

    // From now on: no insecure connection, and the old one is refused too. A client
    // pinned to the maintenance certificate no longer finds it...
    let err = try_channel(apid.local_addr(), &insecure).await.unwrap_err();
    assert!(format!("{err:?}").contains("fingerprint"), "{err:?}");
    // ...and one without a certificate is refused by the server. (In TLS 1.3 the client
    // may finish its handshake before the server's alert arrives: then the call fails.)
    let unpinned = ClientTls::Insecure { pin: None };
    let refusal = match try_channel(apid.local_addr(), &unpinned).await {
        Err(e) => format!("{e:?}"),
        Ok(channel) => format!(
            "{:?}",
            MachineServiceClient::new(channel)
                .version(mapi::VersionRequest {})
                .await
                .unwrap_err()
        ),
    };
    assert!(refusal.contains("CertificateRequired"), "{refusal}");
    let status = machine.apply_configuration(apply(&yaml)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = watch.message().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "an anonymous Watch outlived maintenance mode"
    );

    // With the cluster's admin certificate, everything works, without a restart.
    let admin = channel(apid.local_addr(), &cluster.tls(&[Role::Admin])).await;
    let version = MachineServiceClient::new(admin.clone())
        .version(mapi::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!version.messages[0].maintenance);
    let active = ResourceServiceClient::new(admin)
        .get(rapi::GetRequest {
            r#type: "mc".into(),
            id: "active".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(active.messages[0]
        .resource
        .as_ref()
        .unwrap()
        .spec
        .contains("digest"));
    apid.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_worker_config_without_a_machine_token_leaves_the_node_in_maintenance() {
    let cluster = Cluster::new();
    let apid = cluster.start_unconfigured("127.0.0.1").await;
    let fingerprint = parse_fingerprint(&apid.maintenance_fingerprint().unwrap()).unwrap();
    let mut machine = MachineServiceClient::new(
        channel(
            apid.local_addr(),
            &ClientTls::Insecure {
                pin: Some(fingerprint),
            },
        )
        .await,
    );
    // Without the OS CA key the node asks trustd, which needs the machine token.
    let mut worker = common::generated(&cluster).worker;
    worker.machine.as_mut().unwrap().token = Default::default();
    let worker = worker.to_yaml().unwrap();
    let status = machine
        .apply_configuration(apply(&worker))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("machine token"), "{status:?}");
    assert!(apid.in_maintenance());
}
