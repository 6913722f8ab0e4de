//! Where the receiving side of a copy writes, on either end of the contour: the CLI pulling from a machine,
//! the agent receiving a push. The peer chooses names, and someone else may own the directory; neither may
//! steer a write anywhere else.
//!
//! - Everything below a directory the person named is reached from a handle of that directory, one plain
//!   component at a time, never through a symlink (cap-std: `openat2` with `RESOLVE_BENEATH` where the kernel
//!   has it and an equivalent checked walk elsewhere; each step here also refuses a symlink, which makes the
//!   walk as strict as `RESOLVE_NO_SYMLINKS`). Modes are set through handles, so a chmod never follows one.
//! - A file being received is written under a partial name with a random part the peer cannot predict,
//!   created with `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600. A later run resumes only from a partial file
//!   that is a regular file owned by this user with no other link to it; anything else of that name is left
//!   alone.
//! - A file gets its final name by `renameat` in the same directory handle: a symlink standing there is
//!   replaced, never followed.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use cap_fs_ext::{DirExt as _, FollowSymlinks, OpenOptionsFollowExt as _, OpenOptionsSyncExt as _};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _};
use cmdop_proto::ops::copy::{parse_part_name, part_name};
use rand_core::{OsRng, RngCore as _};

/// How many symlinks [`Landing::symlink_leaves`] follows before it calls a chain a loop (Linux's limit).
const MAX_SYMLINK_HOPS: u32 = 40;

/// Why a copy could not write where it was asked to.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LandingError {
    /// A symlink stands where the copy needs a directory, or is in the way of a name from the peer.
    #[error(
        "{} is a symbolic link, and a copy never writes through one; move it away, or name the directory it points to",
        path.display()
    )]
    Symlink {
        /// The symlink.
        path: PathBuf,
    },
    /// Something other than a directory stands where the copy needs one.
    #[error("{} is not a directory; move it away or choose another destination", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A name that is not one plain path component below the destination (`..`, `/`, empty).
    #[error("{name:?} is not a plain relative path below {}", below.display())]
    NotPlain {
        /// The name as given.
        name: PathBuf,
        /// The directory it should be below.
        below: PathBuf,
    },
    /// The file system refused an operation.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// What stands at a name in a directory, without following a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Nothing.
    Nothing,
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink.
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// An open directory that copies land in, with the path it is shown as in messages.
#[derive(Debug)]
pub struct Landing {
    dir: Dir,
    shown: PathBuf,
}

impl Landing {
    /// Opens a directory the person named. Symlinks in `path` are followed, as any program follows the paths
    /// it is given; everything below is reached through this handle and follows none.
    pub fn open_named(path: &Path) -> Result<Self, LandingError> {
        let dir = Dir::open_ambient_dir(path, ambient_authority())
            .map_err(|source| io_error("open the directory", path, source))?;
        Ok(Self {
            dir,
            shown: path.to_path_buf(),
        })
    }

    /// Gives `name` here the modification time `modified_ns` (nanoseconds since the epoch, as the machine
    /// reported it; `cp -p`), without following a symlink; the access time is left alone.
    pub fn set_modified(&self, name: &OsStr, modified_ns: u64) -> Result<(), LandingError> {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(modified_ns);
        self.dir
            .set_symlink_times(
                name,
                None,
                Some(cap_fs_ext::SystemTimeSpec::Absolute(
                    cap_std::time::SystemTime::from_std(when),
                )),
            )
            .map_err(|source| {
                io_error(
                    "set the modification time of",
                    &self.shown.join(name),
                    source,
                )
            })
    }

    /// The path this directory is shown as.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// The existing directory `relative` below this one, each component a real directory.
    pub fn subdir(&self, relative: &Path) -> Result<Self, LandingError> {
        let mut here = self.duplicate()?;
        for name in self.plain(relative)? {
            here = here.child(name)?;
        }
        Ok(here)
    }

    /// Directory `name` here: created if missing, else the directory already there (never a symlink); either
    /// way given `mode` through its handle.
    pub fn make_dir(&self, name: &OsStr, mode: u32) -> Result<Self, LandingError> {
        let child = self.ensure_dir(name)?;
        child.set_mode(mode)?;
        Ok(child)
    }

