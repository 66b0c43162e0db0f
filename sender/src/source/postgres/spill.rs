//! The spill writer: one table object streamed to a file beside its final place, fsynced,
//! then renamed into place (and the folder fsynced). Memory is bounded by the copy buffer,
//! never by the table: rows go from `COPY ... TO STDOUT (FORMAT binary)` to the file as they
//! come, counted on the way by [`RowCounter`].

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use gapsync_protocol::table::{TableHeader, encode_header};

/// The copy buffer, and the file writer's buffer.
const BUF: usize = 256 << 10;

/// What was spilled.
#[derive(Debug, Clone, Copy)]
pub struct Spilled {
    pub rows: u64,
    pub bytes: u64,
}

/// Writes `header` then everything `rows` yields to `<dir>/<key>`, durably.
pub fn spill(
    dir: &Path,
    key: &str,
    header: &TableHeader,
    rows: &mut dyn Read,
) -> io::Result<Spilled> {
    let path = dir.join(key);
    let parent = path.parent().unwrap_or(dir).to_path_buf();
    if !parent.is_dir() {
        fs::create_dir_all(&parent)?;
        // The table's new folder must survive a crash with the file renamed into it: its
        // entry in `tables/` is made durable too.
        if let Some(up) = parent.parent() {
            fs::File::open(up)?.sync_all()?;
        }
    }
    let tmp = tmp_path(&path);
    let result = write_all(&tmp, header, rows);
    let spilled = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &path)?;
    fs::File::open(&parent)?.sync_all()?;
    Ok(spilled)
}

/// `.<name>.tmp` beside `path` (removed at start if a crash left it).
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("spill");
    path.with_file_name(format!(".{name}.tmp"))
}

fn write_all(tmp: &Path, header: &TableHeader, rows: &mut dyn Read) -> io::Result<Spilled> {
    let file = fs::File::create(tmp)?;
    let mut out = BufWriter::with_capacity(BUF, file);
    let head = encode_header(header).map_err(io::Error::other)?;
    out.write_all(&head)?;
    let mut counter = RowCounter::default();
    let mut buf = vec![0u8; BUF];
    let mut bytes = head.len() as u64;
    loop {
        let n = match rows.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        counter.feed(chunk);
        out.write_all(chunk)?;
        bytes += n as u64;
    }
    if !counter.complete() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the COPY stream ended before its trailer",
        ));
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(Spilled {
        rows: counter.rows,
        bytes,
    })
}

/// Counts the tuples of a binary COPY stream as it passes (PostgreSQL's "Binary Format":
/// an 11-byte signature, int32 flags, int32 extension length and extension, then per tuple
/// an int16 field count (-1: the trailer) and per field an int32 length (-1: NULL) and bytes).
#[derive(Debug)]
pub struct RowCounter {
    phase: Phase,
    skip: u64,
    acc: [u8; 4],
    have: usize,
    fields_left: u16,
    pub rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ExtLen,
    FieldCount,
    FieldLen,
    Done,
}

impl Default for RowCounter {
    fn default() -> Self {
        Self {
            phase: Phase::ExtLen,
            // The signature and the flags.
            skip: 15,
            acc: [0; 4],
            have: 0,
            fields_left: 0,
            rows: 0,
        }
    }
}

impl RowCounter {
    /// Whether the trailer was seen.
    pub fn complete(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.phase != Phase::Done {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.skip -= n as u64;
                data = data.get(n..).unwrap_or_default();
                continue;
            }
            let width = if self.phase == Phase::FieldCount {
                2
            } else {
                4
            };
            let n = (width - self.have).min(data.len());
            self.acc[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == width {
                self.have = 0;
                let v = if width == 2 {
                    i32::from(i16::from_be_bytes([self.acc[0], self.acc[1]]))
                } else {
                    i32::from_be_bytes(self.acc)
                };
                self.on_int(v);
            }
        }
    }

    fn on_int(&mut self, v: i32) {
        match self.phase {
            Phase::ExtLen => {
                self.skip = u64::try_from(v).unwrap_or(0);
                self.phase = Phase::FieldCount;
            }
            Phase::FieldCount if v < 0 => self.phase = Phase::Done,
            Phase::FieldCount => {
                self.rows += 1;
                self.fields_left = u16::try_from(v).unwrap_or(0);
                if self.fields_left > 0 {
                    self.phase = Phase::FieldLen;
                }
            }
            Phase::FieldLen => {
                self.skip = u64::try_from(v).unwrap_or(0);
                self.fields_left -= 1;
                if self.fields_left == 0 {
                    self.phase = Phase::FieldCount;
                }
            }
            Phase::Done => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gapsync_protocol::table::{
        Column, PREFIX_LEN, TableKind, VERSION, decode_header, header_len,
    };

    /// A binary COPY stream of `rows` tuples of (int4, text or NULL).
    fn stream(rows: u32) -> Vec<u8> {
        let mut s = b"PGCOPY\n\xff\r\n\0".to_vec();
        s.extend_from_slice(&0i32.to_be_bytes());
        s.extend_from_slice(&4i32.to_be_bytes());
        s.extend_from_slice(b"ext!");
        for i in 0..rows {
            s.extend_from_slice(&2i16.to_be_bytes());
            s.extend_from_slice(&4i32.to_be_bytes());
            s.extend_from_slice(&i.to_be_bytes());
            if i % 3 == 0 {
                s.extend_from_slice(&(-1i32).to_be_bytes());
            } else {
                s.extend_from_slice(&3i32.to_be_bytes());
                s.extend_from_slice(b"abc");
            }
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s
    }

    #[test]
    fn rows_are_counted_whatever_the_split() {
        let s = stream(5);
        for size in 1..=s.len() {
            let mut c = RowCounter::default();
            s.chunks(size).for_each(|ch| c.feed(ch));
            assert!(c.complete(), "chunks of {size}");
            assert_eq!(c.rows, 5, "chunks of {size}");
        }
        let mut c = RowCounter::default();
        c.feed(&s[..s.len() - 1]);
        assert!(!c.complete());
    }

    #[test]
    fn a_spill_file_is_header_then_stream_and_a_cut_stream_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let header = TableHeader {
            version: VERSION,
            kind: TableKind::Snapshot,
            table: "public.a".into(),
            id: "snapshot:public.a:1".into(),
            batch: 1,
            columns: vec![Column {
                name: "id".into(),
                type_name: "integer".into(),
                not_null: true,
            }],
            key: vec![],
            partition: None,
            watermark: None,
            read_at: "2026-12-03T10:00:00Z".into(),
        };
        let s = stream(1000);
        let got = spill(
            dir.path(),
            "public.a/snapshot-000000000001.gst",
            &header,
            &mut &s[..],
        )
        .expect("spilled");
        assert_eq!(got.rows, 1000);
        let bytes = fs::read(dir.path().join("public.a/snapshot-000000000001.gst")).expect("read");
        assert_eq!(got.bytes, bytes.len() as u64);
        let prefix: [u8; PREFIX_LEN] = bytes[..PREFIX_LEN].try_into().expect("prefix");
        let len = header_len(&prefix).expect("len") as usize;
        let json = &bytes[PREFIX_LEN..PREFIX_LEN + len];
        assert_eq!(decode_header(json).expect("header"), header);
        assert_eq!(&bytes[PREFIX_LEN + len..], &s[..]);

        let cut = &s[..s.len() - 10];
        let e = spill(
            dir.path(),
            "public.a/snapshot-000000000002.gst",
            &header,
            &mut &cut[..],
        )
        .expect_err("cut");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let left: Vec<_> = fs::read_dir(dir.path().join("public.a"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
