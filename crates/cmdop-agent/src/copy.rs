//! Copy streams on the agent: answer a client's file requests (`docs/protocol.md`, "Copy streams") against
//! the agent user's file system.
//!
//! A file being received lives under a partial name (`.NAME.TAG-NONCE.cmdop-part`, mode 0600, the nonce this
//! agent's own random number) beside its target and gets the final name only after its whole-file SHA-256
//! matched and it was synced, so a target path never holds a partial file. A transfer that is cut leaves the
//! partial file for the next attempt to resume.
//!
//! The paths a client names are resolved as given (symlinks in them followed, as for any program the agent
//! user runs). What a copy creates is not: a directory it makes (and everything a recursive push puts below
//! it) is reached through a handle of that directory and never through a symlink, partial files are created
//! `O_EXCL | O_NOFOLLOW` under names nobody can predict, and modes are set through handles
//! ([`cmdop_client::landing`]). So a local user who can write where a root agent receives a push, `/tmp`
//! say, cannot plant a symlink that turns its writes or chmods onto another file.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use cmdop_client::landing::{Landing, LandingError, Partial, Standing};
use cmdop_client::secure_stream::{SecureReceiver, SecureSender, SecureStreamError};
use cmdop_proto::e2e::CloseReason;
use cmdop_proto::ops::MAX_CHUNK;
use cmdop_proto::ops::copy::{CopyReply, CopyRequest, Entry, EntryKind};
use sha2::{Digest as _, Sha256};

use crate::exec;

/// Why a received file did not get its final name; the message is the `Failed` reply the client shows.
#[derive(Debug, thiserror::Error)]
enum PutError {
    /// The target path has no file name to put a partial file beside.
    #[error("{} is not a file name", .0.display())]
    NotAFileName(PathBuf),
    /// The partial file could not be opened, read back, written, or given its final name and mode.
    #[error(transparent)]
    Landing(#[from] LandingError),
    /// The partial file could not be read back or written.
    #[error("cannot write {}: {source}", part.display())]
    Write {
        part: PathBuf,
        source: std::io::Error,
    },
    /// The client sent more bytes than it announced.
    #[error("more data than the announced {size} bytes; the source changed during the copy")]
    TooLong { size: u64 },
    /// The client ended the file before the announced size.
    #[error(
        "{written} bytes arrived, {size} were announced; the source changed during the copy, run it again"
    )]
    TooShort { written: u64, size: u64 },
    /// The whole-file hash did not match; the partial file was removed.
    #[error(
        "{} arrived corrupted (SHA-256 mismatch) and was discarded; run the copy again",
        .0.display()
    )]
    Corrupted(PathBuf),
    /// Something other than a file (or a symlink, which is replaced) stands at the target.
    #[error("{} is in the way: a directory or other non-file stands there; move it away", .0.display())]
    Occupied(PathBuf),
    /// The partial file was never opened (an earlier error should have been reported instead).
    #[error("the partial file was not open")]
    NotOpen,
    /// The blocking task that finishes the file panicked or was cancelled.
    #[error("the agent lost track of the file")]
    Lost,
}

/// Serves one copy stream: requests in order until the client ends the stream.
pub async fn serve(
    mut sender: SecureSender,
    mut receiver: SecureReceiver,
) -> Result<(), SecureStreamError> {
    let home = exec::account().home;
    let mut made = MadeDirs::default();
    while let Some(request) = receiver.recv::<CopyRequest>().await? {
        match request {
            CopyRequest::Stat { path } => {
                let reply = match fs::symlink_metadata(resolve(&home, &path)) {
                    Ok(metadata) => CopyReply::Entry(entry(path, &metadata, None)),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => CopyReply::Missing,
                    Err(err) => failed(format!("cannot read {path}: {err}")),
                };
                sender.send(&reply).await?;
            }
            CopyRequest::List { path } => list(&mut sender, &resolve(&home, &path), &path).await?,
            CopyRequest::Put {
                path,
                size,
                mode,
                tag,
            } => {
                let target = resolve(&home, &path);
                let announced = Announced { size, mode, tag };
                put(&mut sender, &mut receiver, &made, &target, announced).await?;
            }
            CopyRequest::Get { path, offset } => {
                get(&mut sender, &resolve(&home, &path), &path, offset).await?;
            }
            CopyRequest::Mkdir { path, mode } => {
                let reply = match made.make(&resolve(&home, &path), mode) {
                    Ok(()) => CopyReply::Done,
                    Err(err) => failed(err.to_string()),
                };
                sender.send(&reply).await?;
            }
            CopyRequest::Symlink { path, target } => {
                let reply = match made.symlink(&resolve(&home, &path), &target) {
                    Ok(()) => CopyReply::Done,
                    Err(err) => failed(format!("cannot create symlink {path}: {err}")),
                };
                sender.send(&reply).await?;
            }
            CopyRequest::SetModified { path, modified_ns } => {
                let reply = match set_modified(&resolve(&home, &path), modified_ns) {
                    Ok(()) => CopyReply::Done,
                    Err(err) => {
                        failed(format!("cannot set the modification time of {path}: {err}"))
                    }
                };
                sender.send(&reply).await?;
            }
            CopyRequest::Chunk(_) | CopyRequest::PutEnd { .. } => {
                sender
                    .close(CloseReason::Protocol, "file data outside a put")
                    .await;
                return Ok(());
            }
        }
    }
    sender.end(0).await
}

