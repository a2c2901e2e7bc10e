//! The VM's console files, kept bounded while the hypervisor writes them.
//!
//! The hypervisor owns `console.log` (QEMU's chardev `logfile=`, Cloud
//! Hypervisor's `serial.mode = "File"`) and writes it even while no
//! supervisor runs, so the log has no gap. It cannot be renamed from under
//! the writer, so rotation is copy-truncate: the newest `max_bytes` of the
//! live file are copied to `console.log.1` (older rotations shift to `.2`,
//! ...), then the live file is truncated in place.
//!
//! - QEMU opens the log with O_APPEND (`logappend=on`): after the truncate
//!   its next write lands at offset 0.
//! - Cloud Hypervisor does not append: its next write lands at its old
//!   offset, leaving a hole before it. Readers skip holes (`SEEK_DATA`)
//!   and the size check counts data, not the hole.
//! - Bytes written between the copy and the truncate (microseconds) are
//!   lost; the reader delivers everything it copied.
//!
//! The reader (`LogTail`) follows the file from an offset and starts over
//! from the beginning when the file shrinks under it (Cloud Hypervisor
//! truncates it at every boot).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::bounds::ConsoleLogLimits;

/// Mode of console files: readable by the daemon's group, nobody else
/// (serial consoles carry root shells and typed passwords).
pub const LOG_MODE: u32 = 0o640;

/// Follows one console file: reads what was appended since the last call,
/// and rotates it when it outgrows its bound.
pub struct LogTail {
    path: PathBuf,
    file: File,
    offset: u64,
    limits: ConsoleLogLimits,
    /// The next read follows a jump over a hole: strip its zero padding.
    after_hole: bool,
    /// The file's first bytes as read: a file truncated and written again
    /// past our offset before we looked (Cloud Hypervisor at a reboot) is
    /// told apart by a different start.
    head: Vec<u8>,
}

/// How many of the first bytes identify one generation of the file.
const HEAD_BYTES: usize = 64;

