//! Nodes on loopback (machined's, in-process) with a real cluster PKI from pkg/pki, and
//! clients for their API.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apid::Limits;
use basalt_api::client::{self, ClientTls, Target};
use basalt_controllers::Sources;
use basalt_machine_config::Mode;
use basalt_pki::{issue_client_cert, CertAndKey, Role, SecretsBundle};
use machined::acquire::ConfigSources;
use machined::{Node, NodeOptions};
use tonic::transport::Channel;

pub const HOUR: Duration = Duration::from_secs(3600);

pub struct Cluster {
    pub bundle: SecretsBundle,
    pub root: tempfile::TempDir,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster {
            bundle: SecretsBundle::generate().unwrap(),
            root: tempfile::tempdir().unwrap(),
        }
    }

    pub fn ca(&self) -> &CertAndKey {
        &self.bundle.certs.os
    }

    pub fn client_cert(&self, roles: &[Role]) -> CertAndKey {
        let mut name = roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join("+");
        if name.is_empty() {
            name = "nobody".into();
        }
        issue_client_cert(self.ca(), &name, roles, HOUR).unwrap()
    }

    pub fn tls(&self, roles: &[Role]) -> ClientTls {
        let cert = self.client_cert(roles);
        ClientTls::Mutual {
            ca: self.ca().crt.clone(),
            crt: cert.crt,
            key: cert.key,
        }
    }

    /// How another node of the cluster authenticates when it forwards a call.
    pub fn peer_tls(&self, name: &str) -> ClientTls {
        let cert = issue_client_cert(self.ca(), name, &[Role::Impersonator], HOUR).unwrap();
        ClientTls::Mutual {
            ca: self.ca().crt.clone(),
            crt: cert.crt,
            key: cert.key,
        }
    }

    /// Options for a node on `ip` (its API on a free port, KubePrism on `ip` too) that
    /// may see files under this cluster's directory. Without a config: maintenance mode.
    pub fn options(&self, ip: &str) -> NodeOptions {
        let address: std::net::IpAddr = ip.parse().unwrap();
        NodeOptions {
            listen: (address, 0).into(),
            validation_mode: Mode::Cloud,
            file_roots: vec![self.root.path().to_path_buf()],
            limits: Limits {
                forward_timeout: Duration::from_secs(2),
                ..Limits::default()
            },
            sources: Sources {
                kubeprism_listen: address,
                ..Sources::default()
            },
            sans: vec!["localhost".into()],
            ..NodeOptions::default()
        }
    }

    /// As [`Cluster::options`], with the generated control-plane config in effect.
    pub fn configured_options(&self, ip: &str) -> NodeOptions {
        NodeOptions {
            config: ConfigSources {
                embedded: Some(controlplane_yaml(self)),
                ..ConfigSources::default()
            },
            ..self.options(ip)
        }
    }

    /// A configured node on `ip` (any 127.0.0.0/8 address).
    pub async fn start(&self, ip: &str) -> Node {
        Node::start(self.configured_options(ip)).await.unwrap()
    }

    /// A node on `ip` in maintenance mode.
    pub async fn start_unconfigured(&self, ip: &str) -> Node {
        Node::start(self.options(ip)).await.unwrap()
    }
}

pub fn target(addr: SocketAddr) -> Target {
    Target::parse(&addr.to_string(), 0).unwrap()
}

pub async fn channel(addr: SocketAddr, tls: &ClientTls) -> Channel {
    client::connect(&target(addr), tls, Duration::from_secs(5))
        .await
        .unwrap()
}

pub async fn try_channel(
    addr: SocketAddr,
    tls: &ClientTls,
) -> Result<Channel, client::ClientError> {
    client::connect(&target(addr), tls, Duration::from_secs(5)).await
}

