//! Files under allowed roots. Every path is resolved (symlinks, `..`) before it is checked
//! against the resolved roots, so no spelling of a path reaches outside them.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use basalt_api::machine::v1 as api;
use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::node::{ByteStream, FileStream, Files, NodeError};

/// Size of the chunks a file is streamed in.
const CHUNK: usize = 64 * 1024;

/// Entries a listing may have ready before the walk waits for the reader.
const LIST_BUFFER: usize = 64;

#[derive(Debug, Clone)]
pub struct LocalFiles {
    roots: Vec<PathBuf>,
}

impl LocalFiles {
    /// Roots that do not exist (yet) are kept: they are resolved on each request.
    pub fn new(roots: Vec<PathBuf>) -> Self {
        LocalFiles { roots }
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
        let opened = format!("/proc/self/fd/{}", file.as_raw_fd());
        if let Ok(actual) = tokio::fs::read_link(&opened).await {
            if !actual.starts_with(&root) {
                return Err(self.denied(path));
            }
        }
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
        let (resolved, _) = self.resolve(root).await?;
        let max_depth = match (recurse, max_depth) {
            (false, _) => Some(1),
            (true, 0) => None,
            (true, n) => Some(n),
        };
        let (tx, rx) = mpsc::channel(LIST_BUFFER);
        tokio::task::spawn_blocking(move || walk(&resolved, max_depth, &tx));
        Ok(ReceiverStream::new(rx).boxed())
    }

    fn roots(&self) -> Vec<PathBuf> {
        self.roots.clone()
    }
}

/// Describes one entry without following it if it is a symlink.
fn info(path: &Path, root: &Path) -> api::FileInfo {
    let relative_name = match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_string(),
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => path.to_string_lossy().into_owned(),
    };
    let mut out = api::FileInfo {
        name: path.to_string_lossy().into_owned(),
        relative_name,
        ..Default::default()
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            out.size = m.len();
            out.mode = m.mode();
            out.is_dir = m.is_dir();
            out.modified = Some(basalt_resource::proto::Timestamp {
                seconds: m.mtime(),
                nanos: i32::try_from(m.mtime_nsec()).unwrap_or(0),
            });
            if m.file_type().is_symlink() {
                match std::fs::read_link(path) {
                    Ok(target) => out.link = target.to_string_lossy().into_owned(),
                    Err(e) => out.error = format!("reading the link: {e}"),
                }
            }
        }
        Err(e) => out.error = e.to_string(),
    }
    out
}

/// Walks `root` depth first on a blocking thread, sending entries as they are found;
/// memory grows with the depth only (one open directory per level). Symlinks are listed,
/// never followed. Ends early when the receiver is dropped.
fn walk(root: &Path, max_depth: Option<u32>, tx: &mpsc::Sender<Result<api::FileInfo, NodeError>>) {
    // Open directories with the depth of their entries; the root itself is at depth 0.
    let mut stack: Vec<(std::fs::ReadDir, u32)> = Vec::new();
    if !visit(root, root, 0, max_depth, &mut stack, tx) {
        return;
    }
    while let Some((dir, depth)) = stack.last_mut() {
        let depth = *depth;
        let sent = match dir.next() {
            None => {
                stack.pop();
                true
            }
            Some(Ok(entry)) => visit(&entry.path(), root, depth, max_depth, &mut stack, tx),
            Some(Err(e)) => {
                let failed = api::FileInfo {
                    error: format!("reading a directory entry: {e}"),
                    ..Default::default()
                };
                tx.blocking_send(Ok(failed)).is_ok()
            }
        };
        if !sent {
            return;
        }
    }
}

/// Sends the entry at `path`, and opens it to be walked next when it is a directory above
/// the depth limit. False when the receiver is gone.
fn visit(
    path: &Path,
    root: &Path,
    depth: u32,
    max_depth: Option<u32>,
    stack: &mut Vec<(std::fs::ReadDir, u32)>,
    tx: &mpsc::Sender<Result<api::FileInfo, NodeError>>,
) -> bool {
    let mut entry = info(path, root);
    let mut opened = None;
    if entry.is_dir && entry.error.is_empty() && max_depth.is_none_or(|max| depth < max) {
        // A directory replaced by a symlink since it was looked at would be followed by
        // read_dir: it is resolved again first. (Only openat2's RESOLVE_BENEATH would
        // close the last gap.)
        let dir = if std::fs::canonicalize(path).is_ok_and(|p| p.starts_with(root)) {
            std::fs::read_dir(path)
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "it no longer resolves to a place inside the listed root",
            ))
        };
        match dir {
            Ok(dir) => opened = Some((dir, depth + 1)),
            Err(e) => entry.error = format!("reading the directory: {e}"),
        }
    }
    if tx.blocking_send(Ok(entry)).is_err() {
        return false;
    }
    stack.extend(opened);
    true
}
