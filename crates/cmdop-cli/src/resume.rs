//! Where a terminal left off in a named session, so the next `cmdop connect MACHINE --session NAME` resumes
//! exactly there, even after this process was killed.
//!
//! One small file per (machine, session) under `<config>/client/sessions/<machine id>/<name>`: a magic, the
//! terminal's attachment instance (16 bytes) and the output offset it has written to the terminal (u64 BE).
//! The offset is rewritten in place after every write to the terminal, one `pwrite` each, so it survives
//! SIGKILL (it lives in the page cache). An exclusive lock marks the file as in use by a live terminal: a
//! second terminal on the same session gets its own attachment instead of stealing this one, and the lock
//! vanishes with a killed process, so its successor takes over.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use uuid::Uuid;

const MAGIC: &[u8; 8] = b"cmdopR1\0";
const LEN: usize = 8 + 16 + 8;

/// What a previous terminal left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resume {
    /// Its attachment instance.
    pub(crate) instance: [u8; 16],
    /// The output offset it had written.
    pub(crate) offset: u64,
}

/// A locked resume file.
#[derive(Debug)]
pub(crate) struct ResumeFile {
    file: File,
    path: PathBuf,
}

/// The outcome of [`ResumeFile::claim`].
#[derive(Debug)]
pub(crate) enum Claim {
    /// This terminal owns the file; `Some` when a previous terminal left a position.
    Owned(ResumeFile, Option<Resume>),
    /// Another live terminal is attached to this session through this file.
    InUse,
}

impl ResumeFile {
    /// Opens (creating, 0600 in 0700 directories) and locks the file for `machine`'s session `name`.
    pub(crate) fn claim(dir: &Path, machine: Uuid, name: &str) -> std::io::Result<Claim> {
        let machine_dir = dir.join("sessions").join(machine.to_string());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&machine_dir)?;
        // Session names are validated ([A-Za-z0-9._-], no leading '.'), so this stays inside machine_dir.
        let path = machine_dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Claim::InUse),
            Err(TryLockError::Error(err)) => return Err(err),
        }
        let mut bytes = [0u8; LEN];
        let saved = match file.read_exact_at(&mut bytes, 0) {
            Ok(()) => decode(&bytes),
            Err(_) => None,
        };
        Ok(Claim::Owned(Self { file, path }, saved))
    }

    /// Records the position; called after every write to the terminal.
    pub(crate) fn save(&self, resume: Resume) {
        let mut bytes = [0u8; LEN];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..24].copy_from_slice(&resume.instance);
        bytes[24..].copy_from_slice(&resume.offset.to_be_bytes());
        // Losing the position only costs a longer replay next time; never fail the session over it.
        let _ = self.file.write_all_at(&bytes, 0);
    }

    /// Deletes the file: the session ended, there is nothing to resume.
    pub(crate) fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn decode(bytes: &[u8; LEN]) -> Option<Resume> {
    let (magic, rest) = bytes.split_first_chunk::<8>()?;
    if magic != MAGIC {
        return None;
    }
    let (instance, offset) = rest.split_first_chunk::<16>()?;
    let offset = offset.first_chunk::<8>()?;
    Some(Resume {
        instance: *instance,
        offset: u64::from_be_bytes(*offset),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_claims_and_refuses_a_second_live_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let machine = Uuid::new_v4();
        let Claim::Owned(first, None) = ResumeFile::claim(dir.path(), machine, "s1").unwrap()
        else {
            panic!("a new file has no position");
        };
        let resume = Resume {
            instance: [9; 16],
            offset: 123_456,
        };
        first.save(resume);
        assert!(matches!(
            ResumeFile::claim(dir.path(), machine, "s1").unwrap(),
            Claim::InUse
        ));
        drop(first);
        let Claim::Owned(again, Some(saved)) =
            ResumeFile::claim(dir.path(), machine, "s1").unwrap()
        else {
            panic!("the position survives");
        };
        assert_eq!(saved, resume);
        again.remove();
        assert!(matches!(
            ResumeFile::claim(dir.path(), machine, "s1").unwrap(),
            Claim::Owned(_, None)
        ));
    }

    #[test]
    fn a_garbled_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let machine = Uuid::new_v4();
        let path = dir.path().join("sessions").join(machine.to_string());
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("s1"), b"garbage that is long enough to be read!").unwrap();
        assert!(matches!(
            ResumeFile::claim(dir.path(), machine, "s1").unwrap(),
            Claim::Owned(_, None)
        ));
    }
}