/// How many directories made by one stream keep a handle; a push of more top-level directories than this
/// reopens the oldest by path.
const MADE_DIRS_KEPT: usize = 64;

/// The directories this copy stream made (with `Mkdir`), each with a handle: everything a recursive push puts
/// below one is reached through that handle, never through a symlink someone planted since.
#[derive(Debug, Default)]
struct MadeDirs {
    roots: Vec<(PathBuf, Landing)>,
}

impl MadeDirs {
    /// `Mkdir`: below a directory this stream made, each missing directory is made through its handle;
    /// elsewhere the parents are made as named and the last directory through its parent's handle. Either
    /// way the last one is never a symlink, and gets `mode` through its own handle.
    fn make(&mut self, target: &Path, mode: u32) -> Result<(), PutError> {
        if let Some((root, relative)) = self.root_of(target) {
            root.make_dirs(&relative, mode)?;
            return Ok(());
        }
        let (parent, name) = split(target)?;
        fs::create_dir_all(parent).map_err(|source| LandingError::Io {
            action: "create the directory",
            path: parent.to_path_buf(),
            source,
        })?;
        let made = Landing::open_named(parent)?.make_dir(name, mode)?;
        self.roots.retain(|(path, _)| path != target);
        if self.roots.len() >= MADE_DIRS_KEPT {
            self.roots.remove(0);
        }
        self.roots.push((target.to_path_buf(), made));
        Ok(())
    }

    /// `Symlink`: made in its directory's handle, replacing only a symlink.
    fn symlink(&self, link: &Path, target: &str) -> Result<(), PutError> {
        let (dir, name) = self.place_of(link)?;
        match dir.standing(&name)? {
            Standing::Nothing | Standing::Symlink => Ok(dir.place_symlink(&name, target)?),
            _ => Err(PutError::Occupied(link.to_path_buf())),
        }
    }

    /// The directory `target` goes in (through the handle of a directory this stream made, when it is below
    /// one) and its name there.
    fn place_of(&self, target: &Path) -> Result<(Landing, OsString), PutError> {
        let (parent, name) = split(target)?;
        let dir = match self.root_of(parent) {
            Some((root, relative)) => root.subdir(&relative)?,
            None => Landing::open_named(parent)?,
        };
        Ok((dir, name.to_owned()))
    }

    /// The made directory `path` is in or below, and the rest of the path from there.
    fn root_of(&self, path: &Path) -> Option<(&Landing, PathBuf)> {
        self.roots.iter().rev().find_map(|(root, landing)| {
            let relative = path.strip_prefix(root).ok()?;
            Some((landing, relative.to_path_buf()))
        })
    }
}

