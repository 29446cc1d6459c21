//! PID 1 reaps every zombie: orphans the kernel re-parents to it, and anything else that
//! exits under it without a waiter. Children the node waits for itself (services, apid)
//! are spawned through [`spawn`], which records them so the reaper leaves their exit
//! status to their waiter (tokio's `Child::wait` fails if someone else reaped it).
//!
//! Zombies are found in /proc (state `Z`, parent this process) rather than with
//! `waitpid(-1)`, which cannot skip the children that have a waiter.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustix::process::{Pid, WaitOptions};

/// Children someone else waits for.
static WAITED: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

fn waited() -> MutexGuard<'static, Option<HashSet<i32>>> {
    WAITED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spawns `command` as a child its caller waits for, out of the reaper's reach. The
/// record is made before the reaper can look again, so it never races the child's exit.
pub fn spawn(command: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut waited = waited();
    let child = command.spawn()?;
    if let Some(pid) = child.id() {
        waited.get_or_insert_with(HashSet::new).insert(pid as i32);
    }
    Ok(child)
}

/// The child `pid` (from [`spawn`]) has been waited for: its number may be reused.
pub fn forget(pid: u32) {
    if let Some(set) = waited().as_mut() {
        set.remove(&(pid as i32));
    }
}

/// Reaps every zombie child of this process that nobody waits for; returns their pids.
pub fn reap_once(proc: &Path) -> Vec<i32> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let waited = waited();
    let mut reaped = Vec::new();
    for pid in zombie_children(proc, me) {
        if waited.as_ref().is_some_and(|set| set.contains(&pid)) {
            continue;
        }
        let Some(child) = Pid::from_raw(pid) else {
            continue;
        };
        match rustix::process::waitpid(Some(child), WaitOptions::NOHANG) {
            Ok(Some(_)) => reaped.push(pid),
            Ok(None) => {}
            Err(e) => tracing::debug!(pid, error = %e, "could not reap"),
        }
    }
    reaped
}

/// The pids under `proc` whose state is zombie and whose parent is `parent`.
fn zombie_children(proc: &Path, parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(proc.join(pid.to_string()).join("stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_some_and(|(state, ppid)| state == 'Z' && ppid == parent)
        })
        .collect()
}

/// The state and the parent's pid from a /proc/PID/stat line. The command name (in
/// parentheses) may hold spaces and parentheses, so the fields are read after its last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Reaps on every SIGCHLD, and every few seconds in case a signal was merged with
/// another. Runs until the task is dropped.
pub async fn run(proc: std::path::PathBuf) {
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGCHLD: reaping every second instead");
            None
        }
    };
    let sweep = if sigchld.is_some() {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(1)
    };
    loop {
        let signalled = async {
            match sigchld.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signalled => {}
            () = tokio::time::sleep(sweep) => {}
        }
        let proc = proc.clone();
        if let Ok(reaped) = tokio::task::spawn_blocking(move || reap_once(&proc)).await {
            if !reaped.is_empty() {
                tracing::debug!(?reaped, "reaped zombies");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_state_and_parent_after_the_last_parenthesis() {
        assert_eq!(parse_stat("42 (sh) Z 1 42 42 0"), Some(('Z', 1)));
        assert_eq!(parse_stat("42 (a) b) (c) S 7 1"), Some(('S', 7)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) Z notanumber"), None);
    }
}
