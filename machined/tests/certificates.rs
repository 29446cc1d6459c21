//! apid serves whatever the node's `ApiCertificates` resource holds, and picks up a new
//! one without a restart: here a config with another OS CA makes the secrets controller
//! issue certificates from it, and new connections are served with them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use basalt_api::machine::v1 as mapi;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_pki::Role;
use common::*;

#[tokio::test]
async fn new_certificates_are_served_without_a_restart() {
    let old = Cluster::new();
    let apid = old.start("127.0.0.1").await;
    let state = apid.state().clone();
    let mut client =
        MachineServiceClient::new(channel(apid.local_addr(), &old.tls(&[Role::Admin])).await);
    client.version(mapi::VersionRequest {}).await.unwrap();

    // The same node, now configured with another cluster's OS CA.
    let new = Cluster::new();
    machined::store_config(&state, &controlplane_yaml(&new))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut switched = MachineServiceClient::new(loop {
        match try_channel(apid.local_addr(), &new.tls(&[Role::Admin])).await {
            Ok(channel) => break channel,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never served from the new CA: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let version = switched.version(mapi::VersionRequest {}).await.unwrap();
    assert!(!version.into_inner().messages[0].maintenance);
    // A client of the old CA no longer gets through.
    let err = try_channel(apid.local_addr(), &old.tls(&[Role::Admin]))
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
    apid.shutdown().await.unwrap();
}