/// A path's directory and its last component.
fn split(target: &Path) -> Result<(&Path, &OsStr), PutError> {
    let name = target
        .file_name()
        .ok_or_else(|| PutError::NotAFileName(target.to_path_buf()))?;
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

/// Where a remote path points: absolute as given, `~/…` and relative paths under the agent user's home.
pub fn resolve(home: &Path, path: &str) -> PathBuf {
    if path.starts_with('/') {
        PathBuf::from(path)
    } else if path == "~" {
        home.to_path_buf()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else {
        home.join(path)
    }
}

fn failed(message: String) -> CopyReply {
    CopyReply::Failed { message }
}

fn entry(path: String, metadata: &fs::Metadata, target: Option<String>) -> Entry {
    let file_type = metadata.file_type();
    let kind = if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_symlink() {
        EntryKind::Symlink {
            target: target.unwrap_or_default(),
        }
    } else {
        EntryKind::File
    };
    Entry {
        path,
        size: if matches!(kind, EntryKind::File) {
            metadata.len()
        } else {
            0
        },
        kind,
        mode: metadata.mode() & 0o7777,
        modified_ns: modified_ns(metadata),
    }
}

/// Modification time in nanoseconds since the epoch; 0 when before it or unknown.
pub fn modified_ns(metadata: &fs::Metadata) -> u64 {
    let seconds = u64::try_from(metadata.mtime()).unwrap_or(0);
    let nanos = u64::try_from(metadata.mtime_nsec()).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

async fn list(
    sender: &mut SecureSender,
    root: &Path,
    shown: &str,
) -> Result<(), SecureStreamError> {
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut names: Vec<_> = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect(),
            Err(err) => {
                return sender
                    .send(&failed(format!("cannot list {shown}/{prefix}: {err}")))
                    .await;
            }
        };
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            // Names that are not UTF-8 cannot be described on the wire; they are skipped, not mangled.
            let Some(name) = name.to_str() else { continue };
            let path = dir.join(name);
            let Ok(metadata) = fs::symlink_metadata(&path) else {
                continue;
            };
            let relative = format!("{prefix}{name}");
            let target = fs::read_link(&path)
                .ok()
                .and_then(|t| t.to_str().map(str::to_owned));
            sender
                .send(&CopyReply::Entry(entry(
                    relative.clone(),
                    &metadata,
                    target,
                )))
                .await?;
            if metadata.is_dir() {
                subdirs.push((path, format!("{relative}/")));
            }
        }
        // Depth-first, in name order: every directory is listed before what it contains.
        stack.extend(subdirs.into_iter().rev());
    }
    sender.send(&CopyReply::ListEnd).await
}

/// What a `Put` announced about the file that follows.
#[derive(Debug, Clone, Copy)]
struct Announced {
    size: u64,
    mode: u32,
    tag: u64,
}

/// The partial file a put writes into, in the directory handle it will be renamed in.
struct Receiving {
    dir: Landing,
    name: OsString,
    partial: Partial,
    part: PathBuf,
}

async fn put(
    sender: &mut SecureSender,
    receiver: &mut SecureReceiver,
    made: &MadeDirs,
    target: &Path,
    announced: Announced,
) -> Result<(), SecureStreamError> {
    let size = announced.size;
    let (mut receiving, mut hasher, offset, mut problem) = match open_part(made, target, announced)
    {
        Ok((receiving, hasher, offset)) => (Some(receiving), hasher, offset, None),
        Err(err) => (None, Sha256::new(), 0, Some(err)),
    };
    sender.send(&CopyReply::Resume { offset }).await?;
    let mut written = offset;
    let digest = loop {
        match receiver.recv::<CopyRequest>().await? {
            Some(CopyRequest::Chunk(bytes)) => {
                if problem.is_some() {
                    continue;
                }
                written = written.saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
                if written > size {
                    problem = Some(PutError::TooLong { size });
                    continue;
                }
                if let Some(receiving) = receiving.as_mut()
                    && let Err(err) = receiving.partial.file().write_all(&bytes)
                {
                    problem = Some(PutError::Write {
                        part: receiving.part.clone(),
                        source: err,
                    });
                    continue;
                }
                hasher.update(&bytes);
            }
            Some(CopyRequest::PutEnd { sha256 }) => break sha256,
            Some(_) => {
                return Err(SecureStreamError::Io(
                    "the client sent another request in the middle of a file".to_owned(),
                ));
            }
            // Cut mid-file: the partial file stays for the next attempt.
            None => return Err(cmdop_proto::e2e::ChannelError::Truncated.into()),
        }
    };
    let result = match (problem, receiving) {
        (Some(err), _) => Err(err),
        (None, _) if written != size => Err(PutError::TooShort { written, size }),
        (None, None) => Err(PutError::NotOpen),
        (None, Some(receiving)) if <[u8; 32]>::from(hasher.finalize()) != digest => {
            receiving.partial.discard(&receiving.dir);
            Err(PutError::Corrupted(target.to_path_buf()))
        }
        (None, Some(receiving)) => {
            let mode = announced.mode;
            tokio::task::spawn_blocking(move || {
                let Receiving {
                    dir, name, partial, ..
                } = receiving;
                partial.finish(&dir, &name, mode).map_err(PutError::from)
            })
            .await
            .unwrap_or(Err(PutError::Lost))
        }
    };
    let reply = match result {
        Ok(()) => CopyReply::Done,
        Err(err) => failed(err.to_string()),
    };
    sender.send(&reply).await
}

