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
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    commit_temp(&tmp, path)
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
        let writer = std::io::BufWriter::new(fs::File::create(&tmp)?);
        Ok(Self { writer: Some(writer), tmp, path: path.to_path_buf() })
    }

    pub fn commit(mut self) -> std::io::Result<()> {
        let writer = self.writer.take().expect("an AtomicFile commits once");
        writer.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        commit_temp(&self.tmp, &self.path)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.as_mut().expect("not yet committed").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().expect("not yet committed").flush()
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
