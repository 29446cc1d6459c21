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

/// Spawns `command` as a child its caller waits for, out of the reaper's reach until the
/// returned [`Waited`] is dropped (after the wait). The record is made before the reaper
/// can look again, so it never races the child's exit.
pub fn spawn(
    command: &mut tokio::process::Command,
) -> std::io::Result<(tokio::process::Child, Waited)> {
    let mut waited = waited();
    let child = command.spawn()?;
    let pid = child.id().map(|pid| pid as i32);
    if let Some(pid) = pid {
        waited.get_or_insert_with(HashSet::new).insert(pid);
    }
    Ok((child, Waited(pid)))
}

/// A child someone waits for; when dropped, its number may be reused and the reaper
/// takes it back.
#[derive(Debug)]
pub struct Waited(Option<i32>);

impl Drop for Waited {
    fn drop(&mut self) {
        if let (Some(pid), Some(set)) = (self.0, waited().as_mut()) {
            set.remove(&pid);
        }
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

    fn state_of(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(&stat).map(|(state, _)| state)
    }

    fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A child nobody waits for (std's `Child` does not reap on drop) becomes a zombie.
    fn zombie() -> u32 {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        drop(child);
        until("the child is a zombie", || state_of(pid) == Some('Z'));
        pid
    }

    /// Reaping is process-wide, so this test must be alone in its process for the zombies
    /// to be its own: nextest runs every test alone; under `cargo test` (all of a crate's
    /// tests in one process) it runs itself again, alone.
    #[test]
    fn zombies_are_reaped_and_waited_children_left_to_their_waiter() {
        const ALONE: &str = "BASALT_REAPER_TEST_ALONE";
        if std::env::var_os(ALONE).is_none() {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "boot::reaper::tests::zombies_are_reaped_and_waited_children_left_to_their_waiter",
                    "--test-threads=1",
                ])
                .env(ALONE, "1")
                .status()
                .unwrap();
            assert!(status.success(), "the test, run alone: {status}");
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let (mut child, waited) = spawn(&mut tokio::process::Command::new("true")).unwrap();
        let kept = child.id().unwrap();
        until("the waited child is a zombie", || {
            state_of(kept) == Some('Z')
        });
        let orphan = zombie();

        let reaped = reap_once(Path::new("/proc"));
        assert_eq!(reaped, vec![orphan as i32]);
        assert_eq!(state_of(orphan), None, "the zombie is gone");
        assert_eq!(state_of(kept), Some('Z'), "the waited child is left alone");
        let status = runtime.block_on(child.wait()).unwrap();
        assert!(
            status.success(),
            "its waiter gets its exit status: {status}"
        );
        drop(waited);

        // Once forgotten, its number is the reaper's again.
        let (child, waited) = spawn(&mut tokio::process::Command::new("true")).unwrap();
        let pid = child.id().unwrap();
        drop(waited);
        std::mem::forget(child);
        until("the forgotten child is a zombie", || {
            state_of(pid) == Some('Z')
        });
        assert_eq!(reap_once(Path::new("/proc")), vec![pid as i32]);
    }

    #[tokio::test]
    async fn the_reaper_reaps_on_sigchld() {
        let reaper = tokio::spawn(run(std::path::PathBuf::from("/proc")));
        // Let it install its SIGCHLD handler before the child exits.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let pid = std::process::Command::new("true").spawn().unwrap().id();
        tokio::task::spawn_blocking(move || until("reaped", || state_of(pid).is_none()))
            .await
            .unwrap();
        // Well before the 5 s sweep: the signal woke it.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        reaper.abort();
    }
}