/// Opens (or resumes) the partial file for `target` in its directory's handle: returns it positioned at its
/// end, the hash of what it holds, and that length.
fn open_part(
    made: &MadeDirs,
    target: &Path,
    announced: Announced,
) -> Result<(Receiving, Sha256, u64), PutError> {
    let (dir, name) = made.place_of(target)?;
    if dir.standing(&name)? == Standing::Dir {
        return Err(PutError::Occupied(target.to_path_buf()));
    }
    let text = name
        .to_str()
        .ok_or_else(|| PutError::NotAFileName(target.to_path_buf()))?;
    let mut partial = dir.partial(text, announced.tag, announced.size)?;
    let part = dir.shown().join(partial.name());
    let cannot = |source: std::io::Error| PutError::Write {
        part: part.clone(),
        source,
    };
    let length = partial.length();
    let file = partial.file();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut left = length;
    while left > 0 {
        let want = usize::try_from(left.min(buffer.len() as u64)).unwrap_or(buffer.len());
        let slice = buffer.get_mut(..want).unwrap_or_default();
        file.read_exact(slice).map_err(cannot)?;
        hasher.update(&*slice);
        left -= want as u64;
    }
    file.seek(SeekFrom::Start(length)).map_err(cannot)?;
    let receiving = Receiving {
        dir,
        name,
        partial,
        part,
    };
    Ok((receiving, hasher, length))
}

/// `cp -p`: gives a file or directory the source's modification time, without following a final symlink (the
/// access time is left alone).
fn set_modified(target: &Path, modified_ns: u64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(modified_ns);
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(target)?;
    file.set_modified(when)
}

