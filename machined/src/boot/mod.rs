//! PID 1: what machined does when it is the first process of a machine. The steps are
//! separate modules so each is tested on its own, most with `basalt_sys::Recording`:
//! early mounts, kernel modules, the STATE disk, reaping, and taking the machine down.
//! (The network is the controllers' work: `basalt_controllers::network`.) [`metal`] strings them together on a real kernel.

pub mod container;
pub mod halt;
pub mod layers;
pub mod metal;
pub mod modules;
pub mod mounts;
pub mod pid1;
pub mod reaper;
pub mod state_disk;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Duration;

use basalt_sys::{Reboot, Sys};

use crate::BootError;

/// Runs the node (`run`) and takes the machine down when it ends: as it asks (a reboot or
/// power-off request), or with a restart after `fatal_delay` when it fails or panics.
/// PID 1 must never exit (the kernel panics when it does), so this returns only if the
/// kernel refused to go down, with that error.
/// `run` records what it mounts in the list it is given, to unmount on the way down.
pub fn guard(
    sys: &dyn Sys,
    fatal_delay: Duration,
    run: impl FnOnce(&mut Vec<PathBuf>) -> Result<Reboot, BootError>,
) -> basalt_sys::SysError {
    let mut mounted = Vec::new();
    let how = match std::panic::catch_unwind(AssertUnwindSafe(|| run(&mut mounted))) {
        Ok(Ok(how)) => how,
        Ok(Err(e)) => {
            tracing::error!(error = %e, delay = ?fatal_delay, "fatal error: restarting the machine after a delay");
            std::thread::sleep(fatal_delay);
            Reboot::Restart
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            tracing::error!(panic = %message, delay = ?fatal_delay, "machined panicked: restarting the machine after a delay");
            std::thread::sleep(fatal_delay);
            Reboot::Restart
        }
    };
    halt::go_down(sys, &mounted, how)
}

/// PID 1's async runtime, started once the early mounts are there.
fn runtime() -> Result<tokio::runtime::Runtime, BootError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| BootError::Io {
            what: "starting the async runtime",
            source,
        })
}

#[cfg(test)]
mod tests {
    use basalt_sys::{Call, Recording};

    use super::*;

    fn last_call(sys: &Recording) -> Call {
        sys.calls().pop().unwrap()
    }

    #[test]
    fn a_request_takes_the_machine_down_as_asked() {
        let sys = Recording::new();
        guard(&sys, Duration::ZERO, |_| Ok(Reboot::PowerOff));
        assert_eq!(last_call(&sys), Call::Reboot(Reboot::PowerOff));
    }

    #[test]
    fn a_fatal_error_or_a_panic_restarts_the_machine_after_the_delay() {
        let sys = Recording::new();
        let started = std::time::Instant::now();
        guard(&sys, Duration::from_millis(200), |mounted| {
            mounted.push("/proc".into());
            Err(BootError::UnknownModule("x".into()))
        });
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            sys.calls(),
            [
                Call::Sync,
                Call::Unmount("/proc".into()),
                Call::Sync,
                Call::Reboot(Reboot::Restart)
            ]
        );

        let sys = Recording::new();
        guard(&sys, Duration::ZERO, |mounted| {
            mounted.push("/run".into());
            panic!("a bug")
        });
        assert!(sys.calls().contains(&Call::Unmount("/run".into())));
        assert_eq!(last_call(&sys), Call::Reboot(Reboot::Restart));
    }
}
