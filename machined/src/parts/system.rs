//! The running system as /proc, /sys and /dev/kmsg show it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use basalt_api::machine::v1 as api;
use bytes::Bytes;
use futures::StreamExt;
use nix::unistd::{sysconf, SysconfVar};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::procfs::{
    parse_cmdline, parse_kmsg_record, parse_meminfo, parse_mountinfo_line, parse_net_line,
    parse_stat, socket_inode, socket_state_name,
};
use basalt_sys::kmsg;

use crate::parts::{ByteStream, NodeError, System};

/// Reads the host's /proc, /sys and /dev/kmsg (paths configurable for tests).
#[derive(Debug, Clone)]
pub struct ProcSystem {
    proc: PathBuf,
    sys: PathBuf,
    kmsg: PathBuf,
    clock_ticks: f64,
    page_size: u64,
}

impl Default for ProcSystem {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcSystem {
    pub fn new() -> Self {
        Self::with_paths("/proc", "/sys", "/dev/kmsg")
    }

    pub fn with_paths(
        proc: impl Into<PathBuf>,
        sys: impl Into<PathBuf>,
        kmsg: impl Into<PathBuf>,
    ) -> Self {
        // Both are fixed per system; Linux on x86 and arm64 uses 100 ticks and 4 KiB pages,
        // the values used should sysconf fail.
        let clock_ticks = match sysconf(SysconfVar::CLK_TCK) {
            Ok(Some(t)) if t > 0 => t as f64,
            _ => 100.0,
        };
        let page_size = match sysconf(SysconfVar::PAGE_SIZE) {
            Ok(Some(p)) if p > 0 => p.unsigned_abs(),
            _ => 4096,
        };
        ProcSystem {
            proc: proc.into(),
            sys: sys.into(),
            kmsg: kmsg.into(),
            clock_ticks,
            page_size,
        }
    }

    async fn read_string(path: &Path) -> Result<String, NodeError> {
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| NodeError::io(format!("reading {}", path.display()), e))
    }
}

/// Runs blocking file system work off the async threads.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| NodeError::Unavailable(format!("{what}: {e}")))?
}

/// Entries of a directory; an error names the directory.
fn read_dir(dir: &Path) -> Result<impl Iterator<Item = std::fs::DirEntry>, NodeError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| NodeError::io(format!("listing {}", dir.display()), e))?;
    // An entry that cannot be read is one that vanished while listing: left out.
    Ok(entries.filter_map(Result::ok))
}

