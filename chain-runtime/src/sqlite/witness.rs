//! The head witness: the audit chain's last committed head, in a file beside the database.
//! See the module docs of [`crate::sqlite`].

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// `<database>-audit-head`.
fn witness_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-audit-head");
    PathBuf::from(name)
}

/// The writer thread's handle on the witness file (opened on first use).
pub(crate) struct HeadWitness {
    path: PathBuf,
    file: Option<File>,
}

impl HeadWitness {
    pub(crate) fn new(db: &Path) -> Self {
        Self {
            path: witness_path(db),
            file: None,
        }
    }

    /// Overwrites the witness with `head` (one fixed-size write at offset 0). A failure is
    /// logged: the witness is a detection aid, the commit stands.
    pub(crate) fn record(&mut self, head: &(u64, String)) {
        if self.file.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.path)
            {
                Ok(file) => self.file = Some(file),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot open the audit head witness");
                    return;
                }
            }
        }
        let line = format!("{:020} {}\n", head.0, head.1);
        if let Some(file) = &self.file
            && let Err(e) = file.write_all_at(line.as_bytes(), 0)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the audit head witness");
        }
    }
}

/// The head `(seq, hash)` witnessed beside the database at `db`: `Ok(None)` when there is no witness file,
/// an error naming the problem when it exists but does not read as a head.
pub fn read_head_witness(db: &Path) -> Result<Option<(u64, String)>, String> {
    let path = witness_path(db);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read `{}`: {e}", path.display())),
    };
    let mut parts = text.split_whitespace();
    let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
    let hash = parts
        .next()
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    match (seq, hash) {
        (Some(seq), Some(hash)) => Ok(Some((seq, hash.to_owned()))),
        _ => Err(format!(
            "`{}` is not an audit head witness (`<seq> <hash>`)",
            path.display()
        )),
    }
}
