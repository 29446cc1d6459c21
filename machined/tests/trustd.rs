//! trustd: a control-plane node signs the API certificates of a worker (which holds no
//! CA key) that presents the machine token; the worker serves them, renews them before
//! they expire; both register as members, and forwarding reaches members only; trustd
//! refuses a wrong or missing token and a bad request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use basalt_api::client::ClientTls;
use basalt_api::machine::v1::machine_service_client::MachineServiceClient;
use basalt_api::machine::v1::VersionRequest;
use basalt_api::trustd::v1::trust_service_client::TrustServiceClient;
use basalt_api::trustd::v1::CertificateRequest;
use basalt_controllers::Sources;
use basalt_pki::{request_node_certs, Role};
use basalt_resource::{Resource, ResourceKey, ResourceSpec as _};
use basalt_resources::cluster::{MachineRole, MemberSpec};
use basalt_resources::secrets::ApiCertificatesSpec;
use common::{channel, Cluster, HOUR};
use machined::acquire::ConfigSources;
use machined::{Node, NodeOptions};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The generated worker config (no CA key), its control-plane endpoint on 127.0.0.1.
fn worker_yaml(cluster: &Cluster, token: Option<&str>) -> String {
    let mut config = common::generated(cluster).worker;
    let machine = config.machine.as_mut().unwrap();
    machine.hostname = Some("worker-1".into());
    if let Some(token) = token {
        machine.token = basalt_machine_config::Secret::new(token.to_string());
    }
    config.kubeprism = Some(basalt_machine_config::KubePrismConfig {
        enabled: false,
        ..Default::default()
    });
    config.to_yaml().unwrap()
}

/// A control-plane node on 127.0.0.1 with trustd on `port`, signing for `validity`.
async fn control_plane(cluster: &Cluster, port: u16, validity: Duration) -> Node {
    let mut options = cluster.configured_options("127.0.0.1");
    // A member is known by its hostname.
    let mut config =
        basalt_machine_config::Config::parse(options.config.embedded.as_deref().unwrap()).unwrap();
    config.machine.as_mut().unwrap().hostname = Some("cp-1".into());
    options.config.embedded = Some(config.to_yaml().unwrap());
    options.trustd_listen = Some(([127, 0, 0, 1], port).into());
    options.sources.trustd_port = port;
    options.sources.api_cert_validity = validity;
    Node::start(options).await.unwrap()
}

fn worker_options(cluster: &Cluster, port: u16, token: Option<&str>) -> NodeOptions {
    let options = cluster.options("127.0.0.2");
    NodeOptions {
        config: ConfigSources {
            embedded: Some(worker_yaml(cluster, token)),
            ..ConfigSources::default()
        },
        sources: Sources {
            trustd_port: port,
            ..options.sources.clone()
        },
        ..options
    }
}

/// The node's members: name → (role, addresses).
async fn members(node: &Node) -> BTreeMap<String, (MachineRole, Vec<String>)> {
    let kind = basalt_resource::Kind::new(basalt_resource::namespaces::CLUSTER, MemberSpec::TYPE);
    node.state()
        .list(&kind, &Default::default())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let r = Resource::<MemberSpec>::try_from(r.as_ref()).unwrap();
            (r.metadata.id.clone(), (r.spec.role, r.spec.addresses))
        })
        .collect()
}

