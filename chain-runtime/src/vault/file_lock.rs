//! The SQLite store's cross-process refresh lock: an exclusive `flock` on a per-account file
//! beside the database, `<database>-locks/refresh-<hash>.lock` (the hash of principal and
//! connector, so no identifier appears in a file name).
//!
//! Why a file lock rather than a lease row in the database: the operating system releases it
//! the moment its holder dies (no expiry to wait out after a crash in the middle of a refresh,
//! no stale row to clean up), taking and releasing it costs no write transaction on the shared
//! SQLite writer, and every process that can share a SQLite file in WAL mode is on the same
//! machine, where `flock` reaches. Lock files are never deleted: removing a file another
//! process holds open would let a third lock a new file under the same name.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::store::{RefreshLock, StoreError};

/// The longest a caller waits for another process's refresh.
const WAIT: Duration = Duration::from_secs(60);

fn locks_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-locks");
    PathBuf::from(name)
}

/// Takes the refresh lock of (principal, connector) for the database at `db`, waiting (with
/// a growing pause up to 20 ms, at most [`WAIT`]) while another process holds it.
pub(super) async fn refresh_lock(
    db: &Path,
    principal_id: &str,
    connector: &str,
) -> Result<RefreshLock, StoreError> {
    let dir = locks_dir(db);
    std::fs::create_dir_all(&dir)
        .map_err(|e| StoreError::Backend(format!("cannot create `{}`: {e}", dir.display())))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(principal_id.as_bytes());
    hasher.update(b"\0");
    hasher.update(connector.as_bytes());
    let name = hasher.finalize().to_hex();
    let path = dir.join(format!("refresh-{}.lock", &name[..32]));
    let file: File = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open `{}`: {e}", path.display())))?;
    let deadline = Instant::now() + WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(RefreshLock::holding(file)),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::Backend(format!(
                    "cannot lock `{}`: {e}",
                    path.display()
                )));
            }
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Backend(format!(
                "another process held the refresh lock `{}` for more than {WAIT:?}",
                path.display()
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}
