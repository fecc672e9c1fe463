//! A writer for the cpio "newc" format, the one the kernel unpacks as an initramfs.
//!
//! Written here rather than piped through `cpio -o` so that device nodes (`/dev/console`,
//! which the kernel needs before `/init` mounts devtmpfs) can be made without root, and
//! every file's path, mode and owner is exactly what we say.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::{Context, Result, bail};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes one archive. Parent directories are emitted on demand, so entries can be added
/// in any order; the archive is closed by [`Writer::finish`].
pub struct Writer<W: Write> {
    out: W,
    written: u64,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Writer<W> {
    /// `first_ino` numbers this archive's inodes. Every entry has one link, so the kernel
    /// never treats two entries as hard links, even across concatenated archives; distinct
    /// ranges only make listings easier to read.
    pub fn new(out: W, first_ino: u32) -> Self {
        Self {
            out,
            written: 0,
            ino: first_ino,
            dirs: BTreeSet::new(),
        }
    }

    /// A directory (and its parents), mode 0755.
    pub fn dir(&mut self, path: &str) -> Result<()> {
        let path = clean(path)?;
        self.parents(&path)?;
        if self.dirs.insert(path.clone()) {
            self.entry(&path, S_IFDIR | 0o755, (0, 0), &[])?;
        }
        Ok(())
    }

    /// A regular file with permission bits `perm` (e.g. 0o755).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        let path = clean(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    /// A symbolic link `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let path = clean(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        let path = clean(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFCHR | (perm & 0o7777), (major, minor), &[])
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush().context("flushing cpio archive")?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let parent = &path[..at + i];
            if self.dirs.insert(parent.to_owned()) {
                self.entry(parent, S_IFDIR | 0o755, (0, 0), &[])?;
            }
            at += i + 1;
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        let size = u32::try_from(data.len()).with_context(|| format!("{name}: over 4 GiB"))?;
        let namesize = u32::try_from(name.len() + 1).context("name too long")?;
        let ino = self.ino;
        self.ino = self.ino.wrapping_add(1);
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check: 6 + 13 * 8 = 110 bytes.
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0, 0, 0, 0, 0, rdev.0, rdev.1, 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).context("writing cpio archive")?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Header+name and data are each padded to a multiple of four bytes.
    fn pad(&mut self) -> Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }
}

/// `path` relative to the archive root, refusing what could escape it.
fn clean(path: &str) -> Result<String> {
    let path = path.trim_start_matches('/').trim_end_matches('/');
    if path.is_empty()
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("bad path in initramfs: {path:?}");
    }
    Ok(path.to_owned())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// (name, mode, rdev major, data) of every entry, read back from an archive.
    pub(in crate::vm) fn entries(mut a: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let field = |h: &[u8], i: usize| {
            let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).expect("ascii");
            u32::from_str_radix(s, 16).expect("hex")
        };
        let padded = |n: usize| n.div_ceil(4) * 4;
        let mut out = Vec::new();
        loop {
            assert_eq!(&a[..6], b"070701");
            let (mode, size, major, namesize) =
                (field(a, 1), field(a, 6), field(a, 9), field(a, 11));
            let name = String::from_utf8(a[110..110 + namesize as usize - 1].to_vec())
                .expect("utf-8 name");
            a = &a[padded(110 + namesize as usize)..];
            let data = a[..size as usize].to_vec();
            a = &a[padded(size as usize)..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty(), "bytes after the trailer");
                return out;
            }
            out.push((name, mode, major, data));
        }
    }

    #[test]
    fn parents_come_first_and_once() {
        let mut w = Writer::new(Vec::new(), 1);
        w.file("/usr/bin/a", 0o755, b"abc").expect("file");
        w.symlink("usr/bin/b", "a").expect("symlink");
        w.dir("usr").expect("dir");
        let names: Vec<String> = entries(&w.finish().expect("finish"))
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names, ["usr", "usr/bin", "usr/bin/a", "usr/bin/b"]);
    }

    #[test]
    fn entries_read_back_with_their_kind_and_data() {
        let mut w = Writer::new(Vec::new(), 1);
        w.file("init", 0o755, b"#!/bin/sh\n").expect("file");
        w.char_dev("dev/console", 0o600, 5, 1).expect("dev");
        w.symlink("bin/sh", "busybox").expect("symlink");
        let e = entries(&w.finish().expect("finish"));
        assert_eq!(
            e[0],
            ("init".into(), S_IFREG | 0o755, 0, b"#!/bin/sh\n".to_vec())
        );
        assert_eq!(e[2], ("dev/console".into(), S_IFCHR | 0o600, 5, Vec::new()));
        assert_eq!(
            e[4],
            ("bin/sh".into(), S_IFLNK | 0o777, 0, b"busybox".to_vec())
        );
    }

    #[test]
    fn paths_that_leave_the_root_are_refused() {
        let mut w = Writer::new(Vec::new(), 1);
        assert!(w.file("../etc/passwd", 0o644, b"").is_err());
        assert!(w.file("a//b", 0o644, b"").is_err());
        assert!(w.dir("/").is_err());
    }
}
