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
    /// 16 hex digits from the OS random generator, made with the file: part of every object
    /// id (`incremental:<table>:<epoch>:<batch>`...). A file lost or deleted starts numbering
    /// at 1 again under a new epoch, so the receiver never takes a new batch for one it
    /// already applied. Empty only in a file written before epochs (one is made then).
    #[serde(default)]
    pub epoch: String,
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

    /// Reads the state (absent: nothing synced yet; a new epoch is made and written at once).
    /// A damaged file is an error naming it.
    pub fn open(pipe_state: &Path) -> io::Result<Self> {
        let path = pipe_state.join(Self::FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not a valid tables state ({e}); restore it from a backup if you can. Deleting it makes every table read afresh under a new epoch: snapshot tables and every partition are sent again whole, incremental tables again from their start_time (or their first row); the receiver applies them as new objects", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => TablesState::default(),
            Err(e) => return Err(e),
        };
        let mut file = Self { path, state };
        if file.state.epoch.is_empty() {
            file.state.epoch = new_epoch()?;
            file.save()?;
        }
        Ok(file)
    }

    /// This state's epoch (in every object id).
    pub fn epoch(&self) -> &str {
        &self.state.epoch
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

/// 16 hex digits from the OS random generator.
fn new_epoch() -> io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
        assert_eq!(again.epoch(), s.epoch(), "the epoch is kept");
        assert_eq!(s.epoch().len(), 16);
        assert!(s.epoch().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!dir.path().join(".tables.json.tmp").exists());

        fs::write(dir.path().join(StateFile::FILE), b"{\"tables\": 3").expect("damage");
        let e = StateFile::open(dir.path()).expect_err("damaged");
        assert!(
            e.to_string()
                .contains("tables.json: not a valid tables state"),
            "{e}"
        );
        assert!(e.to_string().contains("under a new epoch"), "{e}");
    }

    #[test]
    fn a_lost_state_file_starts_a_new_epoch() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = StateFile::open(dir.path()).expect("new");
        assert!(
            dir.path().join(StateFile::FILE).is_file(),
            "the epoch is written at once"
        );
        assert_eq!(
            StateFile::open(dir.path()).expect("again").epoch(),
            first.epoch()
        );
        fs::remove_file(dir.path().join(StateFile::FILE)).expect("lose it");
        let second = StateFile::open(dir.path()).expect("afresh");
        assert_ne!(second.epoch(), first.epoch());
        // A file written before epochs gets one, written back.
        fs::write(dir.path().join(StateFile::FILE), b"{\"tables\": {}}").expect("old");
        let old = StateFile::open(dir.path()).expect("old file");
        assert_eq!(old.epoch().len(), 16);
        assert_eq!(
            StateFile::open(dir.path()).expect("reread").epoch(),
            old.epoch()
        );
    }
}
