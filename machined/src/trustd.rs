//! trustd: on a node that holds the OS CA key (a control-plane node), the signer of the
//! API certificates of nodes that do not (workers). Its own port (50001), TLS with the
//! node's API server certificate and no client certificate (the caller has none yet);
//! the caller proves it belongs to the cluster with the machine token, compared in
//! constant time. Only the keys, the node's name and its server names are taken from a
//! request: the usages, the `os:impersonator` role and the validity are trustd's.
//!
//! It reads the node's CA and certificates through the node's backend, as apid does: in
//! machined's process in tests, and on a node as its own process (the `trustd` role of the
//! multicall binary, under apid's uid, over machined's socket). It starts serving once
//! the node has the CA key and its own certificates, follows the certificates as they are
//! renewed, and never listens on a node without the key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apid::listener::Peer;
use apid::Backend;
use basalt_api::resource::v1 as rapi;
use basalt_api::trustd::v1::trust_service_server::{TrustService, TrustServiceServer};
use basalt_api::trustd::v1::{
    CertificateRequest, CertificateResponse, Member, RegisterRequest, RegisterResponse,
};
use basalt_pki::{sign_node_request, CertAndKey, NodeCertRequest};
use basalt_resource::ResourceSpec;
use basalt_resources::secrets::{ApiCertificatesSpec, OsRootSpec};
use rustls::ServerConfig;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::api::status::pki_status;

/// How long trustd waits before watching the node's CA and certificates again, when a
/// watch could not start or ended.
const REWATCH_DELAY: Duration = Duration::from_secs(1);
/// A member not heard from for this long is dropped (members register every second).
const MEMBER_TTL: Duration = Duration::from_secs(60);
/// The most members, and addresses per member, trustd keeps: the registry's memory is
/// bounded whatever token holders send.
const MAX_MEMBERS: usize = 1024;
const MAX_ADDRESSES: usize = 16;
/// The most former names one registration may drop.
const MAX_REPLACED: usize = 8;

/// The running trustd task of a node.
#[derive(Debug)]
pub(crate) struct Trustd {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Trustd {
    /// Waits (in the background) for the CA key and the node's certificates, read through
    /// `backend`, then serves on `listen`; certificates it signs live `validity`.
    pub fn start(backend: Backend, listen: SocketAddr, validity: Duration) -> Trustd {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(backend, listen, validity, stop.clone()));
        Trustd { stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The resource `S` with `id` on the node, if it has it.
async fn get<S: ResourceSpec + serde::de::DeserializeOwned>(
    backend: &Backend,
    id: &str,
) -> Option<S> {
    let request = rapi::GetRequest {
        namespace: String::new(),
        r#type: S::TYPE.to_string(),
        id: id.to_string(),
    };
    let answer = apid::node_resources(backend).get(request).await.ok()?;
    let resource = answer.into_inner().messages.into_iter().next()?.resource?;
    serde_yaml_ng::from_str(&resource.spec).ok()
}

/// Watches on the node's OS CA and API certificates, which tell trustd when to read them
/// again: it reads nothing while they stay the same (it read them five times a second
/// before, a tenth of an idle VM's CPU in trustd and as much in machined answering).
struct Changes {
    backend: Backend,
    watches: [Option<tonic::Streaming<rapi::WatchResponse>>; 2],
}

impl Changes {
    const WATCHED: [(&'static str, &'static str); 2] = [
        (OsRootSpec::TYPE, OsRootSpec::ID),
        (ApiCertificatesSpec::TYPE, ApiCertificatesSpec::ID),
    ];

    fn new(backend: Backend) -> Changes {
        Changes {
            backend,
            watches: [None, None],
        }
    }

    /// Returns when either may have changed: an event, or a watch (re)started (it may
    /// have missed one). A watch that fails or ends is started again after
    /// [`REWATCH_DELAY`].
    async fn next(&mut self) {
        let mut started = false;
        for (watch, (r#type, id)) in self.watches.iter_mut().zip(Self::WATCHED) {
            if watch.is_some() {
                continue;
            }
            let request = rapi::WatchRequest {
                r#type: r#type.to_string(),
                id: id.to_string(),
                ..Default::default()
            };
            match apid::node_resources(&self.backend).watch(request).await {
                Ok(events) => {
                    *watch = Some(events.into_inner());
                    started = true;
                }
                Err(status) => {
                    tracing::warn!(r#type, error = %status.message(), "trustd cannot watch the node")
                }
            }
        }
        if started {
            return;
        }
        let [Some(root), Some(certs)] = &mut self.watches else {
            tokio::time::sleep(REWATCH_DELAY).await;
            return;
        };
        // `message` keeps its state in the stream: the one not chosen loses nothing.
        let (which, event) = tokio::select! {
            event = root.message() => (0, event),
            event = certs.message() => (1, event),
        };
        if !matches!(event, Ok(Some(_))) {
            self.watches[which] = None;
            tokio::time::sleep(REWATCH_DELAY).await;
        }
    }
}

/// The node's OS CA (with its key) and its own certificates, when it can sign.
async fn current(backend: &Backend) -> Option<(OsRootSpec, ApiCertificatesSpec)> {
    let root = get::<OsRootSpec>(backend, OsRootSpec::ID).await?;
    if root.ca_key.is_empty() {
        return None;
    }
    let certs = get::<ApiCertificatesSpec>(backend, ApiCertificatesSpec::ID).await?;
    Some((root, certs))
}

fn server_config(certs: &ApiCertificatesSpec) -> Result<Arc<ServerConfig>, String> {
    use basalt_api::tls;
    let mut config = ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(
            tls::certs_from_pem("server certificate", &certs.server_crt)
                .map_err(|e| e.to_string())?,
            tls::key_from_pem(&certs.server_key).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

async fn run(backend: Backend, listen: SocketAddr, validity: Duration, stop: CancellationToken) {
    // Until this node can sign, it does not listen.
    let mut changes = Changes::new(backend.clone());
    let (root, mut certs) = loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            () = changes.next() => {}
        }
        if let Some(current) = current(&backend).await {
            break current;
        }
    };
    let config = match server_config(&certs) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "trustd cannot use the node's certificate");
            return;
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(%listen, error = %e, "trustd cannot listen");
            return;
        }
    };
    tracing::info!(%listen, "trustd serving");
    let (tls, tls_rx) = watch::channel(config);
    let (tx, rx) = mpsc::channel(64);
    // The connections never end with maintenance mode: that token is never cancelled.
    let accept = tokio::spawn(apid::listener::accept(
        listener,
        tls_rx,
        tx,
        stop.clone(),
        CancellationToken::new(),
    ));
    // The OS CA requests are signed with: read as it changes, not at every request (each
    // node registers every second).
    let (root_tx, root_rx) = watch::channel(Some(root));
    let service = TrustServiceServer::new(Signer {
        root: root_rx,
        validity,
        members: Mutex::default(),
    });
    let server = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(10))
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            stop.clone().cancelled_owned(),
        );
    let follow = async {
        loop {
            changes.next().await;
            let Some((root, renewed)) = current(&backend).await else {
                root_tx.send_replace(None);
                continue;
            };
            root_tx.send_replace(Some(root));
            if renewed.server_crt != certs.server_crt {
                match server_config(&renewed) {
                    Ok(config) => {
                        tls.send_replace(config);
                        certs = renewed;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "trustd cannot use the renewed certificate")
                    }
                }
            }
        }
    };
    tokio::select! {
        result = server => if let Err(e) = result {
            tracing::error!(error = %e, "trustd stopped");
        },
        () = follow => {}
    }
    accept.abort();
}

