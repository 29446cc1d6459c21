//! The resource service: any registered type, as metadata plus YAML spec. Types are
//! checked against the registry before the state is touched, and sensitive types are
//! served to admins only.

use std::sync::Arc;

use basalt_api::resource::v1 as api;
use basalt_api::resource::v1::resource_service_server::ResourceService;
use basalt_resource::{AnyResource, Kind, LabelQuery, ResourceDefinitionSpec, ResourceKey};
use basalt_state::{Event, WatchKindOptions, WatchLimits};
use futures::stream::{self, BoxStream, StreamExt};
use tonic::{Request, Response, Status};

use apid::AuthorizedCaller;

use super::status::resource_status;
use super::{caller, here, state_status, Shared};

pub(crate) struct ResourceApi {
    shared: Arc<Shared>,
}

impl ResourceApi {
    pub fn new(shared: Arc<Shared>) -> Self {
        ResourceApi { shared }
    }
}

fn encode(resource: &AnyResource) -> Result<basalt_resource::proto::Resource, Status> {
    resource
        .to_proto()
        .map_err(|e| Status::internal(format!("encoding {}: {e}", resource.metadata.key())))
}

impl ResourceApi {
    /// The definition of `type_name` (or alias), if the caller may see its resources.
    fn definition(
        &self,
        caller: &AuthorizedCaller,
        type_name: &str,
    ) -> Result<ResourceDefinitionSpec, Status> {
        let definition = self
            .shared
            .registry
            .resolve(type_name)
            .map_err(resource_status)?;
        if definition.sensitive && !caller.sees_secrets() {
            return Err(Status::permission_denied(format!(
                "{} is sensitive: only os:admin may read it",
                definition.type_name
            )));
        }
        Ok(definition.clone())
    }

    fn kind(
        &self,
        caller: &AuthorizedCaller,
        namespace: &str,
        type_name: &str,
    ) -> Result<Kind, Status> {
        let definition = self.definition(caller, type_name)?;
        let namespace = if namespace.is_empty() {
            definition.default_namespace
        } else {
            namespace.to_string()
        };
        Ok(Kind::new(namespace, definition.type_name))
    }
}

fn selector(text: &str) -> Result<LabelQuery, Status> {
    LabelQuery::parse(text).map_err(resource_status)
}

fn watch_message(event: Event) -> Result<api::WatchResponse, Status> {
    let (kind, resource, old) = match &event {
        Event::Created(r) => (api::EventType::Created, Some(encode(r)?), None),
        Event::Updated { old, new } => (
            api::EventType::Updated,
            Some(encode(new)?),
            Some(encode(old)?),
        ),
        Event::Destroyed(r) => (api::EventType::Destroyed, Some(encode(r)?), None),
        Event::Bootstrapped => (api::EventType::Bootstrapped, None, None),
    };
    Ok(api::WatchResponse {
        metadata: here(),
        event: kind as i32,
        resource,
        old,
    })
}

/// What an API watch may have waiting for its client (beyond what HTTP/2 flow control
/// lets through) before it is overrun: ABORTED, and the client watches again from a
/// fresh snapshot. 1,024 events or 4 MiB of the resources they hold, whichever comes
/// first: a client that never reads must not hold thousands of old resource versions,
/// nor a few hundred large ones. Controllers' watches keep the state's larger capacity.
const API_WATCH_LIMITS: WatchLimits = WatchLimits {
    events: Some(1024),
    bytes: Some(4 << 20),
};

#[tonic::async_trait]
impl ResourceService for ResourceApi {
    async fn get(
        &self,
        request: Request<api::GetRequest>,
    ) -> Result<Response<api::GetResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let kind = self.kind(&caller, &r.namespace, &r.r#type)?;
        let key = ResourceKey::new(kind.namespace, kind.type_name, r.id);
        let resource = self.shared.state.get(&key).await.map_err(state_status)?;
        Ok(Response::new(api::GetResponse {
            messages: vec![api::GetResult {
                metadata: here(),
                resource: Some(encode(&resource)?),
            }],
        }))
    }

    type ListStream = BoxStream<'static, Result<api::ListResponse, Status>>;

    async fn list(
        &self,
        request: Request<api::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let kind = self.kind(&caller, &r.namespace, &r.r#type)?;
        let resources = self
            .shared
            .state
            .list(&kind, &selector(&r.label_selector)?)
            .await
            .map_err(state_status)?;
        let messages = resources.into_iter().map(|resource| {
            Ok(api::ListResponse {
                metadata: here(),
                resource: Some(encode(&resource)?),
            })
        });
        Ok(Response::new(stream::iter(messages).boxed()))
    }

    type WatchStream = BoxStream<'static, Result<api::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<api::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let kind = self.kind(&caller, &r.namespace, &r.r#type)?;
        let state = &self.shared.state;
        let watch = if r.id.is_empty() {
            let options = WatchKindOptions {
                bootstrap: r.bootstrap,
                selector: selector(&r.label_selector)?,
                limits: API_WATCH_LIMITS,
            };
            state.watch_kind(&kind, options).await
        } else {
            let key = ResourceKey::new(kind.namespace, kind.type_name, r.id);
            state.watch_with(&key, API_WATCH_LIMITS).await
        }
        .map_err(state_status)?;
        // The stream, and with it the state watch, is dropped when the client goes away.
        let events = stream::unfold(watch, |mut watch| async move {
            match watch.next().await? {
                Ok(event) => Some((watch_message(event), watch)),
                Err(e) => Some((Err(state_status(e)), watch)),
            }
        });
        Ok(Response::new(events.boxed()))
    }

    async fn definitions(
        &self,
        _request: Request<api::DefinitionsRequest>,
    ) -> Result<Response<api::DefinitionsResponse>, Status> {
        let definitions = self
            .shared
            .registry
            .definitions()
            .map(|d| api::Definition {
                r#type: d.type_name.clone(),
                display_type: d.display_type.clone(),
                default_namespace: d.default_namespace.clone(),
                aliases: d.aliases.clone(),
                print_columns: d
                    .print_columns
                    .iter()
                    .map(|c| api::PrintColumn {
                        name: c.name.clone(),
                        path: c.path.clone(),
                    })
                    .collect(),
                sensitive: d.sensitive,
            })
            .collect();
        Ok(Response::new(api::DefinitionsResponse {
            messages: vec![api::DefinitionsResult {
                metadata: here(),
                definitions,
            }],
        }))
    }
}
