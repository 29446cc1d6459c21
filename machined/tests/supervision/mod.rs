//! Helpers the supervisor's tests share: waiting for a service's state, shell services,
//! whether a process lives.

#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use basalt_api::machine::v1 as api;
use machined::parts::{ServiceDefinition, Services, Supervisor};

/// Generous: the machine is shared and loaded; passing tests return much sooner.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some`, or fails the test after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A service that runs `script` in `sh`.
pub fn sh(id: &str, script: &str) -> ServiceDefinition {
    ServiceDefinition::new(id, &["sh", "-c", script])
}

pub async fn service(supervisor: &Supervisor, id: &str) -> api::ServiceInfo {
    supervisor
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.id == id)
        .unwrap()
}

/// Waits until `ok` holds for the service and returns it.
pub async fn wait_for(
    supervisor: &Supervisor,
    id: &str,
    what: &str,
    ok: impl Fn(&api::ServiceInfo) -> bool,
) -> api::ServiceInfo {
    eventually(&format!("service {id} to be {what}"), || async {
        Some(service(supervisor, id).await).filter(|s| ok(s))
    })
    .await
}

/// Waits until the service is in `state` and returns it.
pub async fn wait_state(supervisor: &Supervisor, id: &str, state: &str) -> api::ServiceInfo {
    wait_for(supervisor, id, state, |s| s.state == state).await
}

/// A process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim()
            .starts_with('Z')
    })
}
