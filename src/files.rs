//! Files written so that a crash leaves either the old file or the new one, and their
//! SHA-256. Everything kiln writes goes through here.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a file, read in 1 MB pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one:
/// temporary file in the same directory, fsync, rename, fsync of the directory.
///
/// Errors name `path` (see [`write_error`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        commit_temp(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        write_error(path, e)
    })
}

/// The error of writing `path`: names the file and, for the failures a user fixes outside
/// kiln (a full disk, a read-only mount, permissions), says which it is. The kind is kept.
pub fn write_error(path: &Path, e: std::io::Error) -> std::io::Error {
    io_error("writing", path, e)
}

/// [`write_error`] for another action on `path`: "creating", "removing"…
pub fn io_error(action: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    use std::io::ErrorKind::{PermissionDenied, QuotaExceeded, ReadOnlyFilesystem, StorageFull};
    let what = match e.kind() {
        StorageFull => "no space left on the device; free some space and run again".into(),
        QuotaExceeded => "the disk quota is exceeded; free some space and run again".into(),
        ReadOnlyFilesystem => "the file system is read-only; choose a writable folder".into(),
        PermissionDenied => "permission denied; choose a folder you can write to".into(),
        _ => e.to_string(),
    };
    std::io::Error::new(e.kind(), format!("{action} {}: {what}", path.display()))
}

/// A file written in pieces that appears at its path only when complete: it is written to a
/// temporary sibling and renamed by [`AtomicFile::commit`]; dropped uncommitted, it is removed.
pub struct AtomicFile {
    writer: Option<std::io::BufWriter<fs::File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let tmp = temp_sibling(path);
        let file = fs::File::create(&tmp).map_err(|e| write_error(path, e))?;
        Ok(Self { writer: Some(std::io::BufWriter::new(file)), tmp, path: path.to_path_buf() })
    }

    pub fn commit(mut self) -> std::io::Result<()> {
        let writer = self.writer.take().expect("an AtomicFile commits once");
        let committed = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_all())
            .and_then(|_| commit_temp(&self.tmp, &self.path));
        committed.map_err(|e| {
            let _ = fs::remove_file(&self.tmp);
            write_error(&self.path, e)
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let writer = self.writer.as_mut().expect("not yet committed");
        writer.write(buf).map_err(|e| write_error(&self.path, e))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let writer = self.writer.as_mut().expect("not yet committed");
        writer.flush().map_err(|e| write_error(&self.path, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A hidden file next to `path` to write into before [`commit_temp`]. It has no extension
/// of its own, so writers that set one (Burn's recorders) keep it recognisable.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{}-partial", name.replace('.', "_")))
}

/// Fsyncs `tmp`, renames it onto `path` and fsyncs the directory.
pub fn commit_temp(tmp: &Path, path: &Path) -> std::io::Result<()> {
    fs::File::open(tmp)?.sync_all()?;
    fs::rename(tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether `name` is that of a temporary file [`temp_sibling`] made, which a killed writer
/// may leave behind.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains("-partial")
}

/// Whether `a` and `b` name the same existing file (through links and relative paths).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
