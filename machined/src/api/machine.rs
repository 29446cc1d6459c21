//! The machine service: configuration, version, and everything the node implements
//! behind the traits in [`crate::parts`].

use std::sync::Arc;
use std::time::Duration;

use basalt_api::machine::v1 as api;
use basalt_api::machine::v1::machine_service_server::MachineService;
use basalt_controller_runtime::{Dependency, Edge, InputKind, OutputKind};
use basalt_machine_config::client::{ClientConfig, Context};
use basalt_machine_config::Secret;
use basalt_pki::{issue_client_cert, CertAndKey, Role};
use basalt_resource::ResourceKey;
use basalt_resources::secrets::OsRootSpec;
use basalt_resources::time::TimeStatusSpec;
use basalt_state::StateError;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::status::{config_status, pki_status, resource_status};
use super::{apply, caller, here, state_status, Shared};
use crate::parts::{ByteStream, ResetOptions};

const DEFAULT_CLIENT_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_CLIENT_CERT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub(crate) struct MachineApi {
    shared: Arc<Shared>,
}

impl MachineApi {
    pub fn new(shared: Arc<Shared>) -> Self {
        MachineApi { shared }
    }

    /// Byte chunks as `Data` messages.
    fn data(&self, bytes: ByteStream) -> BoxStream<'static, Result<api::Data, Status>> {
        bytes
            .map(move |chunk| {
                chunk
                    .map(|bytes| api::Data {
                        metadata: here(),
                        bytes: bytes.to_vec(),
                    })
                    .map_err(Status::from)
            })
            .boxed()
    }
}

/// `tail_lines` of the API: negative means everything.
fn tail(lines: i32) -> Option<usize> {
    usize::try_from(lines).ok()
}

fn power(action: &str) -> Response<api::PowerResponse> {
    Response::new(api::PowerResponse {
        messages: vec![api::PowerResult {
            metadata: here(),
            action: action.to_string(),
        }],
    })
}

fn dependency(d: &Dependency) -> api::ControllerDependency {
    let kind = match d.edge {
        Edge::Input(InputKind::Weak) => api::DependencyKind::InputWeak,
        Edge::Input(InputKind::Strong) => api::DependencyKind::InputStrong,
        Edge::Input(InputKind::DestroyReady) => api::DependencyKind::InputDestroyReady,
        Edge::Output(OutputKind::Exclusive) => api::DependencyKind::OutputExclusive,
        Edge::Output(OutputKind::Shared) => api::DependencyKind::OutputShared,
    };
    api::ControllerDependency {
        controller: d.controller.to_string(),
        kind: kind as i32,
        namespace: d.kind.namespace.clone(),
        r#type: d.kind.type_name.clone(),
        id: d.id.clone().unwrap_or_default(),
    }
}

#[derive(Debug, Clone, Copy)]
enum ServiceAction {
    Start,
    Stop,
    Restart,
}

impl MachineApi {
    async fn service_action(
        &self,
        request: Request<api::ServiceRequest>,
        action: ServiceAction,
    ) -> Result<Response<api::ServiceResponse>, Status> {
        let id = request.into_inner().id;
        let services = &self.shared.node.services;
        let answer = match action {
            ServiceAction::Start => services.start(&id).await?,
            ServiceAction::Stop => services.stop(&id).await?,
            ServiceAction::Restart => services.restart(&id).await?,
        };
        Ok(Response::new(api::ServiceResponse {
            messages: vec![api::ServiceResult {
                metadata: here(),
                response: answer,
            }],
        }))
    }
}