async fn certificates(node: &Node) -> ApiCertificatesSpec {
    let key = ResourceKey::of::<ApiCertificatesSpec>(ApiCertificatesSpec::ID);
    let r = node.state().get(&key).await.unwrap();
    Resource::<ApiCertificatesSpec>::try_from(r.as_ref())
        .unwrap()
        .spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gets_its_certificates_from_trustd_serves_them_and_renews_them() {
    let cluster = Cluster::new();
    let port = free_port();
    // Short-lived, so that the worker renews within the test.
    let cp = control_plane(&cluster, port, Duration::from_secs(6)).await;
    // On the API's port: a member is a forward target on that port only. (No other
    // test listens on 127.0.0.2:50000.)
    let mut options = worker_options(&cluster, port, None);
    options.listen.set_port(basalt_api::DEFAULT_PORT);
    let worker = Node::start(options).await.unwrap();

    // Issued once the hostname is known (a first set may name the node `basalt`).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        let now = certificates(&worker).await;
        if now.sans.iter().any(|s| s == "worker-1") {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", now.sans);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first.issuer, format!("trustd 127.0.0.1:{port}"));
    let info = basalt_pki::verify(
        &first.server_crt,
        &cluster.ca().crt,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(info.subject_cn, "worker-1");
    assert!(
        info.ip_sans.contains(&"127.0.0.2".parse().unwrap()),
        "{info:?}"
    );
    let peer = basalt_pki::verify(
        &first.peer_crt,
        &cluster.ca().crt,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(peer.organizations, [Role::Impersonator.as_str()]);

    // The worker's API answers over mTLS with them.
    let mut machine =
        MachineServiceClient::new(channel(worker.local_addr(), &cluster.tls(&[Role::Admin])).await);
    let version = machine
        .version(VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!version.messages[0].maintenance);

    // Both nodes registered with trustd and list each other as members.
    for node in [&cp, &worker] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let members = members(node).await;
            if members.len() == 2 {
                assert_eq!(
                    members.get("worker-1"),
                    Some(&(MachineRole::Worker, vec!["127.0.0.2".to_string()]))
                );
                assert!(members.values().any(|(role, addresses)| {
                    *role == MachineRole::ControlPlane && addresses == &["127.0.0.1".to_string()]
                }));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{members:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Through the control plane: the worker (a member) is reached, a non-member is not.
    let mut cp_api =
        MachineServiceClient::new(channel(cp.local_addr(), &cluster.tls(&[Role::Admin])).await);
    // (Members become forward targets a moment after they are listed.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let answer = loop {
        let request = common::to_nodes(VersionRequest {}, &[worker.local_addr().to_string()]);
        match cp_api.version(request).await {
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                assert!(std::time::Instant::now() < deadline, "{s:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answer => break answer.unwrap().into_inner(),
        }
    };
    assert_eq!(answer.messages.len(), 1);
    assert!(
        answer.messages[0]
            .metadata
            .as_ref()
            .unwrap()
            .error
            .is_empty(),
        "{answer:?}"
    );
    let refused = cp_api
        .version(common::to_nodes(
            VersionRequest {},
            &["127.0.0.9:50000".to_string()],
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("forwardtargets"), "{refused:?}");

    // Renewed at half their life, from trustd again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = certificates(&worker).await;
        if now.server_crt != first.server_crt {
            assert_eq!(now.issuer, first.issuer);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not renewed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // trustd serves the control plane's renewed certificate, without a restart.
    let initial = certificates(&cp).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = certificates(&cp).await;
        if now.server_crt != initial.server_crt
            && served_certificate(port).await == pem_body(&now.server_crt)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "trustd does not serve the renewed certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker.shutdown().await.unwrap();
    cp.shutdown().await.unwrap();
}

/// The base64 of a PEM certificate, without its lines' breaks.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|line| !line.starts_with("-----"))
        .collect()
}

/// The certificate trustd on 127.0.0.1:`port` serves, as a TLS client sees it.
async fn served_certificate(port: u16) -> String {
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl is missing: run hack/setup.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("no certificate");
    let end = text
        .find("-----END CERTIFICATE-----")
        .expect("no certificate");
    pem_body(&text[begin..end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trustd_signs_nothing_for_a_wrong_or_missing_token_or_a_bad_request() {
    let cluster = Cluster::new();
    let port = free_port();
    let cp = control_plane(&cluster, port, HOUR).await;
    let tls = ClientTls::ServerOnly {
        ca: cluster.ca().crt.clone(),
    };
    let addr = ([127, 0, 0, 1], port).into();
    // trustd starts serving a moment after the node's certificates exist.
    let mut trustd = loop {
        match common::try_channel(addr, &tls).await {
            Ok(channel) => break TrustServiceClient::new(channel),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let (request, _keys) = request_node_certs("intruder", &["127.0.0.9".into()]).unwrap();
    let call = |token: Option<&str>, request: CertificateRequest| {
        let mut call = tonic::Request::new(request);
        if let Some(token) = token {
            call.metadata_mut()
                .insert(basalt_api::TOKEN_HEADER, token.parse().unwrap());
        }
        call
    };
    let wanted = CertificateRequest {
        server_csr: request.server_csr.clone(),
        peer_csr: request.peer_csr.clone(),
    };
    let token = cluster.bundle.trustdinfo.token.0.clone();
    // One character off.
    let mut wrong = token.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'x' { 'y' } else { 'x' });
    for bad in [None, Some(""), Some(wrong.as_str())] {
        let status = trustd
            .certificate(call(bad, wanted.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{bad:?}: {status:?}"
        );
    }
    let garbage = CertificateRequest {
        server_csr:
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
        peer_csr: request.peer_csr.clone(),
    };
    let status = trustd
        .certificate(call(Some(&token), garbage))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("server request"), "{status:?}");

    // With the token: signed for the names asked, as a server, and nothing more.
    let answer = trustd
        .certificate(call(Some(&token), wanted))
        .await
        .unwrap()
        .into_inner();
    let info = basalt_pki::verify(
        &answer.server_crt,
        &cluster.ca().crt,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(info.subject_cn, "intruder");
    assert!(info.organizations.is_empty(), "{info:?}");
    cp.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_wrong_token_gets_no_certificates() {
    let cluster = Cluster::new();
    let port = free_port();
    let cp = control_plane(&cluster, port, HOUR).await;
    let mut options = worker_options(&cluster, port, Some("aaaaaa.aaaaaaaaaaaaaaaa"));
    // It would wait 30 s for certificates that never come: the node is built by hand
    // here only to see that none arrive.
    options.config = ConfigSources::default();
    let worker = Node::start(options).await.unwrap();
    machined::store_config(
        worker.state(),
        &worker_yaml(&cluster, Some("aaaaaa.aaaaaaaaaaaaaaaa")),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let key = ResourceKey::of::<ApiCertificatesSpec>(ApiCertificatesSpec::ID);
    assert!(
        worker.state().get(&key).await.is_err(),
        "a wrong token got certificates"
    );
    worker.shutdown().await.unwrap();
    cp.shutdown().await.unwrap();
}
