//! The journal's on-disk format: segment files of lines `CRC32C-HEX SPACE JSON NEWLINE`.
//!
//! A line is acknowledged only after it and its newline were fsynced, so a crash can leave at
//! most an unacknowledged, partial last line (a torn tail): reading stops there and nothing
//! acknowledged is lost. A complete line whose checksum does not match (a damaged disk) is set
//! aside in `rejected.log`, never silently dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The file extension of segments.
const EXT: &str = "journal";

/// One line of a segment, newline included.
pub fn encode(json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + 10);
    line.extend_from_slice(format!("{:08x} ", CASTAGNOLI.checksum(json)).as_bytes());
    line.extend_from_slice(json);
    line.push(b'\n');
    line
}

/// What a segment holds.
#[derive(Debug, Default)]
pub struct Read {
    /// The JSON of each intact line, in order.
    pub lines: Vec<Vec<u8>>,
    /// Bytes of an unfinished last line (never acknowledged), ignored.
    pub torn_tail: usize,
    /// Complete lines whose checksum failed.
    pub damaged: Vec<Vec<u8>>,
}

/// Splits a segment's bytes into its intact lines.
pub fn decode(bytes: &[u8]) -> Read {
    let mut read = Read::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            read.torn_tail = rest.len();
            break;
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        match split(line) {
            Some(json) => read.lines.push(json.to_vec()),
            None => read.damaged.push(line.to_vec()),
        }
    }
    read
}

fn split(line: &[u8]) -> Option<&[u8]> {
    if line.len() < 9 || line[8] != b' ' {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(&line[..8]).ok()?, 16).ok()?;
    let json = &line[9..];
    (CASTAGNOLI.checksum(json) == crc).then_some(json)
}

/// The path of segment `seq` in `dir`.
pub fn path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{EXT}"))
}

/// The segments in `dir`, oldest first, with their sequence numbers.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXT) {
            continue;
        }
        if let Some(seq) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Makes a file's creation or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Appends damaged lines to `rejected.log` (fsynced), so an operator can read them.
pub fn set_aside(dir: &Path, lines: &[Vec<u8>]) -> io::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("rejected.log"))?;
    for line in lines {
        file.write_all(line)?;
        file.write_all(b"\n")?;
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_a_torn_tail_is_ignored() {
        let mut bytes = encode(br#"{"a":1}"#);
        bytes.extend(encode(br#"{"b":2}"#));
        let partial = encode(br#"{"c":3}"#);
        bytes.extend(&partial[..partial.len() - 3]);
        let read = decode(&bytes);
        assert_eq!(
            read.lines,
            vec![br#"{"a":1}"#.to_vec(), br#"{"b":2}"#.to_vec()]
        );
        assert_eq!(read.torn_tail, partial.len() - 3);
        assert!(read.damaged.is_empty());
    }

    #[test]
    fn a_damaged_line_is_set_apart_and_reading_goes_on() {
        let mut first = encode(br#"{"a":1}"#);
        first[12] = b'9';
        let mut bytes = first;
        bytes.extend(encode(br#"{"b":2}"#));
        let read = decode(&bytes);
        assert_eq!(read.lines, vec![br#"{"b":2}"#.to_vec()]);
        assert_eq!(read.damaged.len(), 1);
        assert_eq!(read.torn_tail, 0);
    }
}
