//! What a service's process does between fork and exec: join its cgroups, become the user
//! it runs as, and keep only the capabilities it is given (with no_new_privs, so that
//! exec cannot give any back).
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

/// The user a service runs as: its uid and gid, without supplementary groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

/// Makes `command`'s child join the cgroups whose `cgroup.procs` files are `cgroup_procs`
/// (open for writing; the kernel checks the opener's rights), run as `user` if given, and
/// with `capabilities` keep only those of them this process has (every set: bounding,
/// effective, permitted, inheritable, ambient, so that a user other than root keeps them
/// across exec) and set no_new_privs. `None` leaves the capabilities as they are (a user
/// other than root then has none).
pub fn confine(
    command: &mut tokio::process::Command,
    cgroup_procs: Vec<OwnedFd>,
    user: Option<User>,
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
    // As the kernel's types: -1 is "no change" to setresuid, not a uid.
    let ids = match user {
        Some(User { uid, gid }) if uid == u32::MAX || gid == u32::MAX => {
            return Err(SysError::Invalid {
                call: "setresuid",
                reason: format!("{uid}:{gid} is not a user (-1 means no change)"),
            })
        }
        Some(User { uid, gid }) => Some((
            rustix::process::Uid::from_raw(uid),
            rustix::process::Gid::from_raw(gid),
        )),
        None => None,
    };
    let hook = move || -> io::Result<()> {
        for file in &cgroup_procs {
            // `0` is the writing process itself, in v1 and v2 alike.
            rustix::io::write(file, b"0")?;
        }
        // The bounding set shrinks while the child is still root (it takes CAP_SETPCAP);
        // the other sets once it is the user, which keeps its permitted set through the
        // change (PR_SET_KEEPCAPS) so that the kept ones can be made effective again.
        if let Some(plan) = &plan {
            narrow_bounding(plan)?;
        }
        if let Some((uid, gid)) = ids {
            if plan.is_some() {
                rustix::thread::set_keep_capabilities(true)?;
            }
            rustix::thread::set_thread_groups(&[])?;
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        }
        if let Some(plan) = &plan {
            narrow_sets(plan)?;
        }
        Ok(())
    };
    #[allow(unsafe_code)]
    // SAFETY: `pre_exec` runs the hook in the forked child before exec. The hook only
    // makes system calls (write, prctl, setgroups, setresgid, setresuid, capget/capset)
    // on data made before the fork and moved into it; they act on the calling thread, the
    // child's only one. It takes no lock and allocates only when it formats an error,
    // after which the child exits without exec.
    unsafe {
        command.pre_exec(hook);
    }
    Ok(())
}

fn caps_error(e: caps::errors::CapsError) -> io::Error {
    io::Error::other(e.to_string())
}

/// no_new_privs, then the bounding set (needs CAP_SETPCAP, so while it is still there).
fn narrow_bounding(plan: &CapsPlan) -> io::Result<()> {
    rustix::thread::set_no_new_privs(true)?;
    for &cap in &plan.drop_bounding {
        caps::drop(None, CapSet::Bounding, cap).map_err(caps_error)?;
    }
    Ok(())
}

/// In order: ambient cleared; inheritable, effective, then permitted narrowed (effective
/// before permitted: it must stay a subset); ambient raised to what is kept, so that a
/// non-root service keeps it across exec.
fn narrow_sets(plan: &CapsPlan) -> io::Result<()> {
    caps::clear(None, CapSet::Ambient).map_err(caps_error)?;
    caps::set(None, CapSet::Inheritable, &plan.keep).map_err(caps_error)?;
    caps::set(None, CapSet::Effective, &plan.keep).map_err(caps_error)?;
    caps::set(None, CapSet::Permitted, &plan.keep).map_err(caps_error)?;
    for &cap in &plan.keep {
        caps::raise(None, CapSet::Ambient, cap).map_err(caps_error)?;
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
