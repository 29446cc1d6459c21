//! The error kinds the API can reach, each with its gRPC code, through a real node: what
//! the one map in `machined::api::status` promises, seen by a client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use basalt_api::machine::v1 as mapi;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::resource::v1 as rapi;
use basalt_api::resource::v1::resource_service_client::ResourceServiceClient;
use basalt_machine_config::Config;
use basalt_pki::Role;
use basalt_resource::Resource;
use basalt_resources::config::MachineConfigSpec;
use common::*;
use tonic::Code;

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => panic!("the call succeeded"),
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn each_kind_of_error_comes_back_with_its_code() {
    let cluster = Cluster::new();
    let node = cluster.start("127.0.0.1").await;
    let admin = channel(node.local_addr(), &cluster.tls(&[Role::Admin])).await;
    let mut machine = MachineServiceClient::new(admin.clone());
    let mut resources = ResourceServiceClient::new(admin);

    let get = |r#type: &str, id: &str| rapi::GetRequest {
        namespace: String::new(),
        r#type: r#type.into(),
        id: id.into(),
    };
    assert_eq!(
        code(resources.get(get("nosuchtype", "x")).await),
        Code::NotFound
    );
    assert_eq!(
        code(resources.get(get("hostname", "nope")).await),
        Code::NotFound
    );
    let list = rapi::ListRequest {
        r#type: "services".into(),
        label_selector: "a in (".into(),
        ..Default::default()
    };
    assert_eq!(code(resources.list(list).await), Code::InvalidArgument);

    let service = mapi::ServiceRequest { id: "nope".into() };
    assert_eq!(code(machine.service_start(service).await), Code::NotFound);
    let roles = mapi::GenerateClientConfigurationRequest {
        roles: vec!["os:root".into()],
        crt_ttl: None,
    };
    let status = machine
        .generate_client_configuration(roles)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("os:root"), "{status:?}");

    // Configs: malformed, and a change that the mode cannot apply.
    let apply = |yaml: &str, mode: mapi::ApplyMode| mapi::ApplyConfigurationRequest {
        data: yaml.as_bytes().to_vec(),
        mode: mode as i32,
        ..Default::default()
    };
    let malformed = apply("kind: [", mapi::ApplyMode::Auto);
    assert_eq!(
        code(machine.apply_configuration(malformed).await),
        Code::InvalidArgument
    );
    let active = node
        .state()
        .get_as::<MachineConfigSpec>(MachineConfigSpec::ACTIVE)
        .await
        .unwrap();
    let mut config = Config::parse(&active.spec.yaml).unwrap();
    config
        .machine
        .as_mut()
        .unwrap()
        .kernel_args
        .push("quiet".into());
    let reboot_needed = apply(&config.to_yaml().unwrap(), mapi::ApplyMode::NoReboot);
    let status = machine
        .apply_configuration(reboot_needed)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("kernelArgs"), "{status:?}");

    // A stored config that no longer parses: data loss, said so, nothing overwritten.
    let corrupt = MachineConfigSpec {
        yaml: "kind: [".into(),
        digest: "x".into(),
    };
    node.state()
        .put(
            Resource::new(MachineConfigSpec::ACTIVE, corrupt).into_any(),
            "apid",
        )
        .await
        .unwrap();
    let status = machine
        .apply_configuration(apply(&active.spec.yaml, mapi::ApplyMode::Auto))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
    assert!(status.message().contains("does not parse"), "{status:?}");

    // A second power request while the first is pending.
    machine
        .reboot(mapi::RebootRequest::default())
        .await
        .unwrap();
    assert_eq!(
        code(machine.shutdown(mapi::ShutdownRequest::default()).await),
        Code::FailedPrecondition
    );
    node.shutdown().await.unwrap();
}
