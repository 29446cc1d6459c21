//! Files under allowed roots. Every path is resolved (symlinks, `..`) before it is checked
//! against the resolved roots, so no spelling of a path reaches outside them; what was
//! opened is checked again by the kernel's name for it, and a listing walks down from
//! the opened root by directory descriptors, one name at a time and never through a
//! symlink, so a directory swapped for a symlink while it runs cannot lead it outside.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use basalt_api::machine::v1 as api;
use bytes::BytesMut;
use futures::StreamExt;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

use crate::parts::{ByteStream, FileStream, Files, NodeError};

/// Size of the chunks a file is streamed in.
const CHUNK: usize = 64 * 1024;

/// Entries a listing may have ready before the walk waits for the reader.
const LIST_BUFFER: usize = 64;

/// Entries one blocking task describes before it hands them and the walk back: the walk
/// waits for a slow reader on the async side, holding no thread.
const WALK_BATCH: usize = 64;

/// Listings that may be walking the filesystem on blocking threads at once. A batch on a
/// hung filesystem under a root never returns; this caps the threads such batches take,
/// so they cannot exhaust the pool the rest of apid needs.
const WALKERS: usize = 8;

#[derive(Debug, Clone)]
pub struct LocalFiles {
    roots: Vec<PathBuf>,
    walkers: Arc<Semaphore>,
}

impl LocalFiles {
    /// Roots that do not exist (yet) are kept: they are resolved on each request.
    pub fn new(roots: Vec<PathBuf>) -> Self {
        LocalFiles {
            roots,
            walkers: Arc::new(Semaphore::new(WALKERS)),
        }
    }

    fn roots_text(&self) -> String {
        let roots: Vec<_> = self.roots.iter().map(|r| r.display().to_string()).collect();
        format!("[{}]", roots.join(", "))
    }

    fn denied(&self, path: &str) -> NodeError {
        NodeError::PermissionDenied(format!(
            "{path} is outside the allowed roots {}",
            self.roots_text()
        ))
    }

    /// The roots with symlinks resolved; roots that do not exist are left out.
    async fn resolved_roots(&self) -> Vec<PathBuf> {
        let mut roots = Vec::with_capacity(self.roots.len());
        for root in &self.roots {
            if let Ok(root) = tokio::fs::canonicalize(root).await {
                roots.push(root);
            }
        }
        roots
    }

    /// The resolved path, if it lies under a resolved root, and that root.
    async fn resolve(&self, path: &str) -> Result<(PathBuf, PathBuf), NodeError> {
        if !Path::new(path).is_absolute() {
            return Err(NodeError::InvalidArgument(format!(
                "{path:?} is not an absolute path"
            )));
        }
        let roots = self.resolved_roots().await;
        let root_of = |p: &Path| roots.iter().find(|r| p.starts_with(r)).cloned();
        match tokio::fs::canonicalize(path).await {
            Ok(resolved) => match root_of(&resolved) {
                Some(root) => Ok((resolved, root)),
                None => Err(self.denied(path)),
            },
            // A path that cannot be resolved is only reported as missing when it would
            // be inside a root: outside them, not even its existence is told.
            Err(e) if root_of(&lexically_normal(Path::new(path))).is_some() => {
                Err(NodeError::io(path, e))
            }
            Err(_) => Err(self.denied(path)),
        }
    }

    /// Whether the file opened for `path` is under `root`, from `actual`, the kernel's
    /// name of it (read from `opened`). Fails closed: when that name cannot be read,
    /// where the file lies cannot be told, and it is not served.
    fn check_opened(
        &self,
        path: &str,
        root: &Path,
        opened: &Path,
        actual: std::io::Result<PathBuf>,
    ) -> Result<(), NodeError> {
        match actual {
            Ok(actual) if actual.starts_with(root) => Ok(()),
            Ok(_) => Err(self.denied(path)),
            Err(e) => Err(NodeError::PermissionDenied(format!(
                "{path} is not read: where the opened file lies cannot be checked \
                 (reading {}: {e})",
                opened.display()
            ))),
        }
    }
}

