//! An apid on loopback with real certificates from pkg/pki, and clients for it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apid::node::NodeHandles;
use apid::{Apid, ApidOptions, Limits};
use basalt_api::client::{self, ClientTls, Target};
use basalt_controller_runtime::Engine;
use basalt_controllers::{config, network, runtime, secrets};
use basalt_machine_config::Mode;
use basalt_pki::{issue_client_cert, CertAndKey, Role, SecretsBundle};
use basalt_resource::secrets::ApiCertificatesSpec;
use basalt_state::State;
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

    /// Options for an apid on `ip` over a fresh state, with the node's controllers that
    /// turn a config into the API's certificates and the machine's status running on it
    /// (until the test's runtime ends). Without a config: maintenance mode.
    pub fn options(&self, ip: &str) -> ApidOptions {
        let state = State::new();
        let sans = vec![ip.to_string(), "localhost".into()];
        start_controllers(&state, &sans);
        let registry = Arc::new(basalt_resource::meta::builtin_registry().unwrap());
        ApidOptions {
            listen: format!("{ip}:0").parse().unwrap(),
            node: node(&state, self.root.path()),
            state,
            registry,
            limits: Limits {
                forward_timeout: Duration::from_secs(2),
                ..Limits::default()
            },
            peer_port: basalt_api::DEFAULT_PORT,
            validation_mode: Mode::Cloud,
            sans,
        }
    }

    /// As [`Cluster::options`], with the generated control-plane config in effect and
    /// the API certificates the controllers issued from it.
    pub async fn configured_options(&self, ip: &str) -> ApidOptions {
        let options = self.options(ip);
        apid::store_config(&options.state, &controlplane_yaml(self))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while options
            .state
            .get_as::<ApiCertificatesSpec>(ApiCertificatesSpec::ID)
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no API certificates"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        options
    }

    /// A configured apid on `ip` (any 127.0.0.0/8 address).
    pub async fn start(&self, ip: &str) -> Apid {
        Apid::start(self.configured_options(ip).await)
            .await
            .unwrap()
    }
}

/// The controllers of the node that apid depends on, as the node registers them.
fn start_controllers(state: &State, sans: &[String]) {
    let mut engine = Engine::new(state.clone());
    engine.register(config::MachineConfigController).unwrap();
    engine.register(network::HostnameController).unwrap();
    engine
        .register(secrets::ApiCertificatesController::new(sans.to_vec(), HOUR))
        .unwrap();
    engine.register(runtime::MachineStatusController).unwrap();
    tokio::spawn(engine.run(Default::default()));
}

pub fn node(state: &State, root: &std::path::Path) -> NodeHandles {
    NodeHandles::local(state.clone(), Vec::new(), vec![root.to_path_buf()]).unwrap()
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

/// A request for `nodes`.
pub fn to_nodes<T>(message: T, nodes: &[String]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(basalt_api::NODES_HEADER, nodes.join(",").parse().unwrap());
    request
}

/// A generated control-plane config for this cluster's secrets.
pub fn controlplane_yaml(cluster: &Cluster) -> String {
    let options = basalt_machine_config::generate::GenerateOptions {
        cluster_name: "test".into(),
        endpoint: "https://127.0.0.1:6443".into(),
        install_disk: None,
        admin_validity: HOUR,
    };
    let generated = basalt_machine_config::generate::generate(&cluster.bundle, &options).unwrap();
    generated.controlplane.to_yaml().unwrap()
}

/// Everything the process logs from now on, for tests that check what the server says.
#[derive(Clone, Default)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> Logs {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