    /// Every directory along `relative` below this one, created where missing (with the default mode); the
    /// last one also gets `mode`.
    pub fn make_dirs(&self, relative: &Path, mode: u32) -> Result<Self, LandingError> {
        let mut here = self.duplicate()?;
        for name in self.plain(relative)? {
            here = here.ensure_dir(name)?;
        }
        here.set_mode(mode)?;
        Ok(here)
    }

    /// What stands at `name` here, without following a symlink.
    pub fn standing(&self, name: &OsStr) -> Result<Standing, LandingError> {
        match self.dir.symlink_metadata(name) {
            Ok(metadata) => {
                let kind = metadata.file_type();
                Ok(if kind.is_symlink() {
                    Standing::Symlink
                } else if kind.is_dir() {
                    Standing::Dir
                } else if kind.is_file() {
                    Standing::File
                } else {
                    Standing::Other
                })
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Standing::Nothing),
            Err(source) => Err(self.io("look at", name, source)),
        }
    }

    /// Creates the symlink `name` → `target` here, replacing a symlink already there (an earlier run's own);
    /// anything else standing there is an error. `target` is stored verbatim and not resolved now.
    pub fn place_symlink(&self, name: &OsStr, target: &str) -> Result<(), LandingError> {
        if self.standing(name)? == Standing::Symlink {
            self.remove(name)?;
        }
        self.dir
            .symlink_contents(target, name)
            .map_err(|source| self.io("create the symlink", name, source))
    }

    /// The target of the symlink `name` here.
    pub fn read_link(&self, name: &OsStr) -> Result<PathBuf, LandingError> {
        self.dir
            .read_link_contents(name)
            .map_err(|source| self.io("read the symlink", name, source))
    }

    /// Removes the file or symlink `name` here (a symlink itself, never what it points to).
    pub fn remove(&self, name: &OsStr) -> Result<(), LandingError> {
        self.dir
            .remove_file(name)
            .map_err(|source| self.io("remove", name, source))
    }