/// `path` with `.` and `..` applied to the text alone; for telling whether a path that
/// does not exist would be under a root.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[async_trait]
impl Files for LocalFiles {
    async fn read(&self, path: &str) -> Result<ByteStream, NodeError> {
        let (resolved, root) = self.resolve(path).await?;
        // Opened without following a last-moment symlink and without blocking on a FIFO
        // or device swapped in since the check; what was opened is checked again below.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&resolved)
            .await
            .map_err(|e| NodeError::io(path, e))?;
        let metadata = file.metadata().await.map_err(|e| NodeError::io(path, e))?;
        if !metadata.is_file() {
            let what = if metadata.is_dir() {
                "a directory"
            } else {
                "not a regular file"
            };
            return Err(NodeError::InvalidArgument(format!("{path} is {what}")));
        }
        // The kernel's name of the open file closes the gap between resolving the path
        // and opening it (a directory on the way replaced by a symlink).
        let opened = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let actual = tokio::fs::read_link(&opened).await;
        self.check_opened(path, &root, &opened, actual)?;
        let path = path.to_string();
        Ok(futures::stream::unfold(Some(file), move |file| {
            let path = path.clone();
            async move {
                let mut file = file?;
                let mut chunk = BytesMut::with_capacity(CHUNK);
                match file.read_buf(&mut chunk).await {
                    Ok(0) => None,
                    Ok(_) => Some((Ok(chunk.freeze()), Some(file))),
                    // The error ends the stream: `None` as the next state.
                    Err(e) => Some((Err(NodeError::io(path, e)), None)),
                }
            }
        })
        .boxed())
    }

    async fn list(
        &self,
        root: &str,
        recurse: bool,
        max_depth: u32,
    ) -> Result<FileStream, NodeError> {
        let (resolved, allowed) = self.resolve(root).await?;
        // Opened without following a last-moment symlink, and checked again by the
        // kernel's name of what was opened, as for a read; the walk goes on from it.
        let opened_root = open_root(&resolved).map_err(|e| NodeError::io(root, e))?;
        let proc_name = PathBuf::from(format!("/proc/self/fd/{}", opened_root.as_raw_fd()));
        let actual = tokio::fs::read_link(&proc_name).await;
        self.check_opened(root, &allowed, &proc_name, actual)?;
        let max_depth = match (recurse, max_depth) {
            (false, _) => Some(1),
            (true, 0) => None,
            (true, n) => Some(n),
        };
        let (tx, rx) = mpsc::channel(LIST_BUFFER);
        tokio::spawn(send_walk(
            Walk::new(resolved, opened_root, max_depth),
            self.walkers.clone(),
            tx,
        ));
        Ok(ReceiverStream::new(rx).boxed())
    }
}

/// The listed root: a directory to walk, or any other file to describe (opened as a
/// path only, which neither reads it nor blocks on a FIFO).
fn open_root(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // A directory is walked: it needs a descriptor that can read entries.
    match fstatat(&fd, "", AtFlags::AT_EMPTY_PATH) {
        Ok(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
            Ok(openat(
                &fd,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?)
        }
        _ => Ok(fd),
    }
}

/// Walks in batches on blocking threads, sending each batch on the async side, until the
/// walk ends or the receiver is dropped.
async fn send_walk(
    mut walk: Walk,
    walkers: Arc<Semaphore>,
    tx: mpsc::Sender<Result<api::FileInfo, NodeError>>,
) {
    let what = format!("listing {}", walk.root.display());
    loop {
        // The semaphore is never closed; should it be, the listing just ends.
        let Ok(permit) = walkers.clone().acquire_owned().await else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let batch = walk.next_batch();
            (walk, batch)
        })
        .await;
        let batch = match done {
            Ok((rest, batch)) => {
                walk = rest;
                batch
            }
            Err(e) => {
                let _ = tx
                    .send(Err(NodeError::Unavailable(format!("{what}: {e}"))))
                    .await;
                return;
            }
        };
        if batch.is_empty() {
            return;
        }
        for entry in batch {
            if tx.send(Ok(entry)).await.is_err() {
                return;
            }
        }
    }
}

/// The name of `name` inside `dir` as listed: relative to the listed root.
fn relative(dir: &Path, name: &OsStr) -> String {
    let path = dir.join(name);
    if path.as_os_str().is_empty() {
        ".".to_string()
    } else {
        path.to_string_lossy().into_owned()
    }
}

/// Describes the entry `name` of the directory open as `dir` (an empty `name`: what
/// `dir` itself is open as), without following it if it is a symlink. `shown` is its path as
/// listed: the listed root joined with `relative_name`.
fn info(dir: &OwnedFd, name: &OsStr, shown: &Path, relative_name: String) -> api::FileInfo {
    let mut out = api::FileInfo {
        name: shown.to_string_lossy().into_owned(),
        relative_name,
        ..Default::default()
    };
    let flags = if name.is_empty() {
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW
    } else {
        AtFlags::AT_SYMLINK_NOFOLLOW
    };
    match fstatat(dir, name, flags) {
        Ok(stat) => {
            let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
            out.size = u64::try_from(stat.st_size).unwrap_or(0);
            out.mode = stat.st_mode;
            out.is_dir = kind == SFlag::S_IFDIR;
            out.modified = Some(basalt_resource::proto::Timestamp {
                seconds: stat.st_mtime,
                nanos: i32::try_from(stat.st_mtime_nsec).unwrap_or(0),
            });
            if kind == SFlag::S_IFLNK {
                match readlinkat(dir, name) {
                    Ok(target) => out.link = target.to_string_lossy().into_owned(),
                    Err(e) => out.error = format!("reading the link: {e}"),
                }
            }
        }
        Err(e) => out.error = e.to_string(),
    }
    out
}

