//! Writing files that hold secrets.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{random_bytes, PkiError};

/// Writes a file that holds secrets (a bundle, a config with keys, a client config) with
/// mode 0600, atomically: it goes to a new file in the same directory first (0600 from
/// its creation, so the secrets are never readable by others, whatever the umask), is
/// synced, and is renamed over `path`. An existing file at `path` is replaced.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let io = |op: &'static str, at: &Path| {
        let at = at.to_path_buf();
        move |source| PkiError::Io {
            op,
            path: at,
            source,
        }
    };
    let file_name = path.file_name().ok_or_else(|| PkiError::Io {
        op: "write",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let suffix = u64::from_le_bytes(random_bytes::<8>()?);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{suffix:016x}.tmp"));
    let tmp = dir.join(tmp_name);

    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        // The mode above is filtered by the umask; this is not.
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(io("chmod", &tmp))?;
        file.write_all(contents).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("rename into place", path))
    })();
    if written.is_err() {
        // Best effort: the error being returned is the one that matters.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}