/// Calls `path` with raw message bytes; for a streaming method, only up to the response
/// headers (the stream is dropped).
pub async fn raw_call(
    channel: &Channel,
    path: &'static str,
    streaming: bool,
    message: bytes::Bytes,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(path);
    let request = tonic::Request::new(message);
    if streaming {
        grpc.server_streaming(request, path, apid::RawCodec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(request, path, apid::RawCodec).await.map(|_| ())
    }
}

/// Denied by the authorization table (not by the handler).
pub fn denied_by_table(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::PermissionDenied
        && status.message().contains("needs one of the roles")
}

impl Cluster {
    /// Lets `node` forward calls to `targets` (`host:port` each, other nodes on
    /// loopback: no member of a cluster, and on ports of their own), as a test's
    /// `ForwardTargets` resource; returns once its API forwards to them.
    pub async fn forward_from(&self, node: &Node, targets: &[String]) {
        use basalt_resource::Resource;
        use basalt_resources::cluster::ForwardTargetSpec;
        let spec = ForwardTargetSpec {
            targets: targets.iter().map(|t| (t.clone(), Vec::new())).collect(),
        };
        node.state()
            .put(Resource::new("test", spec).into_any(), "test")
            .await
            .unwrap();
        let admin = channel(node.local_addr(), &self.tls(&[Role::Admin])).await;
        let mut machine =
            basalt_api::machine::v1::machine_service_client::MachineServiceClient::new(admin);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let request = to_nodes(basalt_api::machine::v1::VersionRequest {}, targets);
            match machine.version(request).await {
                Err(s) if s.code() == tonic::Code::PermissionDenied => {
                    assert!(std::time::Instant::now() < deadline, "{s:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => return,
            }
        }
    }
}

/// A request for `nodes`.
pub fn to_nodes<T>(message: T, nodes: &[String]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(basalt_api::NODES_HEADER, nodes.join(",").parse().unwrap());
    request
}

/// A service's whole log, through the Logs RPC.
pub async fn service_logs(
    machine: &mut basalt_api::machine::v1::machine_service_client::MachineServiceClient<Channel>,
    id: &str,
) -> String {
    let mut stream = machine
        .logs(basalt_api::machine::v1::LogsRequest {
            id: id.into(),
            follow: false,
            tail_lines: -1,
        })
        .await
        .unwrap()
        .into_inner();
    let mut text = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        text.extend(chunk.bytes);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// A generated control-plane config for this cluster's secrets, with KubePrism off (API
/// tests have no use for it, and nodes on one address would compete for its port).
/// The configs generated from the cluster's bundle, the endpoint on 127.0.0.1.
pub fn generated(cluster: &Cluster) -> basalt_machine_config::generate::Generated {
    let options = basalt_machine_config::generate::GenerateOptions {
        cluster_name: "test".into(),
        endpoint: "https://127.0.0.1:6443".into(),
        install_disk: None,
        admin_validity: HOUR,
    };
    basalt_machine_config::generate::generate(&cluster.bundle, &options).unwrap()
}

pub fn controlplane_yaml(cluster: &Cluster) -> String {
    let mut config = generated(cluster).controlplane;
    config.kubeprism = Some(basalt_machine_config::KubePrismConfig {
        enabled: false,
        ..Default::default()
    });
    config.to_yaml().unwrap()
}

/// Everything the process logs from now on, for tests that check what the server says.
/// tracing takes one global subscriber per process: the first capture installs it, and
/// each capture reads from where the log was when it began. Under nextest every test is
/// its own process; under `cargo test` tests share one, so a test's text may also hold
/// lines of the tests running beside it (tests only look for lines they expect).
pub struct Logs {
    buffer: SharedBuffer,
    start: usize,
}

#[derive(Clone, Default)]
struct SharedBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> Logs {
        static BUFFER: std::sync::OnceLock<SharedBuffer> = std::sync::OnceLock::new();
        let buffer = BUFFER
            .get_or_init(|| {
                let buffer = SharedBuffer::default();
                let writer = buffer.clone();
                tracing_subscriber::fmt()
                    .with_env_filter("info")
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .init();
                buffer
            })
            .clone();
        let start = buffer.0.lock().unwrap().len();
        Logs { buffer, start }
    }

    pub fn text(&self) -> String {
        let log = self.buffer.0.lock().unwrap();
        String::from_utf8_lossy(&log[self.start..]).into_owned()
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