/// A small text file, trimmed; `None` when it is absent or unreadable.
fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Every process under `proc`. One that vanishes or cannot be read while listing is left
/// out: a process list is a moving target and one process never fails the whole list.
fn read_processes(
    proc: &Path,
    clock_ticks: f64,
    page_size: u64,
) -> Result<Vec<api::Process>, NodeError> {
    let mut out: Vec<api::Process> = read_dir(proc)?
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|entry| {
            let dir = entry.path();
            let stat = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
            let args = std::fs::read(dir.join("cmdline"))
                .map(|raw| parse_cmdline(&raw))
                .unwrap_or_default();
            // Kernel threads have no executable, and other users' links need privileges.
            let executable = std::fs::read_link(dir.join("exe"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            Some(api::Process {
                pid: stat.pid,
                ppid: stat.ppid,
                state: stat.state,
                threads: stat.threads,
                cpu_time: stat.utime.saturating_add(stat.stime) as f64 / clock_ticks,
                virtual_memory: stat.vsize,
                resident_memory: stat.rss.saturating_mul(page_size),
                command: stat.comm,
                executable,
                args,
            })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    Ok(out)
}

/// The block devices under `sys/block` but loop and RAM disks. A device without a
/// readable size (it went away) is left out.
fn read_disks(sys: &Path) -> Result<Vec<api::Disk>, NodeError> {
    let mut out: Vec<api::Disk> = read_dir(&sys.join("block"))?
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("loop") || name.starts_with("ram") {
                return None;
            }
            let dir = entry.path();
            let read = |file: &str| read_trimmed(&dir.join(file));
            let sectors: u64 = read("size")?.parse().ok()?;
            let serial = ["device/serial", "wwid", "device/wwid"]
                .into_iter()
                .find_map(read)
                .unwrap_or_default();
            Some(api::Disk {
                // The size file counts 512-byte sectors whatever the device's block size.
                size: sectors.saturating_mul(512),
                model: read("device/model").unwrap_or_default(),
                serial,
                rotational: read("queue/rotational").as_deref() == Some("1"),
                read_only: read("ro").as_deref() == Some("1"),
                name,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The state numbers of a socket that waits for peers: a TCP listener, an unconnected
/// UDP socket (which the kernel shows as closed).
const TCP_LISTEN: u8 = 10;
const UDP_UNCONNECTED: u8 = 7;

/// The TCP and UDP sockets of the reader's network namespace, each with the process that
/// holds it (the first found, when several share it).
fn read_sockets(proc: &Path, filter: api::NetstatFilter) -> Result<Vec<api::Socket>, NodeError> {
    let holders = socket_holders(proc);
    let mut out = Vec::new();
    for protocol in ["tcp", "tcp6", "udp", "udp6"] {
        let path = proc.join("net").join(protocol);
        // A kernel without IPv6 has no tcp6 or udp6.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let waiting = if protocol.starts_with("tcp") {
            TCP_LISTEN
        } else {
            UDP_UNCONNECTED
        };
        for socket in text.lines().filter_map(parse_net_line) {
            let listening = socket.state == waiting;
            let wanted = match filter {
                api::NetstatFilter::All => true,
                api::NetstatFilter::Listening => listening,
                api::NetstatFilter::Connected => !listening,
            };
            if !wanted {
                continue;
            }
            let (pid, process) = holders.get(&socket.inode).cloned().unwrap_or_default();
            out.push(api::Socket {
                protocol: protocol.to_string(),
                local_ip: socket.local.ip().to_string(),
                local_port: u32::from(socket.local.port()),
                remote_ip: socket.remote.ip().to_string(),
                remote_port: u32::from(socket.remote.port()),
                state: socket_state_name(socket.state).to_string(),
                uid: socket.uid,
                inode: socket.inode,
                tx_queue: socket.tx_queue,
                rx_queue: socket.rx_queue,
                pid,
                process,
            });
        }
    }
    Ok(out)
}

/// Socket inode -> (pid, command name), from every process's open files. Processes that
/// vanish or cannot be read while listing are left out.
fn socket_holders(proc: &Path) -> std::collections::HashMap<u64, (i32, String)> {
    let mut holders = std::collections::HashMap::new();
    let Ok(entries) = read_dir(proc) else {
        return holders;
    };
    for entry in entries {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let comm = read_trimmed(&entry.path().join("comm")).unwrap_or_default();
        for fd in fds.filter_map(Result::ok) {
            let inode = std::fs::read_link(fd.path())
                .ok()
                .and_then(|link| socket_inode(&link.to_string_lossy()));
            if let Some(inode) = inode {
                holders.entry(inode).or_insert_with(|| (pid, comm.clone()));
            }
        }
    }
    holders
}

#[async_trait]
impl System for ProcSystem {
    async fn processes(&self) -> Result<Vec<api::Process>, NodeError> {
        let (proc, ticks, page) = (self.proc.clone(), self.clock_ticks, self.page_size);
        blocking("listing processes", move || {
            read_processes(&proc, ticks, page)
        })
        .await
    }

    async fn netstat(&self, filter: api::NetstatFilter) -> Result<Vec<api::Socket>, NodeError> {
        let proc = self.proc.clone();
        blocking("listing sockets", move || read_sockets(&proc, filter)).await
    }

    async fn memory(&self) -> Result<api::MemoryResult, NodeError> {
        let info = parse_meminfo(&Self::read_string(&self.proc.join("meminfo")).await?);
        let get = |name: &str| info.get(name).copied().unwrap_or(0);
        Ok(api::MemoryResult {
            metadata: None,
            total: get("MemTotal"),
            free: get("MemFree"),
            available: get("MemAvailable"),
            buffers: get("Buffers"),
            cached: get("Cached"),
            swap_total: get("SwapTotal"),
            swap_free: get("SwapFree"),
        })
    }

    async fn mounts(&self) -> Result<Vec<api::Mount>, NodeError> {
        let text = Self::read_string(&self.proc.join("self/mountinfo")).await?;
        let mounts: Vec<_> = text.lines().filter_map(parse_mountinfo_line).collect();
        // statvfs of a local filesystem can still wait on its disk, so it runs off the
        // async threads.
        blocking("reading mount sizes", move || {
            Ok(mounts
                .into_iter()
                .map(|m| {
                    let (size, available) = if asks_a_server(&m.filesystem) {
                        (0, 0)
                    } else {
                        filesystem_size(&m.target)
                    };
                    api::Mount {
                        source: m.source,
                        target: m.target,
                        filesystem: m.filesystem,
                        options: m.options,
                        size,
                        available,
                    }
                })
                .collect())
        })
        .await
    }

    async fn disks(&self) -> Result<Vec<api::Disk>, NodeError> {
        let sys = self.sys.clone();
        blocking("listing disks", move || read_disks(&sys)).await
    }

    async fn dmesg(&self, follow: bool, tail: Option<usize>) -> Result<ByteStream, NodeError> {
        let path = self.kmsg.clone();
        // The records that exist are read before this returns, so that "then follow"
        // starts at this call, not at whenever a thread got to it.
        let (file, backlog) = blocking("reading the kernel log", move || {
            let file = kmsg::open(&path).map_err(|e| {
                NodeError::Unavailable(format!(
                    "the kernel log {} cannot be read here: {e}",
                    path.display()
                ))
            })?;
            let backlog = read_backlog(&file, tail)?;
            Ok((file, backlog))
        })
        .await?;
        let backlog = futures::stream::iter(backlog.into_iter().map(|l| Ok(Bytes::from(l))));
        if !follow {
            return Ok(backlog.boxed());
        }
        // Followed by a task, not on a blocking thread: a thread held for each
        // follower's whole life would let readers exhaust the blocking pool that file
        // reads and listings need.
        let follow = kmsg::Follow::new(file)
            .map_err(|e| NodeError::io(format!("following {}", self.kmsg.display()), e))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(follow_kmsg(follow, tx));
        Ok(backlog.chain(ReceiverStream::new(rx)).boxed())
    }
}

/// Filesystems whose statvfs asks a server or a user-space daemon. On a hung one it never
/// returns, and each Mounts call would leave one more blocking thread waiting on it, so
/// their sizes are not asked for and read as zero (unknown).
fn asks_a_server(filesystem: &str) -> bool {
    const REMOTE: &[&str] = &[
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "9p",
        "afs",
        "lustre",
        "fuse",
        "fuseblk",
    ];
    REMOTE.contains(&filesystem) || filesystem.starts_with("fuse.")
}

/// Size and available bytes of the filesystem at `target`; zeros when it reports none
/// (or cannot be asked: another mount namespace's path, a permission).
// c_ulong and fsblkcnt_t are u64 here but narrower on 32-bit targets.
#[allow(clippy::useless_conversion)]
fn filesystem_size(target: &str) -> (u64, u64) {
    nix::sys::statvfs::statvfs(target)
        .map(|s| {
            let unit = u64::from(s.fragment_size());
            (
                u64::from(s.blocks()).saturating_mul(unit),
                u64::from(s.blocks_available()).saturating_mul(unit),
            )
        })
        .unwrap_or((0, 0))
}

/// The last `tail` records that exist now (`None`: all), as lines.
fn read_backlog(file: &std::fs::File, tail: Option<usize>) -> Result<VecDeque<String>, NodeError> {
    let mut buf = vec![0u8; kmsg::RECORD_MAX];
    let mut backlog = VecDeque::new();
    while let Some(record) =
        kmsg::read_record(file, &mut buf).map_err(|e| NodeError::io("reading /dev/kmsg", e))?
    {
        backlog.extend(parse_kmsg_record(&record).map(|r| r.line()));
        if tail.is_some_and(|t| backlog.len() > t) {
            backlog.pop_front();
        }
    }
    Ok(backlog)
}

/// Sends new records as the kernel logs them until the receiver is dropped; waits for
/// them on the reactor.
async fn follow_kmsg(mut follow: kmsg::Follow, tx: mpsc::Sender<Result<Bytes, NodeError>>) {
    loop {
        let record = tokio::select! {
            record = follow.next() => record,
            () = tx.closed() => return,
        };
        match record {
            Ok(record) => {
                let Some(record) = parse_kmsg_record(&record) else {
                    continue;
                };
                if tx.send(Ok(Bytes::from(record.line()))).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(NodeError::io("reading /dev/kmsg", e))).await;
                return;
            }
        }
    }
}
