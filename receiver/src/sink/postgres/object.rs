//! Reading a table object file (PROTOCOL.md section 9): its prefix and header, checked against
//! the limits before anything is allocated, and the bounds of its binary COPY stream, checked
//! (signature and trailer) before a row is sent to the database.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use gapsync_protocol::table::{
    MAGIC, PREFIX_LEN, TableError, TableHeader, decode_header, header_len,
};

/// The signature that starts every binary COPY stream.
const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags, header extension length, trailer: the smallest stream.
const COPY_MIN: u64 = 11 + 4 + 4 + 2;

/// An object file, open, positioned at its COPY stream.
#[derive(Debug)]
pub struct ObjectFile {
    pub header: TableHeader,
    pub file: File,
    /// Bytes of the COPY stream (from the current position to the end of the file).
    pub copy_len: u64,
}

/// Opens `path` and reads its header. The error says what is wrong with the file (it does not
/// name the file: the caller does).
pub fn open(path: &Path) -> Result<ObjectFile, ObjectError> {
    let mut file = File::open(path).map_err(ObjectError::Io)?;
    let size = file.metadata().map_err(ObjectError::Io)?.len();
    let mut prefix = [0u8; PREFIX_LEN];
    let n = (size as usize).min(PREFIX_LEN);
    read_exact(&mut file, &mut prefix[..n], "its 12-byte prefix")?;
    if !prefix[..n.min(8)].iter().zip(MAGIC).all(|(a, b)| a == b) {
        return Err(ObjectError::Bad(TableError::Magic.to_string()));
    }
    if n < PREFIX_LEN {
        return Err(ObjectError::Bad(
            "truncated: the file ends inside its 12-byte prefix".into(),
        ));
    }
    let len = header_len(&prefix).map_err(|e| ObjectError::Bad(e.to_string()))?;
    if PREFIX_LEN as u64 + u64::from(len) > size {
        return Err(ObjectError::Bad(format!(
            "truncated: its header of {len} bytes goes past the end of the file ({size} bytes)"
        )));
    }
    let mut json = vec![0u8; len as usize];
    read_exact(&mut file, &mut json, "its header")?;
    let header = decode_header(&json).map_err(|e| ObjectError::Bad(e.to_string()))?;
    let start = PREFIX_LEN as u64 + u64::from(len);
    let copy_len = size - start;
    check_copy(&mut file, start, copy_len)?;
    file.seek(SeekFrom::Start(start)).map_err(ObjectError::Io)?;
    Ok(ObjectFile {
        header,
        file,
        copy_len,
    })
}

/// The COPY stream starts with PostgreSQL's signature and ends with its trailer (-1 as a
/// 16-bit field count): a file cut short is named before any row is loaded.
fn check_copy(file: &mut File, start: u64, len: u64) -> Result<(), ObjectError> {
    if len < COPY_MIN {
        return Err(ObjectError::Bad(format!(
            "truncated: its binary COPY stream has {len} bytes, fewer than the {COPY_MIN} of an empty one"
        )));
    }
    let mut sig = [0u8; 11];
    file.seek(SeekFrom::Start(start)).map_err(ObjectError::Io)?;
    read_exact(file, &mut sig, "its COPY signature")?;
    if &sig != COPY_SIGNATURE {
        return Err(ObjectError::Bad(
            "its rows are not a PostgreSQL binary COPY stream (no PGCOPY signature after the header)"
                .into(),
        ));
    }
    let mut trailer = [0u8; 2];
    file.seek(SeekFrom::Start(start + len - 2))
        .map_err(ObjectError::Io)?;
    read_exact(file, &mut trailer, "its COPY trailer")?;
    if trailer != [0xff, 0xff] {
        return Err(ObjectError::Bad(
            "truncated: its binary COPY stream does not end with the trailer (the file was cut short)"
                .into(),
        ));
    }
    Ok(())
}

fn read_exact(file: &mut File, buf: &mut [u8], what: &str) -> Result<(), ObjectError> {
    file.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ObjectError::Bad(format!("truncated: the file ends inside {what}"))
        } else {
            ObjectError::Io(e)
        }
    })
}

/// Why an object file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The file is not a valid table object: applying it again cannot help.
    #[error("{0}")]
    Bad(String),
    #[error("cannot read it: {0}")]
    Io(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use gapsync_protocol::table::{Column, TableKind, VERSION, encode_header};
    use std::io::Write as _;

    pub(crate) fn header() -> TableHeader {
        TableHeader {
            version: VERSION,
            kind: TableKind::Snapshot,
            table: "public.assets".into(),
            id: "snapshot:public.assets:3".into(),
            batch: 3,
            columns: vec![Column {
                name: "id".into(),
                type_name: "integer".into(),
                not_null: true,
            }],
            key: vec!["id".into()],
            partition: None,
            watermark: None,
            read_at: "2026-12-03T10:00:00Z".into(),
        }
    }

    /// An empty binary COPY stream.
    fn empty_copy() -> Vec<u8> {
        let mut v = COPY_SIGNATURE.to_vec();
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&[0xff, 0xff]);
        v
    }

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("test value");
        f.write_all(bytes).expect("test value");
        f
    }

    #[test]
    fn a_whole_object_is_read_and_positioned_at_its_rows() {
        let mut bytes = encode_header(&header()).expect("test value");
        bytes.extend_from_slice(&empty_copy());
        let f = file_with(&bytes);
        let mut o = open(f.path()).expect("test value");
        assert_eq!(o.header, header());
        assert_eq!(o.copy_len, COPY_MIN);
        let mut rest = Vec::new();
        o.file.read_to_end(&mut rest).expect("test value");
        assert_eq!(rest, empty_copy());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let mut bytes = encode_header(&header()).expect("test value");
        bytes.extend_from_slice(&empty_copy());
        let err = |b: &[u8]| open(file_with(b).path()).expect_err("an error").to_string();
        assert!(err(b"GSTABLE2xxxxxxxxxxx").contains("not a gapsync table object"));
        let mut big = b"GSTABLE1".to_vec();
        big.extend_from_slice(&(2u32 << 20).to_be_bytes());
        assert!(err(&big).contains("over the limit"), "{}", err(&big));
        let mut long = b"GSTABLE1".to_vec();
        long.extend_from_slice(&1000u32.to_be_bytes());
        assert!(err(&long).contains("goes past the end"));
        assert!(err(&bytes[..10]).contains("ends inside its 12-byte prefix"));
        assert!(err(b"hello\n").contains("not a gapsync table object"));
        assert!(err(&bytes[..bytes.len() - 1]).contains("truncated"));
        let mut no_sig = bytes.clone();
        let at = bytes.len() - COPY_MIN as usize;
        no_sig[at] = b'X';
        assert!(err(&no_sig).contains("not a PostgreSQL binary COPY stream"));
        let mut json_bad = b"GSTABLE1".to_vec();
        json_bad.extend_from_slice(&2u32.to_be_bytes());
        json_bad.extend_from_slice(b"{}");
        json_bad.extend_from_slice(&empty_copy());
        assert!(err(&json_bad).contains("header is not valid"));
    }
}