impl LogTail {
    /// Opens `path` for reading from `offset`.
    pub fn open(path: &Path, offset: u64, limits: ConsoleLogLimits) -> std::io::Result<LogTail> {
        let file = File::open(path)?;
        let mut t = LogTail { path: path.to_path_buf(), file, offset, limits, after_hole: false, head: Vec::new() };
        t.head = t.read_head(t.offset.min(HEAD_BYTES as u64) as usize)?;
        Ok(t)
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Everything new since the last call, in order (`out` gets it), then
    /// a rotation if the file is over its bound. Returns the bytes read.
    pub fn poll(&mut self, out: &mut dyn FnMut(&[u8])) -> std::io::Result<u64> {
        self.reopen_if_replaced()?;
        let mut total = self.read_new(out)?;
        if data_len(&self.file)? >= self.limits.max_bytes {
            total += self.rotate(out)?;
        }
        Ok(total)
    }

    /// A file recreated under the same name (a new inode) is followed from
    /// its start.
    fn reopen_if_replaced(&mut self) -> std::io::Result<()> {
        let Ok(on_disk) = std::fs::metadata(&self.path) else { return Ok(()) };
        if on_disk.ino() != self.file.metadata()?.ino() {
            self.file = File::open(&self.path)?;
            self.offset = 0;
            self.head.clear();
        }
        Ok(())
    }

    /// The first `n` bytes of the file (fewer if it is shorter).
    fn read_head(&self, n: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt as _;
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.file.read_at(&mut buf[got..], got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn read_new(&mut self, out: &mut dyn FnMut(&[u8])) -> std::io::Result<u64> {
        let len = self.file.metadata()?.len();
        let rewritten = self.offset > 0 && len >= self.offset && self.read_head(self.head.len())? != self.head;
        if len < self.offset || rewritten {
            // Truncated under us (a new boot of Cloud Hypervisor, or our
            // own rotation of an appending writer): start over.
            self.offset = 0;
            self.head.clear();
        }
        if len == self.offset {
            return Ok(0);
        }
        let start = match seek_data(&self.file, self.offset)? {
            Some(d) => d,
            None => return Ok(0),
        };
        if start > self.offset {
            self.after_hole = true;
        }
        self.file.seek(SeekFrom::Start(start))?;
        self.offset = start;
        let mut chunk = vec![0u8; 16 * 1024];
        let mut total = 0u64;
        loop {
            let n = match self.file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.offset += n as u64;
            total += n as u64;
            let mut data = &chunk[..n];
            if self.after_hole {
                // The hole ends on a page boundary; the writer's first byte
                // may come later in that page, after zeros.
                let skip = data.iter().take_while(|b| **b == 0).count();
                data = &data[skip..];
                if !data.is_empty() {
                    self.after_hole = false;
                }
            }
            if !data.is_empty() {
                out(data);
            }
        }
        if self.head.len() < HEAD_BYTES {
            self.head = self.read_head(usize::try_from(self.offset).unwrap_or(HEAD_BYTES).min(HEAD_BYTES))?;
        }
        Ok(total)
    }

    /// Copy-truncate: the newest `max_bytes` go to `.1` (older files
    /// shift), bytes that arrived since `read_new` are delivered too, then
    /// the live file is emptied.
    fn rotate(&mut self, out: &mut dyn FnMut(&[u8])) -> std::io::Result<u64> {
        let files = self.limits.files.max(1);
        let mut delivered = 0;
        if files > 1 {
            for k in (1..files - 1).rev() {
                let from = rotated(&self.path, k);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, k + 1))?;
                }
            }
            let tmp = self.path.with_extension("log.rotating");
            let mut dst = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(LOG_MODE).open(&tmp)?;
            let len = self.file.metadata()?.len();
            let from = seek_data(&self.file, len.saturating_sub(self.limits.max_bytes))?.unwrap_or(len);
            let mut src = &self.file;
            src.seek(SeekFrom::Start(from))?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut pos = from;
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                dst.write_all(&buf[..n])?;
                // Past what the reader has seen: deliver it as well.
                let end = pos + n as u64;
                if end > self.offset {
                    let skip = self.offset.saturating_sub(pos) as usize;
                    out(&buf[skip..n]);
                    delivered += (n - skip) as u64;
                    self.offset = end;
                }
                pos = end;
            }
            drop(dst);
            std::fs::rename(&tmp, rotated(&self.path, 1))?;
        }
        // A separate writable handle: ours is read-only.
        std::fs::OpenOptions::new().write(true).open(&self.path)?.set_len(0)?;
        self.offset = 0;
        self.head.clear();
        tracing::debug!(path = ?self.path, files, max_bytes = self.limits.max_bytes, "console log rotated");
        Ok(delivered)
    }
}