/// The command line of the trustd role.
#[derive(Debug, clap::Parser)]
#[command(
    name = "trustd",
    about = "Signs the certificates of nodes without the OS CA key (started by machined)"
)]
pub struct TrustdArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    /// machined's unix socket.
    #[arg(long)]
    pub socket: std::path::PathBuf,
    /// How long the certificates it signs live.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub validity: Duration,
}

/// The trustd role's main: trustd over machined's socket, until SIGTERM.
pub async fn run_trustd(args: TrustdArgs) {
    if let Err(e) = basalt_sys::Sys::set_no_new_privs(&basalt_sys::Linux) {
        tracing::warn!(error = %e, "cannot set no_new_privs");
    }
    let trustd = Trustd::start(
        apid::socket::backend(args.socket),
        args.listen,
        args.validity,
    );
    crate::edge::terminated().await;
    trustd.stop().await;
}

/// The arguments machined gives its trustd process.
pub(crate) fn trustd_args(
    listen: SocketAddr,
    socket: &std::path::Path,
    validity: Duration,
) -> Vec<String> {
    vec![
        "--listen".to_string(),
        listen.to_string(),
        "--socket".to_string(),
        socket.display().to_string(),
        "--validity".to_string(),
        humantime::format_duration(validity).to_string(),
    ]
}

struct Signer {
    /// The node's OS CA, while it holds the key.
    root: watch::Receiver<Option<OsRootSpec>>,
    validity: Duration,
    /// The members that registered, by name, with when they were last heard from.
    members: Mutex<BTreeMap<String, (Member, Instant)>>,
}

impl Signer {
    /// The caller's address, for logs.
    fn who<T>(request: &Request<T>) -> String {
        request
            .extensions()
            .get::<Arc<Peer>>()
            .map_or_else(|| "unknown".to_string(), |p| p.addr.to_string())
    }

    /// The OS CA of a node that can sign, once the caller's token is checked.
    async fn authorize<T>(&self, request: &Request<T>) -> Result<OsRootSpec, Status> {
        let Some(root) = self.root.borrow().clone() else {
            return Err(Status::failed_precondition(
                "this node holds no OS CA key: ask a control-plane node",
            ));
        };
        let token = request
            .metadata()
            .get(basalt_api::TOKEN_HEADER)
            .and_then(|t| t.to_str().ok())
            .unwrap_or_default();
        if !token_matches(token, &root.token) {
            tracing::warn!(peer = %Self::who(request), "trustd refused a call with a wrong or missing machine token");
            return Err(Status::permission_denied(
                "the machine token is wrong or missing",
            ));
        }
        Ok(root)
    }
}

