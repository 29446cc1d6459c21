//! How PID 1 takes the machine down, for a requested reboot or power-off and on a fatal
//! error alike: flush, unmount what it mounted (last first), flush again, then ask the
//! kernel. PID 1 never exits: if the kernel call returns, it waits for the end.

use std::path::PathBuf;

use basalt_sys::{Reboot, Sys};

/// Unmounts `mounted` in reverse order (failures are logged: the machine goes down
/// anyway), syncs and calls `reboot`. Returns only if the kernel refused.
pub fn go_down(sys: &dyn Sys, mounted: &[PathBuf], how: Reboot) -> basalt_sys::SysError {
    tracing::info!(?how, "taking the machine down");
    sys.sync();
    for target in mounted.iter().rev() {
        if let Err(e) = sys.unmount(target) {
            tracing::warn!(target = %target.display(), error = %e, "unmount failed");
        }
    }
    sys.sync();
    match sys.reboot(how) {
        Ok(()) => basalt_sys::SysError::Invalid {
            call: "reboot",
            reason: "returned without taking the machine down".into(),
        },
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use basalt_sys::{Call, Recording};

    use super::*;

    #[test]
    fn syncs_unmounts_in_reverse_then_reboots() {
        let sys = Recording::new();
        let mounted = vec![PathBuf::from("/proc"), PathBuf::from("/system/state")];
        sys.fail("unmount");
        go_down(&sys, &mounted, Reboot::PowerOff);
        assert_eq!(
            sys.calls(),
            [
                Call::Sync,
                Call::Unmount("/system/state".into()),
                Call::Unmount("/proc".into()),
                Call::Sync,
                Call::Reboot(Reboot::PowerOff),
            ]
        );
    }
}
