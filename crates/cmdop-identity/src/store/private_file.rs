//! Owner-only files: create-if-absent atomically with mode 0600, replace atomically, and read only files nobody
//! else can read or could have planted. The seed store and every other private file cmdop writes use these.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest file we are willing to read; both of ours are under 100 bytes, so anything bigger is not ours.
const MAX_READ: u64 = 4096;

/// What reading an owner-only file found.
#[derive(Debug)]
pub enum Checked {
    /// The file does not exist.
    Missing,
    /// The file exists, is a regular file, and only its owner may access it.
    Contents(zeroize::Zeroizing<Vec<u8>>),
    /// Group or others have some access; the mode is reported so the user sees what was wrong.
    TooOpen(u32),
    /// Not a regular file (a directory, a device, a FIFO…).
    NotAFile,
    /// Owned by another user (this uid): someone else could have planted it, so it must not become our
    /// identity, even though root could read it.
    WrongOwner(u32),
}

/// The effective uid of this process: the owner every secret file must have.
pub fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Reads `path` if it exists, refusing files not owned by `owner` or that group or others could access.
pub fn read_owner_only(path: &Path, owner: u32) -> io::Result<Checked> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Checked::Missing),
        Err(e) => return Err(e),
    };
    // Checked on the open handle, not the path, so the file cannot be swapped between check and read.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Checked::NotAFile);
    }
    if meta.uid() != owner {
        return Ok(Checked::WrongOwner(meta.uid()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Ok(Checked::TooOpen(mode));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_READ).read_to_end(&mut bytes)?;
    Ok(Checked::Contents(bytes))
}

/// Creates `dir` (and parents) with mode 0700 if it is missing. An existing directory is left as it is: it
/// belongs to the user, and the files inside are 0600 regardless.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // DirBuilder's mode is filtered by the umask; set it explicitly so a strict umask cannot lock us out and a
    // lax one cannot open the directory up.
    fs::set_permissions(dir, Permissions::from_mode(0o700))
}

/// Writes `bytes` to `path` only if `path` does not exist yet, atomically: readers see either nothing or the
/// complete file. Returns `false` when another writer got there first (the existing file is untouched).
///
/// Temp file in the same directory, written, fsynced, then hard-linked to the final name (`link(2)` fails
/// when the target exists, unlike `rename(2)`), then the directory is fsynced so the new name survives a crash.
pub fn create_new_atomically(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let temp = temp_path(path);
    let result = write_temp(&temp, bytes).and_then(|()| match fs::hard_link(&temp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    });
    // The temp name is ours alone; removing it is cleanup, and a failure here must not hide the real result.
    let _ = fs::remove_file(&temp);
    let created = result?;
    File::open(dir)?.sync_all()?;
    Ok(created)
}

/// Writes `bytes` to `path`, replacing any previous file, atomically (temp file, fsync, `rename(2)`, directory
/// fsync) and with mode 0600 whatever the umask; the directory is created 0700 if missing.
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    ensure_dir(dir)?;
    let temp = temp_path(path);
    let result = write_temp(&temp, bytes).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    File::open(dir)?.sync_all()
}

fn write_temp(temp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)?;
    // The open mode is filtered by the umask; set it again so that only the owner can ever read the file.
    file.set_permissions(Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A temp name unique across processes (pid) and threads (counter), hidden and easy to attribute.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_another_owner_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("secret");
        assert!(create_new_atomically(&path, b"x").unwrap());
        let me = current_uid();
        assert!(
            matches!(read_owner_only(&path, me).unwrap(), Checked::Contents(b) if b.as_slice() == b"x")
        );
        // Pretend to be someone else rather than chown, which needs root.
        let other = me.wrapping_add(1);
        assert!(
            matches!(read_owner_only(&path, other).unwrap(), Checked::WrongOwner(uid) if uid == me)
        );
    }

    #[test]
    fn create_new_atomically_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("secret");
        assert!(create_new_atomically(&path, b"first").unwrap());
        assert!(!create_new_atomically(&path, b"second").unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no temp file is left behind"
        );
    }
}
