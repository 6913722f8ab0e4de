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
        Err(message) => (None, PathBuf::new(), Sha256::new(), 0, Some(message)),
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
                    problem = Some(format!(
                        "more data than the announced {size} bytes; the source changed during the copy"
                    ));
                    continue;
                }
                if let Some(file) = file.as_mut()
                    && let Err(err) = file.write_all(&bytes)
                {
                    problem = Some(format!("cannot write {}: {err}", part.display()));
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
    let reply = match problem {
        Some(message) => failed(message),
        None if written != size => failed(format!(
            "{written} bytes arrived, {size} were announced; the source changed during the copy, run it again"
        )),
        None if <[u8; 32]>::from(hasher.finalize()) != digest => {
            let _ = fs::remove_file(&part);
            failed(format!(
                "{} arrived corrupted (SHA-256 mismatch) and was discarded; run the copy again",
                target.display()
            ))
        }
        None => {
            let (part, target) = (part.clone(), target.to_path_buf());
            let file = file.take();
            let finished = tokio::task::spawn_blocking(move || finish(file, &part, &target, mode))
                .await
                .unwrap_or_else(|_| Err("the agent lost track of the file".to_owned()));
            match finished {
                Ok(()) => CopyReply::Done,
                Err(message) => failed(message),
            }
        }
    };
    sender.send(&reply).await
}

/// Opens (or resumes) the partial file: returns it positioned at its end, its path, the hash of what it
/// holds, and that length.
fn open_part(target: &Path, size: u64, tag: u64) -> Result<(File, PathBuf, Sha256, u64), String> {
    let part =
        part_path(target, tag).ok_or_else(|| format!("{} is not a file name", target.display()))?;
    remove_stale_parts(target, &part);
    let cannot = |err: std::io::Error| format!("cannot write {}: {err}", part.display());
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

/// Mode, fsync, rename, fsync of the directory: the target appears complete or not at all.
fn finish(file: Option<File>, part: &Path, target: &Path, mode: u32) -> Result<(), String> {
    let file = file.ok_or_else(|| "the partial file was not open".to_owned())?;
    let cannot =
        |what: &str, err: std::io::Error| format!("cannot {what} {}: {err}", target.display());
    file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| cannot("set the mode of", e))?;
    file.sync_all().map_err(|e| cannot("sync", e))?;
    drop(file);
    fs::rename(part, target).map_err(|e| cannot("rename the partial file to", e))?;
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