async fn get(
    sender: &mut SecureSender,
    source: &Path,
    shown: &str,
    offset: u64,
) -> Result<(), SecureStreamError> {
    let opened = File::open(source).and_then(|file| {
        let metadata = file.metadata()?;
        Ok((file, metadata))
    });
    let (mut file, metadata) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            return sender
                .send(&failed(format!("cannot read {shown}: {err}")))
                .await;
        }
    };
    if !metadata.is_file() {
        return sender
            .send(&failed(format!("{shown} is not a regular file")))
            .await;
    }
    if offset > metadata.len() {
        return sender
            .send(&failed(format!(
                "the partial copy is longer than {shown} ({} bytes); remove the partial file and run again",
                metadata.len()
            )))
            .await;
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; MAX_CHUNK];
    // The bytes the client already has still count towards the whole-file hash.
    let mut prefix = (&mut file).take(offset);
    loop {
        match prefix.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(buffer.get(..n).unwrap_or_default()),
            Err(err) => {
                return sender
                    .send(&failed(format!("cannot read {shown}: {err}")))
                    .await;
            }
        }
    }
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                let chunk = buffer.get(..n).unwrap_or_default();
                hasher.update(chunk);
                sender.send(&CopyReply::Chunk(chunk.to_vec())).await?;
            }
            Err(err) => {
                return sender
                    .send(&failed(format!("cannot read {shown}: {err}")))
                    .await;
            }
        }
    }
    sender
        .send(&CopyReply::GetEnd {
            sha256: hasher.finalize().into(),
            mode: metadata.mode() & 0o7777,
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn remote_paths_resolve_against_home() {
        let home = Path::new("/home/u");
        assert_eq!(resolve(home, "/etc/x"), PathBuf::from("/etc/x"));
        assert_eq!(resolve(home, "a/b"), PathBuf::from("/home/u/a/b"));
        assert_eq!(resolve(home, "~/a"), PathBuf::from("/home/u/a"));
        assert_eq!(resolve(home, "~"), PathBuf::from("/home/u"));
        assert_eq!(resolve(home, ""), PathBuf::from("/home/u"));
    }

    #[test]
    fn put_failures_read_as_they_always_have() {
        let io = || std::io::Error::from_raw_os_error(13);
        let cases = [
            (
                PutError::NotAFileName(PathBuf::from("/")),
                "/ is not a file name".to_owned(),
            ),
            (
                PutError::Write {
                    part: PathBuf::from("/d/.f.0000000000000001.cmdop-part"),
                    source: io(),
                },
                format!("cannot write /d/.f.0000000000000001.cmdop-part: {}", io()),
            ),
            (
                PutError::TooLong { size: 5 },
                "more data than the announced 5 bytes; the source changed during the copy"
                    .to_owned(),
            ),
            (
                PutError::TooShort {
                    written: 3,
                    size: 5,
                },
                "3 bytes arrived, 5 were announced; the source changed during the copy, run it again"
                    .to_owned(),
            ),
            (
                PutError::Corrupted(PathBuf::from("/d/f")),
                "/d/f arrived corrupted (SHA-256 mismatch) and was discarded; run the copy again"
                    .to_owned(),
            ),
            (
                PutError::NotOpen,
                "the partial file was not open".to_owned(),
            ),
            (
                PutError::Landing(LandingError::Io {
                    action: "set the mode of",
                    path: PathBuf::from("/d/f"),
                    source: io(),
                }),
                format!("cannot set the mode of /d/f: {}", io()),
            ),
            (
                PutError::Landing(LandingError::Io {
                    action: "sync",
                    path: PathBuf::from("/d/f"),
                    source: io(),
                }),
                format!("cannot sync /d/f: {}", io()),
            ),
            (
                PutError::Landing(LandingError::Io {
                    action: "rename the partial file to",
                    path: PathBuf::from("/d/f"),
                    source: io(),
                }),
                format!("cannot rename the partial file to /d/f: {}", io()),
            ),
            (
                PutError::Occupied(PathBuf::from("/d/f")),
                "/d/f is in the way: a directory or other non-file stands there; move it away"
                    .to_owned(),
            ),
            (PutError::Lost, "the agent lost track of the file".to_owned()),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }

    fn announced(size: u64, tag: u64) -> Announced {
        Announced {
            size,
            mode: 0o644,
            tag,
        }
    }

    /// Leaves a partial file of `target` for version `tag` holding `bytes`, as a cut transfer would.
    fn leave_partial(target: &Path, tag: u64, bytes: &[u8]) -> PathBuf {
        let (receiving, _, _) =
            open_part(&MadeDirs::default(), target, announced(100, tag)).unwrap();
        let Receiving {
            mut partial, part, ..
        } = receiving;
        partial.file().write_all(bytes).unwrap();
        part
    }

    #[test]
    fn a_partial_file_resumes_and_stale_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f.bin");
        let old = leave_partial(&target, 1, b"old");
        let current = leave_partial(&target, 2, b"hello");
        let made = MadeDirs::default();
        let (receiving, hasher, offset) = open_part(&made, &target, announced(10, 2)).unwrap();
        assert_eq!(receiving.part, current);
        assert_eq!(offset, 5);
        assert_eq!(
            hasher.finalize().as_slice(),
            Sha256::digest(b"hello").as_slice()
        );
        assert!(
            !old.exists(),
            "a partial file of another version is removed"
        );
        drop(receiving);
        // A partial file longer than the source starts over.
        let (_, _, offset) = open_part(&made, &target, announced(3, 2)).unwrap();
        assert_eq!(offset, 0);
    }

    #[test]
    fn a_directory_is_never_made_through_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("d")).unwrap();
        let mut made = MadeDirs::default();
        let err = made.make(&dir.path().join("d"), 0o777).unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        let mode = fs::metadata(&elsewhere).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn a_made_directory_swapped_for_a_symlink_still_receives_through_its_handle() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let pushed = dir.path().join("pushed");
        let mut made = MadeDirs::default();
        made.make(&pushed, 0o755).unwrap();
        // Someone who can write beside it moves the new directory away and plants a symlink in its place.
        fs::rename(&pushed, dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &pushed).unwrap();
        made.make(&pushed.join("sub"), 0o755).unwrap();
        made.symlink(&pushed.join("sub/link"), "/etc").unwrap();
        let (receiving, _, _) = open_part(&made, &pushed.join("sub/f"), announced(2, 1)).unwrap();
        let Receiving {
            dir: landing,
            name,
            mut partial,
            ..
        } = receiving;
        partial.file().write_all(b"hi").unwrap();
        partial.finish(&landing, &name, 0o644).unwrap();
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(fs::read(dir.path().join("moved/sub/f")).unwrap(), b"hi");
        assert!(fs::symlink_metadata(dir.path().join("moved/sub/link")).is_ok());
    }
}
