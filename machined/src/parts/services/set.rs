//! The node's services as they stand now: a supervisor for the current set of
//! definitions, succeeded by another when the set changes (the node's role changed: a
//! configured control plane runs etcd, a node in maintenance mode does not; an extension
//! service's config changed), which takes over the services that did not change.

use std::sync::Arc;

use async_trait::async_trait;
use basalt_api::machine::v1 as api;
use basalt_resource::ResourceKey;
use basalt_resources::runtime::ServiceSpec;
use basalt_state::State;
use tokio::sync::RwLock;

use super::{ServiceDefinition, Supervisor, SupervisorOptions, SUPERVISOR_OWNER};
use crate::parts::{ByteStream, NodeError, Services};

#[derive(Debug)]
struct Current {
    definitions: Vec<ServiceDefinition>,
    supervisor: Arc<Supervisor>,
}

/// The supervisor of the node's current services, behind the [`Services`] the API uses.
#[derive(Debug)]
pub struct ServiceSet {
    state: State,
    current: RwLock<Current>,
}

impl ServiceSet {
    /// A set of `definitions`, none started yet.
    pub fn new(
        state: State,
        definitions: Vec<ServiceDefinition>,
        options: SupervisorOptions,
    ) -> Result<Self, NodeError> {
        let supervisor = Arc::new(Supervisor::new(
            state.clone(),
            definitions.clone(),
            options,
        )?);
        Ok(ServiceSet {
            state,
            current: RwLock::new(Current {
                definitions,
                supervisor,
            }),
        })
    }

    /// The supervisor of the current set.
    pub async fn supervisor(&self) -> Arc<Supervisor> {
        Arc::clone(&self.current.read().await.supervisor)
    }

    pub async fn start_all(&self) -> Result<(), NodeError> {
        self.supervisor().await.start_all().await
    }

    pub async fn shutdown(&self) {
        self.supervisor().await.shutdown().await;
    }

    /// Makes `definitions` the node's services: a service that is unchanged (and so is
    /// everything it depends on) runs on untouched; the others stop (dependents first),
    /// the status of those that are gone is removed, and the new and changed ones start.
    /// A set that cannot be supervised (a duplicate id, a cycle) is refused and the
    /// current one runs on.
    pub async fn replace(&self, definitions: Vec<ServiceDefinition>) -> Result<(), NodeError> {
        let mut current = self.current.write().await;
        if current.definitions == definitions {
            return Ok(());
        }
        let next = Arc::new(current.supervisor.succeed(definitions.clone()).await?);
        for gone in current
            .definitions
            .iter()
            .filter(|old| !definitions.iter().any(|new| new.id == old.id))
        {
            let key = ResourceKey::of::<ServiceSpec>(&gone.id);
            let removed = async {
                self.state.teardown(&key, SUPERVISOR_OWNER).await?;
                self.state.destroy(&key, SUPERVISOR_OWNER).await
            };
            if let Err(error) = removed.await {
                tracing::warn!(service = %gone.id, %error, "could not remove the status of a service that is gone");
            }
        }
        tracing::info!(
            services = ?definitions.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            "the node's services changed"
        );
        *current = Current {
            definitions,
            supervisor: Arc::clone(&next),
        };
        drop(current);
        next.start_all().await
    }
}

#[async_trait]
impl Services for ServiceSet {
    async fn list(&self) -> Result<Vec<api::ServiceInfo>, NodeError> {
        self.supervisor().await.list().await
    }

    async fn start(&self, id: &str) -> Result<String, NodeError> {
        self.supervisor().await.start(id).await
    }

    async fn stop(&self, id: &str) -> Result<String, NodeError> {
        self.supervisor().await.stop(id).await
    }

    async fn restart(&self, id: &str) -> Result<String, NodeError> {
        self.supervisor().await.restart(id).await
    }

    async fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<ByteStream, NodeError> {
        self.supervisor().await.logs(id, follow, tail).await
    }
}