/// `console.log.N`.
pub fn rotated(live: &Path, n: u32) -> PathBuf {
    let mut s = live.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Bytes of data in the file: its length minus a leading hole.
fn data_len(file: &File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    Ok(seek_data(file, 0)?.map_or(0, |start| len - start.min(len)))
}

/// The first offset at or after `from` that holds data; None past the end.
fn seek_data(file: &File, from: u64) -> std::io::Result<Option<u64>> {
    let Ok(off) = libc::off_t::try_from(from) else { return Ok(None) };
    // SAFETY: lseek on a file descriptor we own; it only moves the offset.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            // A filesystem without SEEK_DATA: no holes to skip.
            Some(libc::EINVAL) => Ok(Some(from)),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

/// The newest `want` bytes of the console output across the live file and
/// its rotations (newest last), for a backlog that survives a rotation.
pub fn read_tail(live: &Path, files: u32, want: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = File::open(live)?;
    let len = file.metadata()?.len();
    let data_start = seek_data(&file, 0)?.unwrap_or(len);
    let start = data_start.max(len.saturating_sub(want as u64));
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    (&mut file).take(len - start).read_to_end(&mut tail)?;
    // Zero padding before a non-appending writer's first byte after a hole.
    tail.retain(|b| *b != 0);
    let mut k = 1;
    while tail.len() < want && k < files.max(1) {
        let Ok(mut older) = File::open(rotated(live, k)) else { break };
        let olen = older.metadata()?.len();
        let need = (want - tail.len()) as u64;
        older.seek(SeekFrom::Start(olen.saturating_sub(need)))?;
        let mut prefix = Vec::new();
        older.read_to_end(&mut prefix)?;
        prefix.extend_from_slice(&tail);
        tail = prefix;
        k += 1;
    }
    Ok((tail, len))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn limits(max_bytes: u64, files: u32) -> ConsoleLogLimits {
        ConsoleLogLimits { max_bytes, files }
    }

    fn append(path: &Path, data: &[u8]) {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
        f.write_all(data).unwrap();
    }

    fn collect(t: &mut LogTail) -> Vec<u8> {
        let mut got = Vec::new();
        t.poll(&mut |d| got.extend_from_slice(d)).unwrap();
        got
    }

    #[test]
    fn a_file_rewritten_past_the_offset_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("console.log");
        std::fs::write(&live, b"first boot\nREADY\n").unwrap();
        let mut t = LogTail::open(&live, 0, limits(1 << 20, 2)).unwrap();
        assert_eq!(collect(&mut t), b"first boot\nREADY\n");
        // Truncated and written again, longer than before, between polls.
        std::fs::write(&live, b"second boot!\nREADY\n").unwrap();
        assert_eq!(collect(&mut t), b"second boot!\nREADY\n");
        // Appends after that are read once.
        append(&live, b"more\n");
        assert_eq!(collect(&mut t), b"more\n");
    }

    #[test]
    fn an_appending_writer_is_rotated_and_nothing_read_twice_or_lost() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("console.log");
        std::fs::write(&live, b"").unwrap();
        let mut t = LogTail::open(&live, 0, limits(1000, 3)).unwrap();
        let mut seen = Vec::new();
        let mut written = Vec::new();
        for i in 0..50u32 {
            let line = format!("line {i:04} {}\n", "x".repeat(80));
            append(&live, line.as_bytes());
            written.extend_from_slice(line.as_bytes());
            seen.extend(collect(&mut t));
            for f in [live.clone(), rotated(&live, 1), rotated(&live, 2)] {
                let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                assert!(len < 1000 + 100, "{f:?} is {len} bytes");
            }
        }
        assert_eq!(String::from_utf8_lossy(&seen), String::from_utf8_lossy(&written));
        assert!(!rotated(&live, 3).exists(), "only `files` files are kept");
        let mode = std::fs::metadata(rotated(&live, 1)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, LOG_MODE);
        let (tail, _) = read_tail(&live, 3, 1500).unwrap();
        assert!(written.ends_with(&tail), "the backlog is the newest output across files");
        assert_eq!(tail.len(), 1500);
    }

    #[test]
    fn a_non_appending_writer_leaves_a_hole_that_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("console.log");
        // Cloud Hypervisor's way: one handle, writing at its own offset.
        let mut w = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&live).unwrap();
        let mut t = LogTail::open(&live, 0, limits(64 * 1024, 2)).unwrap();
        let big = vec![b'a'; 70 * 1024];
        w.write_all(&big).unwrap();
        assert_eq!(collect(&mut t).len(), big.len());
        assert_eq!(std::fs::metadata(&live).unwrap().len(), 0, "rotated");
        w.write_all(b"after the truncate\n").unwrap();
        assert_eq!(collect(&mut t), b"after the truncate\n");
        assert!(data_len(&w).unwrap() < 8192, "the hole is not counted");
    }

    #[test]
    fn a_file_grown_while_no_daemon_ran_keeps_its_newest_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("console.log");
        let written: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&live, &written).unwrap();
        // A restarted console starts at the end (its backlog came from read_tail).
        let mut t = LogTail::open(&live, written.len() as u64, limits(64 * 1024, 2)).unwrap();
        assert!(collect(&mut t).is_empty(), "nothing new to deliver");
        assert_eq!(std::fs::read(rotated(&live, 1)).unwrap(), written[written.len() - 64 * 1024..]);
        assert_eq!(std::fs::metadata(&live).unwrap().len(), 0);
    }

    #[test]
    fn a_truncated_file_is_read_again_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("console.log");
        std::fs::write(&live, b"first boot, a long line of output\n").unwrap();
        let mut t = LogTail::open(&live, 0, limits(1 << 20, 2)).unwrap();
        collect(&mut t);
        std::fs::write(&live, b"second boot\n").unwrap();
        assert_eq!(collect(&mut t), b"second boot\n");
    }
}
