//! Object paths (TABLES-SPEC.md): the wire path of a table object is also its spill file's
//! path under `<state_dir>/sender/<pipe>/tables/`:
//!
//! ```text
//! public.events/incremental-000000000042.gst
//! public.assets/snapshot-000000000007.gst
//! public.measurements/partition-measurements_2026_11_01-0123456789ab.gst
//! ```
//!
//! At start, [`recorded`] decides for each spill file found whether the state file recorded
//! it (then it is reported again until delivered) or not (a crash came between the rename
//! and the state write: it was never reported; it is removed and read again).

use super::state::TablesState;

/// Hex digits of the fingerprint in a partition's object path.
pub const FINGERPRINT_CHARS: usize = 12;

/// What a spill file's path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectName {
    Incremental {
        table: String,
        batch: u64,
    },
    Snapshot {
        table: String,
        run: u64,
    },
    Partition {
        parent: String,
        child: String,
        fingerprint: String,
    },
}

impl ObjectName {
    /// The object's path (the pipe's key).
    pub fn key(&self) -> String {
        match self {
            ObjectName::Incremental { table, batch } => {
                format!("{table}/incremental-{batch:012}.gst")
            }
            ObjectName::Snapshot { table, run } => format!("{table}/snapshot-{run:012}.gst"),
            ObjectName::Partition {
                parent,
                child,
                fingerprint,
            } => {
                let fp = fingerprint.get(..FINGERPRINT_CHARS).unwrap_or(fingerprint);
                format!("{parent}/partition-{child}-{fp}.gst")
            }
        }
    }

    /// Reads a key back; `None` for anything else.
    pub fn parse(key: &str) -> Option<Self> {
        let (table, file) = key.split_once('/')?;
        let stem = file.strip_suffix(".gst")?;
        let table = table.to_owned();
        if let Some(n) = stem.strip_prefix("incremental-") {
            return Some(ObjectName::Incremental {
                table,
                batch: number(n)?,
            });
        }
        if let Some(n) = stem.strip_prefix("snapshot-") {
            return Some(ObjectName::Snapshot {
                table,
                run: number(n)?,
            });
        }
        let rest = stem.strip_prefix("partition-")?;
        let (child, fp) = rest.rsplit_once('-')?;
        let hex = fp.len() == FINGERPRINT_CHARS && fp.bytes().all(|b| b.is_ascii_hexdigit());
        (hex && !child.is_empty()).then(|| ObjectName::Partition {
            parent: table,
            child: child.to_owned(),
            fingerprint: fp.to_owned(),
        })
    }
}

fn number(text: &str) -> Option<u64> {
    (text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Whether the state records this object (its number is at or below the table's last one,
/// or its partition is recorded with this fingerprint).
pub fn recorded(state: &TablesState, name: &ObjectName) -> bool {
    match name {
        ObjectName::Incremental { table, batch: n } | ObjectName::Snapshot { table, run: n } => {
            state.tables.get(table).is_some_and(|t| *n <= t.batch)
        }
        ObjectName::Partition {
            parent,
            child,
            fingerprint,
        } => (state.tables.get(parent))
            .and_then(|t| t.partitions.get(child))
            .is_some_and(|fp| fp.starts_with(fingerprint.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::TableState;
    use super::*;

    #[test]
    fn paths_follow_the_spec_and_read_back() {
        let names = [
            (
                ObjectName::Incremental {
                    table: "public.events".into(),
                    batch: 42,
                },
                "public.events/incremental-000000000042.gst",
            ),
            (
                ObjectName::Snapshot {
                    table: "public.assets".into(),
                    run: 7,
                },
                "public.assets/snapshot-000000000007.gst",
            ),
        ];
        for (name, key) in names {
            assert_eq!(name.key(), key);
            assert_eq!(ObjectName::parse(key), Some(name));
        }
        let p = ObjectName::Partition {
            parent: "public.m".into(),
            child: "m-2026-11-01".into(),
            fingerprint: "0123456789abcdef0123".into(),
        };
        assert_eq!(p.key(), "public.m/partition-m-2026-11-01-0123456789ab.gst");
        assert_eq!(
            ObjectName::parse(&p.key()),
            Some(ObjectName::Partition {
                parent: "public.m".into(),
                child: "m-2026-11-01".into(),
                fingerprint: "0123456789ab".into(),
            })
        );
        for bad in [
            "public.events/incremental-42.gst",
            "public.events/.incremental-000000000042.gst.tmp",
            "public.m/partition-x-nothex.gst",
            "toplevel.gst",
        ] {
            assert_eq!(ObjectName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_what_the_state_records_is_recorded() {
        let mut state = TablesState::default();
        state.tables.insert(
            "public.events".into(),
            TableState {
                batch: 3,
                ..TableState::default()
            },
        );
        state.tables.insert(
            "public.m".into(),
            TableState {
                partitions: [("m1".to_owned(), "0123456789abcdef".to_owned())].into(),
                ..TableState::default()
            },
        );
        let inc = |batch| ObjectName::Incremental {
            table: "public.events".into(),
            batch,
        };
        assert!(recorded(&state, &inc(3)) && recorded(&state, &inc(1)));
        assert!(!recorded(&state, &inc(4)), "spilled, state not advanced");
        let part = |child: &str, fp: &str| ObjectName::Partition {
            parent: "public.m".into(),
            child: child.into(),
            fingerprint: fp.into(),
        };
        assert!(recorded(&state, &part("m1", "0123456789ab")));
        assert!(!recorded(&state, &part("m1", "ffffffffffff")));
        assert!(!recorded(&state, &part("m2", "0123456789ab")));
        let snap = ObjectName::Snapshot {
            table: "public.other".into(),
            run: 1,
        };
        assert!(!recorded(&state, &snap));
    }
}