/// A member as a node describes itself: a name, a known role, IP addresses.
fn check_member(member: &Member) -> Result<(), Status> {
    let invalid = |reason: String| Err(Status::invalid_argument(format!("member: {reason}")));
    if member.name.is_empty()
        || member.name.len() > 253
        || !member
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return invalid(format!("{:?} is not a node name", member.name));
    }
    if !matches!(member.role.as_str(), "controlplane" | "worker") {
        return invalid(format!(
            "role {:?} is not controlplane or worker",
            member.role
        ));
    }
    if member.addresses.is_empty() || member.addresses.len() > MAX_ADDRESSES {
        return invalid(format!(
            "1 to {MAX_ADDRESSES} addresses, not {}",
            member.addresses.len()
        ));
    }
    if let Some(bad) = member
        .addresses
        .iter()
        .find(|a| a.parse::<IpAddr>().is_err())
    {
        return invalid(format!("{bad:?} is not an IP address"));
    }
    Ok(())
}

/// Whether the token a caller gave is the machine token: compared through their digests,
/// in constant time, so that neither the bytes nor the length of the token leak.
fn token_matches(given: &str, expected: &str) -> bool {
    !expected.is_empty()
        && bool::from(Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(expected.as_bytes())))
}

#[tonic::async_trait]
impl TrustService for Signer {
    async fn certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let root = self.authorize(&request).await?;
        let who = Self::who(&request);
        let request = request.into_inner();
        let ca = CertAndKey {
            crt: root.ca.clone(),
            key: root.ca_key.clone(),
        };
        let signed = sign_node_request(
            &ca,
            &NodeCertRequest {
                server_csr: request.server_csr,
                peer_csr: request.peer_csr,
            },
            self.validity,
        )
        .map_err(pki_status)?;
        tracing::info!(peer = %who, node = %signed.name, sans = ?signed.sans, not_after = %signed.not_after, "trustd signed a node's API certificates");
        Ok(Response::new(CertificateResponse {
            ca: root.ca,
            server_crt: signed.server_crt,
            peer_crt: signed.peer_crt,
        }))
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.authorize(&request).await?;
        let who = Self::who(&request);
        let request = request.into_inner();
        let member = request
            .member
            .ok_or_else(|| Status::invalid_argument("member: missing"))?;
        check_member(&member)?;
        if request.replaces.len() > MAX_REPLACED {
            return Err(Status::invalid_argument(format!(
                "replaces: at most {MAX_REPLACED} former names, not {}",
                request.replaces.len()
            )));
        }
        let now = Instant::now();
        let mut members = self
            .members
            .lock()
            .map_err(|_| Status::internal("the member registry is poisoned"))?;
        members.retain(|_, (_, seen)| now.duration_since(*seen) < MEMBER_TTL);
        // A renamed node: its former names go now, not a minute later.
        for name in request.replaces.iter().filter(|n| **n != member.name) {
            if members.remove(name).is_some() {
                tracing::info!(peer = %who, name = %name, now = %member.name, "member renamed");
            }
        }
        if !members.contains_key(&member.name) && members.len() >= MAX_MEMBERS {
            return Err(Status::resource_exhausted(format!(
                "the cluster has {MAX_MEMBERS} members already"
            )));
        }
        let changed = members
            .get(&member.name)
            .is_none_or(|(known, _)| *known != member);
        if changed {
            tracing::info!(peer = %who, name = %member.name, role = %member.role, addresses = ?member.addresses, "member registered");
        }
        members.insert(member.name.clone(), (member, now));
        Ok(Response::new(RegisterResponse {
            members: members.values().map(|(m, _)| m.clone()).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_machine_token_matches() {
        assert!(token_matches("abc.def", "abc.def"));
        assert!(!token_matches("abc.deg", "abc.def"));
        assert!(!token_matches("", "abc.def"));
        assert!(!token_matches("abc.def.", "abc.def"));
        // A node without a token accepts nobody.
        assert!(!token_matches("", ""));
    }

    #[test]
    fn a_member_is_a_name_a_role_and_ip_addresses() {
        let member = |name: &str, role: &str, addresses: &[&str]| Member {
            name: name.into(),
            role: role.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        };
        assert!(check_member(&member("w-1", "worker", &["10.5.0.3"])).is_ok());
        for (bad, why) in [
            (member("", "worker", &["10.5.0.3"]), "node name"),
            (member("a b", "worker", &["10.5.0.3"]), "node name"),
            (member("w-1", "admin", &["10.5.0.3"]), "role"),
            (member("w-1", "worker", &[]), "addresses"),
            (member("w-1", "worker", &["example.com"]), "IP address"),
            (member("w-1", "worker", &["10.0.0.1"; 17]), "addresses"),
        ] {
            let status = check_member(&bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(why), "{status:?}");
        }
    }
}
