//! The uncompressed ELF kernel, taken out of Debian's bzImage.
//!
//! qemu boots an ELF `vmlinux` through its PVH entry point, which skips the bzImage's
//! decompressor: under software emulation that decompressor alone takes 5–7 s per boot.
//! Debian compresses the kernel with xz; the stream sits inside the bzImage after the
//! setup code, so we look for the xz magic and let the host's `xz` decompress from there.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The first bytes of every xz stream.
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
const ELF_MAGIC: &[u8] = b"\x7fELF";

/// Writes the ELF kernel inside `bzimage` to `out` (through a temporary file beside it,
/// so an interrupted run never leaves a truncated `out`).
pub fn extract(bzimage: &Path, out: &Path) -> Result<()> {
    let image = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let tmp = out.with_extension("partial");
    let result = first_elf_stream(bzimage, &image, &tmp);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))
}

/// Tries each xz magic in turn: the magic bytes could also occur by chance before the
/// real stream, and only the real one decompresses to an ELF file.
fn first_elf_stream(bzimage: &Path, image: &[u8], tmp: &Path) -> Result<()> {
    let offsets = image
        .windows(XZ_MAGIC.len())
        .enumerate()
        .filter(|(_, w)| *w == XZ_MAGIC)
        .map(|(i, _)| i);
    for offset in offsets {
        if decompress_at(bzimage, offset as u64, tmp)? && starts_with(tmp, ELF_MAGIC)? {
            return Ok(());
        }
    }
    bail!(
        "{}: no xz stream that decompresses to an ELF kernel (is it xz-compressed?)",
        bzimage.display()
    )
}

/// `xz -dc --single-stream` from `offset` (the bytes after the stream, the bzImage's
/// trailer, are ignored by `--single-stream`). `Ok(false)` if xz refuses the data.
fn decompress_at(bzimage: &Path, offset: u64, out: &Path) -> Result<bool> {
    let mut input =
        File::open(bzimage).with_context(|| format!("opening {}", bzimage.display()))?;
    input.seek(SeekFrom::Start(offset)).context("seeking")?;
    let output = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let status = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(input)
        .stdout(output)
        .stderr(Stdio::null())
        .status()
        .context("running xz (apt-get install xz-utils, or `cargo xtask setup`)")?;
    Ok(status.success())
}

fn starts_with(path: &Path, magic: &[u8]) -> Result<bool> {
    let mut head = vec![0; magic.len()];
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(f.read_exact(&mut head).is_ok() && head == magic)
}
