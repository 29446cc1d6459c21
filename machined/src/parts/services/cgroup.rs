//! A service run's cgroup, made and removed off the async threads (cgroupfs writes, and
//! killing what is left, wait on the kernel).

use basalt_sys::cgroups::{Hierarchy, Limits, ServiceCgroup};

use super::definition::ServiceDefinition;

/// The cgroup of one run of a service, with what could not be applied.
pub(super) struct RunCgroup {
    pub cgroup: Option<ServiceCgroup>,
    /// Limits of the definition that are not in force, each with why.
    pub not_applied: Vec<String>,
    /// The OOM kill counter before the service started.
    pub oom_before: Option<u64>,
}

/// Makes the cgroup of one run of `definition` under `parent` (`None`: this supervisor
/// makes no cgroups, and any limit is reported as not applied).
pub(super) async fn create(
    hierarchies: &[Hierarchy],
    parent: Option<&str>,
    definition: &ServiceDefinition,
) -> RunCgroup {
    let limits = Limits {
        memory_max: definition.resources.memory_max,
        pids_max: definition.resources.pids_max,
    };
    let Some(parent) = parent else {
        return RunCgroup {
            cgroup: None,
            not_applied: without_cgroups(limits, "this supervisor makes no cgroups"),
            oom_before: None,
        };
    };
    if hierarchies.is_empty() {
        return RunCgroup {
            cgroup: None,
            not_applied: without_cgroups(limits, "no cgroup hierarchy is mounted"),
            oom_before: None,
        };
    }
    let (hierarchies, parent, id) = (
        hierarchies.to_vec(),
        parent.to_string(),
        definition.id.clone(),
    );
    let made = tokio::task::spawn_blocking(move || {
        let cgroup = ServiceCgroup::create(&hierarchies, &parent, &id, limits);
        let oom_before = cgroup.oom_kills();
        (cgroup, oom_before)
    })
    .await;
    match made {
        Ok((cgroup, oom_before)) => {
            for problem in cgroup.problems() {
                tracing::warn!(service = %definition.id, %problem, "part of the service's cgroup is missing");
            }
            RunCgroup {
                not_applied: cgroup.not_applied().to_vec(),
                cgroup: Some(cgroup),
                oom_before,
            }
        }
        // A panic in the blocking task: run without a cgroup, and say so.
        Err(error) => RunCgroup {
            cgroup: None,
            not_applied: without_cgroups(limits, &format!("making its cgroup failed: {error}")),
            oom_before: None,
        },
    }
}

fn without_cgroups(limits: Limits, why: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(max) = limits.memory_max {
        out.push(format!("memory limit of {max} bytes: {why}"));
    }
    if let Some(max) = limits.pids_max {
        out.push(format!("pids limit of {max}: {why}"));
    }
    out
}

/// Kills whatever is left in the cgroup and removes it; returns the OOM kill counter
/// as it was at the end.
pub(super) async fn remove(id: &str, cgroup: Option<ServiceCgroup>) -> Option<u64> {
    let mut cgroup = cgroup?;
    let done = tokio::task::spawn_blocking(move || {
        let oom_after = cgroup.oom_kills();
        (oom_after, cgroup.remove())
    })
    .await;
    match done {
        Ok((oom_after, problems)) => {
            for problem in problems {
                tracing::warn!(service = %id, %problem, "could not clean up the service's cgroup");
            }
            oom_after
        }
        Err(error) => {
            tracing::warn!(service = %id, %error, "could not clean up the service's cgroup");
            None
        }
    }
}
