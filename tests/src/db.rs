//! Reading a SQLite database as it is on disk: the main file with its `-wal` and `-shm`
//! (recent pages live in the WAL while the database is open), for tests that search the
//! stored bytes for secrets.

use std::path::Path;

/// One file of a database as read from disk.
#[derive(Clone, Debug)]
pub struct DbFile {
    /// The file's path, as text.
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// The database at `db` and its `-wal` and `-shm` files, those that exist.
pub fn read_db_files(db: &Path) -> Vec<DbFile> {
    let mut out = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        if let Ok(bytes) = std::fs::read(&path) {
            out.push(DbFile {
                name: path.display().to_string(),
                bytes,
            });
        }
    }
    out
}