/// Opens the directory `name` inside `dir` for walking, refusing a symlink (or anything
/// else) put in its place since it was looked at: a walk descends one name at a time
/// from the descriptor of the level above, so it cannot leave the listed root.
fn open_below(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// One open directory of a walk.
struct Level {
    /// For looking at and opening its entries.
    fd: OwnedFd,
    /// Reads its entries (a second descriptor of the same directory).
    entries: nix::dir::OwningIter,
    /// Relative to the listed root ("" for the root).
    relative: PathBuf,
    /// The depth of its entries.
    depth: u32,
}

impl Level {
    fn open(fd: OwnedFd, relative: PathBuf, depth: u32) -> nix::Result<Level> {
        let entries = nix::dir::Dir::from_fd(fd.try_clone().map_err(|e| {
            nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO))
        })?)?
        .into_iter();
        Ok(Level {
            fd,
            entries,
            relative,
            depth,
        })
    }
}

/// A depth-first walk of a root through directory descriptors; memory grows with the
/// depth only (one open directory per level). Symlinks are listed, never followed.
struct Walk {
    root: PathBuf,
    max_depth: Option<u32>,
    /// The root, opened and checked to be under its allowed root, once the walk starts.
    opened_root: Option<OwnedFd>,
    stack: Vec<Level>,
}

impl Walk {
    fn new(root: PathBuf, opened_root: OwnedFd, max_depth: Option<u32>) -> Self {
        Walk {
            root,
            max_depth,
            opened_root: Some(opened_root),
            stack: Vec::new(),
        }
    }

    fn descends(&self, depth: u32) -> bool {
        self.max_depth.is_none_or(|max| depth < max)
    }

    /// Up to [`WALK_BATCH`] next entries; empty when the walk is over. Blocks on the
    /// filesystem.
    fn next_batch(&mut self) -> Vec<api::FileInfo> {
        let mut batch = Vec::new();
        if let Some(root) = self.opened_root.take() {
            let mut entry = info(&root, OsStr::new(""), &self.root, ".".to_string());
            if entry.is_dir && entry.error.is_empty() && self.descends(0) {
                match Level::open(root, PathBuf::new(), 1) {
                    Ok(level) => self.stack.push(level),
                    Err(e) => entry.error = format!("reading the directory: {e}"),
                }
            }
            batch.push(entry);
        }
        while batch.len() < WALK_BATCH {
            let Some(level) = self.stack.last_mut() else {
                break;
            };
            let name = match level.entries.next() {
                None => {
                    self.stack.pop();
                    continue;
                }
                Some(Err(e)) => {
                    batch.push(api::FileInfo {
                        error: format!("reading a directory entry: {e}"),
                        ..Default::default()
                    });
                    continue;
                }
                Some(Ok(entry)) => OsStr::from_bytes(entry.file_name().to_bytes()).to_owned(),
            };
            if name == "." || name == ".." {
                continue;
            }
            let relative_name = relative(&level.relative, &name);
            let shown = self.root.join(&relative_name);
            let depth = level.depth;
            let descends = self.max_depth.is_none_or(|max| depth < max);
            let mut entry = info(&level.fd, &name, &shown, relative_name.clone());
            if entry.is_dir && entry.error.is_empty() && descends {
                let opened = open_below(&level.fd, &name)
                    .and_then(|fd| Level::open(fd, PathBuf::from(&relative_name), depth + 1));
                match opened {
                    Ok(below) => self.stack.push(below),
                    Err(e) => entry.error = format!("reading the directory: {e}"),
                }
            }
            batch.push(entry);
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the opened file lies is checked from its /proc/self/fd link; an unreadable
    /// link (no /proc, say) denies the read instead of letting it through unchecked.
    #[test]
    fn an_opened_file_that_cannot_be_placed_is_denied() {
        let files = LocalFiles::new(vec![PathBuf::from("/srv")]);
        let (root, opened) = (Path::new("/srv"), Path::new("/proc/self/fd/7"));
        let check = |actual| files.check_opened("/srv/a.txt", root, opened, actual);

        assert!(check(Ok(PathBuf::from("/srv/a.txt"))).is_ok());
        let outside = check(Ok(PathBuf::from("/etc/shadow"))).unwrap_err();
        assert!(
            matches!(outside, NodeError::PermissionDenied(_)),
            "{outside}"
        );

        let unreadable = std::io::Error::from(std::io::ErrorKind::NotFound);
        let err = check(Err(unreadable)).unwrap_err();
        assert!(matches!(err, NodeError::PermissionDenied(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("/srv/a.txt") && text.contains("/proc/self/fd/7"),
            "{text}"
        );
    }
}