#[tonic::async_trait]
impl MachineService for MachineApi {
    async fn apply_configuration(
        &self,
        request: Request<api::ApplyConfigurationRequest>,
    ) -> Result<Response<api::ApplyConfigurationResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let dry_run = request.dry_run;
        let result = apply::apply(&self.shared, &caller, request).await?;
        let mut response = Response::new(api::ApplyConfigurationResponse {
            messages: vec![result],
        });
        if !dry_run {
            response.metadata_mut().insert(
                apid::CONFIG_APPLIED_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        Ok(response)
    }

    async fn time(
        &self,
        _request: Request<api::TimeRequest>,
    ) -> Result<Response<api::TimeResponse>, Status> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let key = ResourceKey::of::<TimeStatusSpec>(TimeStatusSpec::ID);
        // Before the time controller's first run there is no status: not synced yet.
        let status = match self.shared.state.get(&key).await {
            Ok(r) => r
                .spec_as::<TimeStatusSpec>()
                .map_err(resource_status)?
                .clone(),
            Err(StateError::NotFound(_)) => TimeStatusSpec {
                synced: false,
                server: String::new(),
                offset_micros: 0,
                sets_clock: false,
                last_step: String::new(),
                error: "no time status yet".to_string(),
            },
            Err(e) => return Err(state_status(e)),
        };
        Ok(Response::new(api::TimeResponse {
            messages: vec![api::TimeResult {
                metadata: here(),
                time: Some(basalt_resource::proto::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                }),
                synced: status.synced,
                server: status.server,
                error: status.error,
                sets_clock: status.sets_clock,
            }],
        }))
    }

    async fn version(
        &self,
        _request: Request<api::VersionRequest>,
    ) -> Result<Response<api::VersionResponse>, Status> {
        Ok(Response::new(api::VersionResponse {
            messages: vec![api::VersionResult {
                metadata: here(),
                tag: env!("CARGO_PKG_VERSION").to_string(),
                sha: option_env!("BASALT_GIT_SHA")
                    .unwrap_or("unknown")
                    .to_string(),
                rust_version: option_env!("BASALT_RUSTC_VERSION")
                    .unwrap_or("unknown")
                    .to_string(),
                os: std::env::consts::OS.to_string(),
                arch: std::env::consts::ARCH.to_string(),
                maintenance: self.shared.in_maintenance().await?,
            }],
        }))
    }

    async fn service_list(
        &self,
        _request: Request<api::ServiceListRequest>,
    ) -> Result<Response<api::ServiceListResponse>, Status> {
        let services = self.shared.node.services.list().await?;
        Ok(Response::new(api::ServiceListResponse {
            messages: vec![api::ServiceListResult {
                metadata: here(),
                services,
            }],
        }))
    }

    async fn service_start(
        &self,
        request: Request<api::ServiceRequest>,
    ) -> Result<Response<api::ServiceResponse>, Status> {
        self.service_action(request, ServiceAction::Start).await
    }

    async fn service_stop(
        &self,
        request: Request<api::ServiceRequest>,
    ) -> Result<Response<api::ServiceResponse>, Status> {
        self.service_action(request, ServiceAction::Stop).await
    }

    async fn service_restart(
        &self,
        request: Request<api::ServiceRequest>,
    ) -> Result<Response<api::ServiceResponse>, Status> {
        self.service_action(request, ServiceAction::Restart).await
    }

    type LogsStream = BoxStream<'static, Result<api::Data, Status>>;

    async fn logs(
        &self,
        request: Request<api::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        let bytes = self
            .shared
            .node
            .services
            .logs(&r.id, r.follow, tail(r.tail_lines))
            .await?;
        Ok(Response::new(self.data(bytes)))
    }

    type DmesgStream = BoxStream<'static, Result<api::Data, Status>>;

    async fn dmesg(
        &self,
        request: Request<api::DmesgRequest>,
    ) -> Result<Response<Self::DmesgStream>, Status> {
        let r = request.into_inner();
        let bytes = self
            .shared
            .node
            .system
            .dmesg(r.follow, tail(r.tail_lines))
            .await?;
        Ok(Response::new(self.data(bytes)))
    }

    async fn reboot(
        &self,
        request: Request<api::RebootRequest>,
    ) -> Result<Response<api::PowerResponse>, Status> {
        let mode = api::RebootMode::try_from(request.into_inner().mode)
            .map_err(|_| Status::invalid_argument("unknown reboot mode"))?;
        self.shared.node.power.reboot(mode).await?;
        self.shared.events.publish("power", "reboot requested", &[]);
        Ok(power("reboot"))
    }

    async fn shutdown(
        &self,
        request: Request<api::ShutdownRequest>,
    ) -> Result<Response<api::PowerResponse>, Status> {
        self.shared
            .node
            .power
            .shutdown(request.into_inner().force)
            .await?;
        self.shared
            .events
            .publish("power", "shutdown requested", &[]);
        Ok(power("shutdown"))
    }

    async fn reset(
        &self,
        request: Request<api::ResetRequest>,
    ) -> Result<Response<api::PowerResponse>, Status> {
        let r = request.into_inner();
        let options = ResetOptions {
            graceful: r.graceful,
            reboot: r.reboot,
            wipe: r.wipe,
        };
        self.shared.node.power.reset(options).await?;
        self.shared.events.publish("power", "reset requested", &[]);
        Ok(power("reset"))
    }

    async fn processes(
        &self,
        _request: Request<api::ProcessesRequest>,
    ) -> Result<Response<api::ProcessesResponse>, Status> {
        let processes = self.shared.node.system.processes().await?;
        Ok(Response::new(api::ProcessesResponse {
            messages: vec![api::ProcessesResult {
                metadata: here(),
                processes,
            }],
        }))
    }

    async fn memory(
        &self,
        _request: Request<api::MemoryRequest>,
    ) -> Result<Response<api::MemoryResponse>, Status> {
        let mut memory = self.shared.node.system.memory().await?;
        memory.metadata = here();
        Ok(Response::new(api::MemoryResponse {
            messages: vec![memory],
        }))
    }

    async fn mounts(
        &self,
        _request: Request<api::MountsRequest>,
    ) -> Result<Response<api::MountsResponse>, Status> {
        let mounts = self.shared.node.system.mounts().await?;
        Ok(Response::new(api::MountsResponse {
            messages: vec![api::MountsResult {
                metadata: here(),
                mounts,
            }],
        }))
    }

    async fn disks(
        &self,
        _request: Request<api::DisksRequest>,
    ) -> Result<Response<api::DisksResponse>, Status> {
        let disks = self.shared.node.system.disks().await?;
        Ok(Response::new(api::DisksResponse {
            messages: vec![api::DisksResult {
                metadata: here(),
                disks,
            }],
        }))
    }

    async fn netstat(
        &self,
        request: Request<api::NetstatRequest>,
    ) -> Result<Response<api::NetstatResponse>, Status> {
        let filter = api::NetstatFilter::try_from(request.into_inner().filter)
            .map_err(|e| Status::invalid_argument(format!("netstat filter: {e}")))?;
        let sockets = self.shared.node.system.netstat(filter).await?;
        Ok(Response::new(api::NetstatResponse {
            messages: vec![api::NetstatResult {
                metadata: here(),
                sockets,
            }],
        }))
    }

    async fn controller_dependencies(
        &self,
        _request: Request<api::ControllerDependenciesRequest>,
    ) -> Result<Response<api::ControllerDependenciesResponse>, Status> {
        let edges = self.shared.dependencies.iter().map(dependency).collect();
        Ok(Response::new(api::ControllerDependenciesResponse {
            messages: vec![api::ControllerDependenciesResult {
                metadata: here(),
                edges,
            }],
        }))
    }

    type ReadStream = BoxStream<'static, Result<api::Data, Status>>;

    async fn read(
        &self,
        request: Request<api::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let bytes = self
            .shared
            .node
            .files
            .read(&request.into_inner().path)
            .await?;
        Ok(Response::new(self.data(bytes)))
    }

    type ListStream = BoxStream<'static, Result<api::FileInfo, Status>>;

    async fn list(
        &self,
        request: Request<api::FileListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = request.into_inner();
        let depth = u32::try_from(r.max_depth).unwrap_or(0);
        let entries = self
            .shared
            .node
            .files
            .list(&r.root, r.recurse, depth)
            .await?;
        Ok(Response::new(
            entries
                .map(move |entry| {
                    entry
                        .map(|mut e| {
                            e.metadata = here();
                            e
                        })
                        .map_err(Status::from)
                })
                .boxed(),
        ))
    }

    type EventsStream = BoxStream<'static, Result<api::Event, Status>>;

    async fn events(
        &self,
        request: Request<api::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let tail = match request.into_inner().tail_events {
            n if n < 0 => None,
            n => Some(usize::try_from(n).unwrap_or(0)),
        };
        let (replay, rx) = self.shared.events.subscribe(tail);
        let live = stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(event) => Some((Ok(event), rx)),
                Err(RecvError::Lagged(n)) => Some((
                    Err(Status::aborted(format!(
                        "the events stream fell {n} events behind and was closed; reconnect"
                    ))),
                    rx,
                )),
                Err(RecvError::Closed) => None,
            }
        })
        // After a lag error the stream ends.
        .scan(false, |ended, item| {
            let out = (!*ended).then_some(item);
            if matches!(out, Some(Err(_))) {
                *ended = true;
            }
            futures::future::ready(out)
        });
        let replay = stream::iter(replay.into_iter().map(Ok));
        Ok(Response::new(
            replay
                .chain(live)
                .map(|event: Result<api::Event, Status>| {
                    event.map(|mut e| {
                        e.metadata = here();
                        e
                    })
                })
                .boxed(),
        ))
    }

    async fn generate_client_configuration(
        &self,
        request: Request<api::GenerateClientConfigurationRequest>,
    ) -> Result<Response<api::GenerateClientConfigurationResponse>, Status> {
        let r = request.into_inner();
        // The OS CA key stays in the node's secrets: read for this call only.
        let root = match self
            .shared
            .state
            .get(&ResourceKey::of::<OsRootSpec>(OsRootSpec::ID))
            .await
        {
            Ok(root) => root,
            Err(StateError::NotFound(_)) => {
                return Err(Status::failed_precondition("the node has no config yet"))
            }
            Err(e) => return Err(state_status(e)),
        };
        let root = root.spec_as::<OsRootSpec>().map_err(resource_status)?;
        if root.ca_key.is_empty() {
            return Err(Status::failed_precondition(
                "this node does not hold the OS CA key (not a control-plane node)",
            ));
        }
        let ca = CertAndKey {
            crt: root.ca.clone(),
            key: root.ca_key.clone(),
        };
        let roles = r
            .roles
            .iter()
            .map(|r| r.parse::<Role>().map_err(pki_status))
            .collect::<Result<Vec<_>, _>>()?;
        if roles.is_empty() || roles.contains(&Role::Impersonator) {
            return Err(Status::invalid_argument(
                "name one or more of os:admin, os:operator, os:reader, os:etcd:backup",
            ));
        }
        let ttl = r
            .crt_ttl
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(DEFAULT_CLIENT_CERT_TTL)
            .min(MAX_CLIENT_CERT_TTL);
        let name = roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join("+");
        let cert = issue_client_cert(&ca, &name, &roles, ttl).map_err(pki_status)?;
        let osconfig = ClientConfig::single(
            "basalt",
            Context {
                endpoints: Vec::new(),
                nodes: Vec::new(),
                ca: ca.crt.clone(),
                crt: cert.crt.clone(),
                key: Secret::new(cert.key.clone()),
            },
        )
        .to_yaml()
        .map_err(config_status)?;
        Ok(Response::new(api::GenerateClientConfigurationResponse {
            messages: vec![api::GenerateClientConfigurationResult {
                metadata: here(),
                ca: ca.crt.clone().into_bytes(),
                crt: cert.crt.into_bytes(),
                key: cert.key.into_bytes(),
                osconfig: osconfig.into_bytes(),
            }],
        }))
    }
}
