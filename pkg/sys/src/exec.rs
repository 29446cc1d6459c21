//! What a service's process does between fork and exec: join its cgroups, and keep only
//! the capabilities it is given (with no_new_privs, so that exec cannot give any back).
//!
//! Everything is worked out in the parent, before the fork; the child only makes system
//! calls on what was prepared, because after a fork of a multi-threaded process only
//! async-signal-safe work is sound (it allocates only to describe an error it returns).

use std::io;
use std::os::fd::OwnedFd;

pub use caps::Capability;
use caps::{CapSet, CapsHashSet};

use crate::SysError;

/// The capabilities a child keeps, and those it drops from its bounding set.
#[derive(Debug)]
struct CapsPlan {
    keep: CapsHashSet,
    drop_bounding: Vec<Capability>,
}

/// Makes `command`'s child join the cgroups whose `cgroup.procs` files are `cgroup_procs`
/// (open for writing) and, with `capabilities`, keep only those of them this process has
/// (every set: bounding, effective, permitted, inheritable, ambient) and set
/// no_new_privs. `None` leaves the capabilities as they are.
pub fn confine(
    command: &mut tokio::process::Command,
    cgroup_procs: Vec<OwnedFd>,
    capabilities: Option<&[Capability]>,
) -> Result<(), SysError> {
    let plan = match capabilities {
        None => None,
        Some(wanted) => {
            let permitted = caps::read(None, CapSet::Permitted).map_err(|e| SysError::Invalid {
                call: "capget",
                reason: e.to_string(),
            })?;
            let keep: CapsHashSet = wanted
                .iter()
                .copied()
                .filter(|c| permitted.contains(c))
                .collect();
            // The capabilities this kernel knows: dropping one it does not is EINVAL.
            // Without CAP_SETPCAP (an unprivileged machined in tests) the bounding set
            // cannot shrink; no_new_privs still keeps exec from granting anything past
            // the sets narrowed below.
            let may_drop =
                caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
            let drop_bounding = if may_drop {
                caps::runtime::thread_all_supported()
                    .into_iter()
                    .filter(|c| !keep.contains(c))
                    .collect()
            } else {
                Vec::new()
            };
            Some(CapsPlan {
                keep,
                drop_bounding,
            })
        }
    };
    let hook = move || -> io::Result<()> {
        for file in &cgroup_procs {
            // `0` is the writing process itself, in v1 and v2 alike.
            rustix::io::write(file, b"0")?;
        }
        if let Some(plan) = &plan {
            drop_capabilities(plan)?;
        }
        Ok(())
    };
    #[allow(unsafe_code)]
    // SAFETY: `pre_exec` runs the hook in the forked child before exec. The hook only
    // makes system calls (write, prctl, capget/capset) on data made before the fork and
    // moved into it; it takes no lock and allocates only when it formats an error, after
    // which the child exits without exec.
    unsafe {
        command.pre_exec(hook);
    }
    Ok(())
}

/// In order: no_new_privs; the bounding set (needs CAP_SETPCAP, so while it is still
/// there); ambient cleared; inheritable, effective, then permitted narrowed (effective
/// before permitted: it must stay a subset); ambient raised to what is kept, so that a
/// non-root service keeps it across exec.
fn drop_capabilities(plan: &CapsPlan) -> io::Result<()> {
    let err = |e: caps::errors::CapsError| io::Error::other(e.to_string());
    rustix::thread::set_no_new_privs(true)?;
    for &cap in &plan.drop_bounding {
        caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::set(None, CapSet::Inheritable, &plan.keep).map_err(err)?;
    caps::set(None, CapSet::Effective, &plan.keep).map_err(err)?;
    caps::set(None, CapSet::Permitted, &plan.keep).map_err(err)?;
    for &cap in &plan.keep {
        caps::raise(None, CapSet::Ambient, cap).map_err(err)?;
    }
    Ok(())
}

/// Parses capability names (`CAP_CHOWN`, or `chown`).
pub fn parse_capability(name: &str) -> Result<Capability, SysError> {
    let canonical = caps::to_canonical(name);
    canonical.parse().map_err(|_| SysError::Invalid {
        call: "capability",
        reason: format!("unknown capability {name:?}"),
    })
}
