//! The postgres source's durable state, `<state_dir>/sender/<pipe>/tables.json`: per table,
//! the last batch (incremental) or run (snapshot) number spilled, the watermark reached, and
//! the partitions synced with their fingerprints. Written atomically (a temporary file,
//! fsync, rename, fsync of the folder), and only after the spill file it records is durably
//! in place: a spill file whose number is not recorded here was never reported, and is
//! removed and read again at the next start ([`super::objects`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What is recorded for one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableState {
    /// The last batch (incremental) or run (snapshot) number spilled; 0: none yet.
    #[serde(default)]
    pub batch: u64,
    /// incremental: the watermark reached (the `to` of the last batch), as PostgreSQL's text.
    #[serde(default)]
    pub watermark: Option<String>,
    /// incremental: the bytes per row of the last batch (to size the next one).
    #[serde(default)]
    pub bytes_per_row: Option<u64>,
    /// partitions: each synced child partition (its name) and the fingerprint it had.
    #[serde(default)]
    pub partitions: BTreeMap<String, String>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesState {
    #[serde(default)]
    pub tables: BTreeMap<String, TableState>,
}

/// The state and where it is kept.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    pub state: TablesState,
}

impl StateFile {
    /// The file's name in the pipe's state folder.
    pub const FILE: &'static str = "tables.json";

    /// Reads the state (absent: nothing synced yet). A damaged file is an error naming it.
    pub fn open(pipe_state: &Path) -> io::Result<Self> {
        let path = pipe_state.join(Self::FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not a valid tables state ({e}); restore it, or delete it to sync every table afresh", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => TablesState::default(),
            Err(e) => return Err(e),
        };
        Ok(Self { path, state })
    }

    /// One table's record (a new one is empty).
    pub fn table(&self, name: &str) -> TableState {
        self.state.tables.get(name).cloned().unwrap_or_default()
    }

    /// Replaces one table's record and writes the file atomically.
    pub fn set(&mut self, name: &str, t: TableState) -> io::Result<()> {
        let old = self.state.tables.insert(name.to_owned(), t);
        self.save().inspect_err(|_| {
            // Not on disk: the memory says what the disk says.
            match old {
                Some(o) => self.state.tables.insert(name.to_owned(), o),
                None => self.state.tables.remove(name),
            };
        })
    }

    fn save(&self) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.tmp", Self::FILE));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&self.state).map_err(io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_reopen_and_a_damaged_file_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = StateFile::open(dir.path()).expect("empty");
        assert_eq!(s.table("public.events"), TableState::default());
        let t = TableState {
            batch: 42,
            watermark: Some("2026-12-03 10:00:00+00".into()),
            bytes_per_row: Some(80),
            partitions: [("m_2026_11_01".to_owned(), "ab12".to_owned())].into(),
        };
        s.set("public.events", t.clone()).expect("saved");
        let again = StateFile::open(dir.path()).expect("reopened");
        assert_eq!(again.table("public.events"), t);
        assert!(!dir.path().join(".tables.json.tmp").exists());

        fs::write(dir.path().join(StateFile::FILE), b"{\"tables\": 3").expect("damage");
        let e = StateFile::open(dir.path()).expect_err("damaged");
        assert!(
            e.to_string()
                .contains("tables.json: not a valid tables state"),
            "{e}"
        );
    }
}
