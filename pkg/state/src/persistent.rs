//! Crash-safe storage of persistent namespaces in one redb file.
//!
//! redb commits a write transaction atomically and durably (copy-on-write pages, a
//! checksummed commit slot, fsync), so a node that loses power mid-write finds either the
//! old or the new resource when it comes back, never a torn one. One write is one
//! transaction.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use basalt_resource::{AnyResource, Registry, ResourceKey};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::StateError;

const RESOURCES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("resources");

/// What opening persistent state found.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub loaded: usize,
    /// Records left on disk but not loaded, each with the reason: an unknown type (written
    /// by a newer version), a namespace no longer persistent, or an undecodable record.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct PersistentStore {
    /// `None` before the file exists (the first write makes it) and after a write
    /// failed: redb refuses every later write once an I/O error occurred ("close and
    /// re-open the database"), so the next write opens it again, and a full disk that has
    /// room again takes writes again without a restart.
    db: Arc<Mutex<Option<redb::Database>>>,
    path: PathBuf,
    /// `<file>.lock`, locked while the store is open: one process at a time, also before
    /// the database file exists.
    _lock: Arc<std::fs::File>,
}

/// Locks `<path>.lock` for this process, or says who holds it.
fn lock(path: &Path) -> Result<std::fs::File, String> {
    let mut name = path.as_os_str().to_os_string();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(format!(
            "in use: {} is locked (by another process, or already open in this one)",
            lock_path.display()
        )),
        Err(e) => Err(format!("cannot lock {}: {e}", lock_path.display())),
    }
}

fn db_key(key: &ResourceKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.namespace.len() + key.type_name.len() + key.id.len() + 2);
    k.extend_from_slice(key.namespace.as_bytes());
    k.push(0);
    k.extend_from_slice(key.type_name.as_bytes());
    k.push(0);
    k.extend_from_slice(key.id.as_bytes());
    k
}

/// Makes a new database under a temporary name and renames it into place once redb has
/// written its header and the table durably: a crash while creating the file leaves no
/// half-written database behind to be taken for a corrupt one at the next start.
fn create_new(path: &Path) -> Result<(), String> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let fresh = path.with_file_name(name);
    match std::fs::remove_file(&fresh) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove {}: {e}", fresh.display())),
    }
    {
        let db = redb::Database::create(&fresh).map_err(|e| e.to_string())?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(RESOURCES).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
    }
    // Never over a file that appeared meanwhile: that one may hold resources.
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        &fresh,
        rustix::fs::CWD,
        path,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(|e| format!("cannot rename {} into place: {e}", fresh.display()))?;
    // The rename itself is durable only once the directory is synced.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(Path::new(".")))
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync the directory of {}: {e}", path.display()))
}

impl PersistentStore {
    fn error(&self, reason: impl ToString) -> StateError {
        StateError::Persistence {
            path: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Opens the file and decodes every record in the given namespaces. A file that does
    /// not exist yet is made by the first write: a node in maintenance mode writes
    /// nothing, and its boot does not wait on making a database (under QEMU without KVM,
    /// ~0.15 s of syncs).
    pub fn open(
        path: &Path,
        registry: &Registry,
        namespaces: &[String],
    ) -> Result<(Self, Vec<AnyResource>, LoadReport), StateError> {
        let store = PersistentStore {
            db: Arc::new(Mutex::new(None)),
            path: path.to_path_buf(),
            _lock: Arc::new(lock(path).map_err(|reason| StateError::Persistence {
                path: path.display().to_string(),
                reason,
            })?),
        };
        let mut report = LoadReport::default();
        // Only a file that is certainly not there is made anew: one that cannot be
        // looked at is an error, not an empty state.
        if !path.try_exists().map_err(|e| store.error(e))? {
            return Ok((store, Vec::new(), report));
        }
        let db = redb::Database::create(path).map_err(|e| {
            use redb::{DatabaseError, StorageError};
            let damaged = match &e {
                DatabaseError::UpgradeRequired(_)
                | DatabaseError::Storage(StorageError::Corrupted(_)) => true,
                DatabaseError::Storage(StorageError::Io(io)) => matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ),
                _ => false,
            };
            if damaged {
                StateError::Corrupt {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            } else {
                store.error(e)
            }
        })?;

        let mut resources = Vec::new();
        let txn = db.begin_read().map_err(|e| store.error(e))?;
        match txn.open_table(RESOURCES) {
            Ok(table) => {
                for entry in table.iter().map_err(|e| store.error(e))? {
                    let (key, value) = entry.map_err(|e| store.error(e))?;
                    let key_text = String::from_utf8_lossy(key.value()).replace('\0', "/");
                    match decode(registry, key.value(), value.value()) {
                        Ok(res) if namespaces.contains(&res.metadata.namespace) => {
                            report.loaded += 1;
                            resources.push(res);
                        }
                        Ok(res) => report.skipped.push(format!(
                            "{key_text}: namespace {:?} is not persistent",
                            res.metadata.namespace
                        )),
                        Err(reason) => report.skipped.push(format!("{key_text}: {reason}")),
                    }
                }
            }
            // A file from before the table was made with it: the first write makes it.
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(store.error(e)),
        }
        for skipped in &report.skipped {
            tracing::warn!(path = %path.display(), record = %skipped, "persistent record not loaded");
        }
        drop(txn);
        *store.db.lock().unwrap_or_else(PoisonError::into_inner) = Some(db);
        Ok((store, resources, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one write transaction; a failed one drops the database, to be opened again
    /// by the next write.
    fn write(
        &self,
        change: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), StateError> {
        let mut slot = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        let db = match slot.take() {
            Some(db) => db,
            None if !self.path.try_exists().map_err(|e| self.error(e))? => {
                create_new(&self.path).map_err(|e| self.error(e))?;
                redb::Database::create(&self.path).map_err(|e| self.error(e))?
            }
            None => {
                tracing::info!(path = %self.path.display(), "opening the persistent state again after a failed write");
                redb::Database::create(&self.path).map_err(|e| self.error(e))?
            }
        };
        let written = (|| {
            let txn = db.begin_write().map_err(|e| self.error(e))?;
            {
                let mut table = txn.open_table(RESOURCES).map_err(|e| self.error(e))?;
                change(&mut table).map_err(|e| self.error(e))?;
            }
            txn.commit().map_err(|e| self.error(e))
        })();
        match written {
            Ok(()) => *slot = Some(db),
            Err(ref error) => {
                tracing::warn!(path = %self.path.display(), %error, "a persistent write failed");
            }
        }
        written
    }

    pub fn put(&self, resource: &AnyResource) -> Result<(), StateError> {
        let bytes = resource.to_proto()?.encode_to_vec();
        let key = db_key(&resource.metadata.key());
        self.write(|table| table.insert(key.as_slice(), bytes.as_slice()).map(|_| ()))
    }

    pub fn delete(&self, key: &ResourceKey) -> Result<(), StateError> {
        let key = db_key(key);
        self.write(|table| table.remove(key.as_slice()).map(|_| ()))
    }
}

fn decode(registry: &Registry, key: &[u8], value: &[u8]) -> Result<AnyResource, String> {
    let message = basalt_resource::proto::Resource::decode(value).map_err(|e| e.to_string())?;
    let resource = registry.decode_proto(message).map_err(|e| e.to_string())?;
    if db_key(&resource.metadata.key()) != key {
        return Err(format!(
            "the record holds resource {}, not the one its key names",
            resource.metadata.key()
        ));
    }
    Ok(resource)
}