    /// Whether the symlink at `link` (a plain relative path below this directory), followed through
    /// everything that stands here now, leads outside this directory. Where a component does not exist the
    /// rest is taken lexically, so a dangling link counts by where it points; an absolute target, a loop, or
    /// a link that cannot be read counts as leaving.
    pub fn symlink_leaves(&self, link: &Path) -> bool {
        let Ok(parts) = self.plain(link) else {
            return true;
        };
        let Some((name, parents)) = parts.split_last() else {
            return true;
        };
        let mut here: PathBuf = parents.iter().collect();
        let mut pending = vec![name.to_os_string()];
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                if !here.pop() {
                    return true;
                }
                continue;
            }
            let dir = self.subdir(&here);
            let standing = dir.as_ref().map(|dir| dir.standing(&part));
            if !matches!(standing, Ok(Ok(Standing::Symlink))) {
                here.push(part);
                continue;
            }
            hops += 1;
            let target = dir.and_then(|dir| dir.read_link(&part));
            match target {
                Ok(target) if hops <= MAX_SYMLINK_HOPS && !target.has_root() => {
                    pending.extend(target.components().rev().filter_map(|c| match c {
                        Component::Normal(name) => Some(name.to_os_string()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    }));
                }
                _ => return true,
            }
        }
        false
    }

    /// The partial file receiving version `tag` of the file `name` here, `size` bytes long when complete.
    /// Resumes the one an earlier run left if it is ours (see the module's rules) and not longer than `size`,
    /// else creates a new one; partial files of other versions of `name` are removed.
    pub fn partial(&self, name: &str, tag: u64, size: u64) -> Result<Partial, LandingError> {
        let mut resumed = None;
        for (candidate, version) in self.partials_of(name)? {
            match version {
                Some(same) if same == tag && resumed.is_none() => {
                    resumed = self.resumable(&candidate);
                }
                Some(same) if same == tag => {}
                // Another version, or an older predictable name: never resumed. Unlinking removes a symlink
                // itself, and in a directory of someone else's only fails.
                _ => {
                    let _ = self.dir.remove_file(&candidate);
                }
            }
        }
        let (file, part) = match resumed {
            Some(found) => found,
            None => self.create_partial(name, tag)?,
        };
        let cannot = |source| self.io("write", OsStr::new(&part), source);
        let mut length = file.metadata().map_err(cannot)?.len();
        if length > size {
            file.set_len(0).map_err(cannot)?;
            length = 0;
        }
        Ok(Partial { file, part, length })
    }

    /// The partial files of `name` here: (file name, `Some(tag)` for the current form, `None` for another).
    fn partials_of(&self, name: &str) -> Result<Vec<(String, Option<u64>)>, LandingError> {
        let entries = self
            .dir
            .entries()
            .map_err(|source| io_error("list", &self.shown, source))?;
        let mut found = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if let Some((tag, nonce)) = parse_part_name(name, file_name) {
                found.push((file_name.to_owned(), nonce.map(|_| tag)));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Opens `candidate` for resuming if it is a regular file of this user with one link; `None` otherwise (it
    /// is then left as it is). Not locked: the copy that left it is usually a stream the other side has not
    /// yet noticed is dead, and the resume must not wait for that.
    fn resumable(&self, candidate: &str) -> Option<(File, String)> {
        let mut options = OpenOptions::new();
        options
            .read(true)
            .write(true)
            .follow(FollowSymlinks::No)
            .nonblock(true);
        let file = self.dir.open_with(candidate, &options).ok()?.into_std();
        let metadata = file.metadata().ok()?;
        let ours = metadata.is_file()
            && metadata.uid() == cmdop_identity::store::private_file::current_uid()
            && metadata.nlink() == 1;
        ours.then(|| (file, candidate.to_owned()))
    }

    fn create_partial(&self, name: &str, tag: u64) -> Result<(File, String), LandingError> {
        let mut options = OpenOptions::new();
        options
            .read(true)
            .write(true)
            .create_new(true)
            .follow(FollowSymlinks::No)
            .mode(0o600);
        let mut attempts = 0;
        loop {
            let part = part_name(name, tag, OsRng.next_u64());
            match self.dir.open_with(&part, &options) {
                Ok(file) => return Ok((file.into_std(), part)),
                // Someone put something at a random name: draw again, a few times.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                }
                Err(source) => return Err(self.io("create", OsStr::new(&part), source)),
            }
        }
    }

    /// Opens the child directory `name`, refusing a symlink.
    fn child(&self, name: &OsStr) -> Result<Self, LandingError> {
        match self.dir.open_dir_nofollow(name) {
            Ok(dir) => Ok(Self {
                dir,
                shown: self.shown.join(name),
            }),
            Err(source) => Err(match self.standing(name) {
                Ok(Standing::Symlink) => LandingError::Symlink {
                    path: self.shown.join(name),
                },
                Ok(Standing::File | Standing::Other) => LandingError::NotADirectory {
                    path: self.shown.join(name),
                },
                _ => self.io("open the directory", name, source),
            }),
        }
    }

    fn ensure_dir(&self, name: &OsStr) -> Result<Self, LandingError> {
        match self.dir.create_dir(name) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(self.io("create the directory", name, source)),
        }
        self.child(name)
    }

    /// Sets this directory's mode through a handle of it (cap-std's handles are `O_PATH`, which `fchmod`
    /// refuses, so a readable handle of `.` is opened for it).
    fn set_mode(&self, mode: u32) -> Result<(), LandingError> {
        self.readable()
            .and_then(|dir| dir.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777)))
            .map_err(|source| io_error("set the mode of", &self.shown, source))
    }

    /// Makes the entries of this directory durable.
    fn sync(&self) -> io::Result<()> {
        self.readable()?.sync_all()
    }

    fn readable(&self) -> io::Result<File> {
        let mut options = OpenOptions::new();
        options.read(true).follow(FollowSymlinks::No);
        Ok(self.dir.open_with(".", &options)?.into_std())
    }

    fn duplicate(&self) -> Result<Self, LandingError> {
        let dir = self
            .dir
            .try_clone()
            .map_err(|source| io_error("open the directory", &self.shown, source))?;
        Ok(Self {
            dir,
            shown: self.shown.clone(),
        })
    }

    /// The components of `relative`, each one plain name.
    fn plain<'a>(&self, relative: &'a Path) -> Result<Vec<&'a OsStr>, LandingError> {
        relative
            .components()
            .map(|component| match component {
                Component::Normal(name) => Ok(name),
                _ => Err(LandingError::NotPlain {
                    name: relative.to_path_buf(),
                    below: self.shown.clone(),
                }),
            })
            .collect()
    }

    fn io(&self, action: &'static str, name: &OsStr, source: io::Error) -> LandingError {
        io_error(action, &self.shown.join(name), source)
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> LandingError {
    LandingError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A file being received, under its partial name.
#[derive(Debug)]
pub struct Partial {
    file: File,
    part: String,
    length: u64,
}

impl Partial {
    /// The open partial file, positioned at its start.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// How many bytes it held when it was opened (what a resume starts from).
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Gives the file the modification time `modified_ns` (nanoseconds since the epoch; `cp -p`), through its
    /// handle. The rename in [`finish`](Self::finish) keeps it.
    pub fn set_modified(&self, modified_ns: u64) -> io::Result<()> {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(modified_ns);
        self.file.set_modified(when)
    }

    /// Its name in the directory.
    pub fn name(&self) -> &str {
        &self.part
    }

    /// Gives the complete file `mode`, makes it durable, then its final name `target` in `landing` (the
    /// directory it was opened in), replacing whatever stands there that is not a directory, and makes the
    /// new name durable.
    pub fn finish(self, landing: &Landing, target: &OsStr, mode: u32) -> Result<(), LandingError> {
        let shown = landing.shown.join(target);
        self.file
            .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|source| io_error("set the mode of", &shown, source))?;
        self.file
            .sync_all()
            .map_err(|source| io_error("sync", &shown, source))?;
        landing
            .dir
            .rename(&self.part, &landing.dir, target)
            .map_err(|source| io_error("rename the partial file to", &shown, source))?;
        landing
            .sync()
            .map_err(|source| io_error("sync the directory of", &shown, source))
    }

    /// Removes the partial file (a corrupt transfer).
    pub fn discard(self, landing: &Landing) {
        drop(self.file);
        let _ = landing.dir.remove_file(&self.part);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    fn landing() -> (tempfile::TempDir, Landing) {
        let dir = tempfile::tempdir().unwrap();
        let landing = Landing::open_named(dir.path()).unwrap();
        (dir, landing)
    }

    #[test]
    fn walks_and_directories_never_go_through_a_symlink() {
        let (dir, landing) = landing();
        let outside = tempfile::tempdir().unwrap();
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        for result in [
            landing.subdir(Path::new("link")).map(|_| ()),
            landing.subdir(Path::new("link/x")).map(|_| ()),
            landing.make_dir(OsStr::new("link"), 0o777).map(|_| ()),
            landing.make_dirs(Path::new("link/x"), 0o777).map(|_| ()),
        ] {
            assert!(
                matches!(result, Err(LandingError::Symlink { .. })),
                "{result:?}"
            );
        }
        let mode = std::fs::metadata(outside.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700, "a chmod followed the symlink");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(matches!(
            landing.subdir(Path::new("../x")),
            Err(LandingError::NotPlain { .. })
        ));
        let made = landing.make_dirs(Path::new("a/b"), 0o705).unwrap();
        assert_eq!(made.shown(), dir.path().join("a/b"));
        let mode = std::fs::metadata(dir.path().join("a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o705);
    }

    #[test]
    fn a_partial_file_is_new_unpredictable_and_resumes_only_when_it_is_ours() {
        let (dir, landing) = landing();
        let mut first = landing.partial("f", 7, 100).unwrap();
        assert_eq!(first.length(), 0);
        first.file().write_all(b"hello").unwrap();
        let name = first.name().to_owned();
        assert_eq!(parse_part_name("f", &name).map(|(tag, _)| tag), Some(7));
        drop(first);

        let mut again = landing.partial("f", 7, 100).unwrap();
        assert_eq!((again.name(), again.length()), (name.as_str(), 5));
        let mut text = String::new();
        again.file().read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
        drop(again);
        // Another version removes it; a partial file longer than the source starts over.
        let other = landing.partial("f", 8, 100).unwrap();
        assert!(!dir.path().join(&name).exists());
        drop(other);
        let mut long = landing.partial("f", 8, 100).unwrap();
        long.file().write_all(b"too long").unwrap();
        drop(long);
        assert_eq!(landing.partial("f", 8, 3).unwrap().length(), 0);
    }

    #[test]
    fn a_planted_partial_name_is_never_written_through() {
        let (dir, landing) = landing();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let planted = part_name("f", 7, 1);
        std::os::unix::fs::symlink(&victim, dir.path().join(&planted)).unwrap();
        std::fs::hard_link(&victim, dir.path().join(part_name("f", 7, 2))).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(".f.0000000000000007.cmdop-part"))
            .unwrap();
        let mut partial = landing.partial("f", 7, 100).unwrap();
        assert_eq!(partial.length(), 0);
        assert_ne!(partial.name(), planted);
        partial.file().write_all(b"new").unwrap();
        partial.finish(&landing, OsStr::new("f"), 0o644).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"new");
        // The older, predictable name is removed (the symlink itself, not what it points to).
        assert!(
            std::fs::symlink_metadata(dir.path().join(".f.0000000000000007.cmdop-part")).is_err()
        );
    }

    #[test]
    fn finishing_replaces_a_symlink_at_the_target_instead_of_following_it() {
        let (dir, landing) = landing();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("f")).unwrap();
        let mut partial = landing.partial("f", 1, 3).unwrap();
        partial.file().write_all(b"new").unwrap();
        partial.finish(&landing, OsStr::new("f"), 0o640).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let metadata = std::fs::symlink_metadata(dir.path().join("f")).unwrap();
        assert!(metadata.is_file());
        assert_eq!(metadata.permissions().mode() & 0o7777, 0o640);
    }

    #[test]
    fn a_symlink_leaves_by_where_the_whole_chain_leads() {
        let (dir, landing) = landing();
        let a = dir.path().join("a");
        std::fs::create_dir(&a).unwrap();
        for (name, target) in [
            ("up", ".."),
            ("p1", "up/.."),
            ("p2", "p1/.."),
            ("in", "up/a/up"),
        ] {
            std::os::unix::fs::symlink(target, a.join(name)).unwrap();
        }
        std::os::unix::fs::symlink("/etc", a.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop", a.join("loop")).unwrap();
        std::os::unix::fs::symlink("missing/../../..", a.join("dangling-out")).unwrap();
        std::os::unix::fs::symlink("missing/x", a.join("dangling-in")).unwrap();
        let leaves = |name: &str| landing.symlink_leaves(&Path::new("a").join(name));
        assert!(!leaves("up") && !leaves("in") && !leaves("dangling-in"));
        assert!(leaves("p1") && leaves("p2") && leaves("abs") && leaves("loop"));
        assert!(leaves("dangling-out"));
        assert!(landing.symlink_leaves(Path::new("../x")));
    }

    #[test]
    fn symlinks_replace_only_symlinks() {
        let (dir, landing) = landing();
        landing.place_symlink(OsStr::new("l"), "/etc").unwrap();
        landing.place_symlink(OsStr::new("l"), "../x").unwrap();
        assert_eq!(
            landing.read_link(OsStr::new("l")).unwrap(),
            PathBuf::from("../x")
        );
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(landing.place_symlink(OsStr::new("file"), "y").is_err());
        assert_eq!(
            landing.standing(OsStr::new("file")).unwrap(),
            Standing::File
        );
        assert_eq!(
            landing.standing(OsStr::new("none")).unwrap(),
            Standing::Nothing
        );
    }
}
