//! Copy streams on the agent: answer a client's file requests (`docs/protocol.md`, "Copy streams") against
//! the agent user's file system.
//!
//! A file being received lives under a partial name (`.NAME.TAG.cmdop-part`, mode 0600) beside its target
//! and gets the final name only after its whole-file SHA-256 matched and it was synced, so a target path
//! never holds a partial file. A transfer that is cut leaves the partial file for the next attempt to resume.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use cmdop_client::secure_stream::{SecureReceiver, SecureSender, SecureStreamError};
use cmdop_proto::e2e::CloseReason;
use cmdop_proto::ops::MAX_CHUNK;
use cmdop_proto::ops::copy::{CopyReply, CopyRequest, Entry, EntryKind, PART_SUFFIX, part_name};
use sha2::{Digest as _, Sha256};

use crate::exec;

/// Why a received file did not get its final name; the message is the `Failed` reply the client shows.
#[derive(Debug, thiserror::Error)]
enum PutError {
    /// The target path has no file name to put a partial file beside.
    #[error("{} is not a file name", .0.display())]
    NotAFileName(PathBuf),
    /// The partial file could not be opened, read back, or written.
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
    /// The partial file was never opened (an earlier error should have been reported instead).
    #[error("the partial file was not open")]
    NotOpen,
    /// Setting the announced mode failed.
    #[error("cannot set the mode of {}: {source}", target.display())]
    SetMode {
        target: PathBuf,
        source: std::io::Error,
    },
    /// Syncing the file to disk failed.
    #[error("cannot sync {}: {source}", target.display())]
    Sync {
        target: PathBuf,
        source: std::io::Error,
    },
    /// Renaming the partial file to the target failed.
    #[error("cannot rename the partial file to {}: {source}", target.display())]
    Rename {
        target: PathBuf,
        source: std::io::Error,
    },
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
                put(&mut sender, &mut receiver, &target, size, mode, tag).await?;
            }
            CopyRequest::Get { path, offset } => {
                get(&mut sender, &resolve(&home, &path), &path, offset).await?;
            }
            CopyRequest::Mkdir { path, mode } => {
                let target = resolve(&home, &path);
                let reply = match fs::create_dir_all(&target).and_then(|()| {
                    fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777))
                }) {
                    Ok(()) => CopyReply::Done,
                    Err(err) => failed(format!("cannot create directory {path}: {err}")),
                };
                sender.send(&reply).await?;
            }
            CopyRequest::Symlink { path, target } => {
                let link = resolve(&home, &path);
                if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                    let _ = fs::remove_file(&link);
                }
                let reply = match std::os::unix::fs::symlink(&target, &link) {
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

/// The partial file for `target` and a source version `tag`.
pub fn part_path(target: &Path, tag: u64) -> Option<PathBuf> {
    let name = target.file_name()?.to_str()?;
    Some(target.with_file_name(part_name(name, tag)))
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

async fn put(
    sender: &mut SecureSender,
    receiver: &mut SecureReceiver,
    target: &Path,
    size: u64,
    mode: u32,
    tag: u64,
) -> Result<(), SecureStreamError> {
    let opened = open_part(target, size, tag);
    let (mut file, part, mut hasher, offset, mut problem) = match opened {
        Ok((file, part, hasher, offset)) => (Some(file), part, hasher, offset, None),
        Err(err) => (None, PathBuf::new(), Sha256::new(), 0, Some(err)),
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
                if let Some(file) = file.as_mut()
                    && let Err(err) = file.write_all(&bytes)
                {
                    problem = Some(PutError::Write {
                        part: part.clone(),
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
    let result = match problem {
        Some(err) => Err(err),
        None if written != size => Err(PutError::TooShort { written, size }),
        None if <[u8; 32]>::from(hasher.finalize()) != digest => {
            let _ = fs::remove_file(&part);
            Err(PutError::Corrupted(target.to_path_buf()))
        }
        None => {
            let (part, target) = (part.clone(), target.to_path_buf());
            let file = file.take();
            tokio::task::spawn_blocking(move || finish(file, &part, &target, mode))
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

/// Opens (or resumes) the partial file: returns it positioned at its end, its path, the hash of what it
/// holds, and that length.
fn open_part(target: &Path, size: u64, tag: u64) -> Result<(File, PathBuf, Sha256, u64), PutError> {
    let part =
        part_path(target, tag).ok_or_else(|| PutError::NotAFileName(target.to_path_buf()))?;
    remove_stale_parts(target, &part);
    let cannot = |source: std::io::Error| PutError::Write {
        part: part.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&part)
        .map_err(cannot)?;
    let mut length = file.metadata().map_err(cannot)?.len();
    if length > size {
        file.set_len(0).map_err(cannot)?;
        length = 0;
    }
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
    Ok((file, part, hasher, length))
}

/// Partial files of other source versions of the same target can never be resumed: remove them.
fn remove_stale_parts(target: &Path, keep: &Path) {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let middle = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(PART_SUFFIX));
        if middle.is_some_and(|tag| tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()))
            && entry.path() != keep
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// `cp -p`: gives a file or directory the source's modification time, without following a final symlink (the
/// access time is left alone).
fn set_modified(target: &Path, modified_ns: u64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(modified_ns);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(target)?;
    file.set_modified(when)
}

/// Mode, fsync, rename, fsync of the directory: the target appears complete or not at all.
fn finish(file: Option<File>, part: &Path, target: &Path, mode: u32) -> Result<(), PutError> {
    let file = file.ok_or(PutError::NotOpen)?;
    file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|source| PutError::SetMode {
            target: target.to_path_buf(),
            source,
        })?;
    file.sync_all().map_err(|source| PutError::Sync {
        target: target.to_path_buf(),
        source,
    })?;
    drop(file);
    fs::rename(part, target).map_err(|source| PutError::Rename {
        target: target.to_path_buf(),
        source,
    })?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
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
                PutError::SetMode {
                    target: PathBuf::from("/d/f"),
                    source: io(),
                },
                format!("cannot set the mode of /d/f: {}", io()),
            ),
            (
                PutError::Sync {
                    target: PathBuf::from("/d/f"),
                    source: io(),
                },
                format!("cannot sync /d/f: {}", io()),
            ),
            (
                PutError::Rename {
                    target: PathBuf::from("/d/f"),
                    source: io(),
                },
                format!("cannot rename the partial file to /d/f: {}", io()),
            ),
            (PutError::Lost, "the agent lost track of the file".to_owned()),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn a_partial_file_resumes_and_stale_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f.bin");
        let old = part_path(&target, 1).unwrap();
        fs::write(&old, b"old").unwrap();
        let current = part_path(&target, 2).unwrap();
        fs::write(&current, b"hello").unwrap();
        let (_, part, hasher, offset) = open_part(&target, 10, 2).unwrap();
        assert_eq!(part, current);
        assert_eq!(offset, 5);
        assert_eq!(
            hasher.finalize().as_slice(),
            Sha256::digest(b"hello").as_slice()
        );
        assert!(
            !old.exists(),
            "a partial file of another version is removed"
        );
        // A partial file longer than the source starts over.
        let (_, _, _, offset) = open_part(&target, 3, 2).unwrap();
        assert_eq!(offset, 0);
    }
}
