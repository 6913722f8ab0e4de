//! `cmdop connect cp [-r] SRC… DST`: copy files to or from a machine, like scp, with `MACHINE:PATH` on one
//! side.
//!
//! Every file carries a whole-file SHA-256 that the receiving side checks before the file gets its final name
//! (written under a partial name, synced, then renamed); a rerun after an interruption resumes from what
//! arrived. Names that come from the machine (a recursive copy's listing) are never trusted: absolute paths,
//! `..`, control characters, and symlinks that would lead outside the destination are refused.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{IsTerminal as _, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use cmdop_client::Channel;
use cmdop_client::landing::{Landing, LandingError, Partial, Standing};
use cmdop_client::secure_stream::{SecureReceiver, SecureSender};
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::ops::MAX_CHUNK;
use cmdop_proto::ops::copy::{
    CopyReply, CopyRequest, Entry, EntryKind, parse_part_name, version_tag,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::exit::{Failure, Kind};
use crate::global_args::GlobalArgs;
use crate::reach::{self, bulk_runtime};

mod streams;

use streams::{DEFAULT_PARALLEL, Job, PushedRoot, Streams};

/// Flags of `cmdop connect cp`.
#[derive(Debug, Args)]
pub(crate) struct CpArgs {
    /// Copy directories and everything in them (`-R` too, as scp and cp take it).
    #[arg(short = 'r', short_alias = 'R', long)]
    recursive: bool,
    /// Keep each file's and directory's modification time as well as its mode (the mode is always kept).
    #[arg(short = 'p', long)]
    preserve: bool,
    /// Print one JSON summary (files, bytes, resumed_bytes, duration_ms, bytes_per_second) instead of a
    /// progress bar.
    #[arg(long)]
    json: bool,
    /// Send or receive at most this many bytes per second (suffixes K, M, G: powers of 1024); 0 for no limit.
    #[arg(long, default_value = "0", value_name = "RATE")]
    limit_rate: String,
    /// Move up to N files at once, each over its own stream to the machine (1 to 16): one file's round trips and
    /// the receiving side's fsync overlap with the others'. Directories are still made before what goes in
    /// them and symlinks after the files; every file is still verified, synced and renamed before it counts.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PARALLEL,
        value_parser = clap::value_parser!(u8).range(1..=16))]
    parallel: u8,
    /// Sources, then the destination; exactly one side is `MACHINE:PATH` (remote paths are relative to the
    /// machine user's home unless absolute).
    #[arg(required = true, num_args = 2.., value_name = "PATH")]
    paths: Vec<String>,
}

/// What was moved, for the summary.
#[derive(Debug, Default)]
struct Totals {
    files: u64,
    /// Bytes sent or received in this run.
    bytes: u64,
    /// Bytes a resumed file already had from an earlier run.
    resumed: u64,
    /// Remote names refused as unsafe.
    refused: Vec<String>,
}

/// The per-run state every stream of the copy shares.
struct Run {
    progress: ProgressBar,
    files: AtomicU64,
    /// Bytes sent or received in this run.
    bytes: AtomicU64,
    /// Bytes resumed files already had from an earlier run.
    resumed: AtomicU64,
    /// Remote names refused as unsafe.
    refused: Mutex<Vec<String>>,
    limit: Option<u64>,
    started: Instant,
    /// The machine as the person named it, for messages.
    machine: String,
    /// `-p`: give every file and directory its source's modification time.
    preserve: bool,
}

impl Run {
    fn totals(&self) -> Totals {
        Totals {
            files: self.files.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            refused: self
                .refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Counts bytes a resumed file already had.
    fn resumed(&self, bytes: u64) {
        self.resumed.fetch_add(bytes, Ordering::Relaxed);
        self.progress.inc(bytes);
    }
}

/// One copy stream to the machine.
struct Transfer {
    sender: SecureSender,
    receiver: SecureReceiver,
    run: Arc<Run>,
    /// The pushed trees' top directories this stream made (see [`PushedRoot`]).
    roots: Vec<String>,
}

impl Transfer {
    fn new(channel: Channel, run: Arc<Run>) -> Self {
        let Channel {
            sender, receiver, ..
        } = channel;
        Self {
            sender,
            receiver,
            run,
            roots: Vec::new(),
        }
    }
}

/// Runs `cmdop connect cp`.
pub(crate) fn run(
    global: &GlobalArgs,
    workspace: Option<&str>,
    args: CpArgs,
) -> Result<ExitCode, Failure> {
    let limit = parse_rate(&args.limit_rate)?;
    let plan = Plan::from_paths(&args.paths)?;
    let started = Instant::now();
    let runtime = bulk_runtime()?;
    let totals = runtime.block_on(copy(global, workspace, &args, &plan, limit))?;
    summarize(&totals, started.elapsed(), args.json, plan.push)
}

/// What to copy where, from the command line.
struct Plan {
    sources: Vec<Location>,
    destination: Location,
    /// The one machine on the remote side.
    machine: String,
    /// To the machine (else from it).
    push: bool,
}

impl Plan {
    /// Sources then the destination, exactly one side on one machine.
    fn from_paths(paths: &[String]) -> Result<Self, Failure> {
        let Some((destination, sources)) = paths.split_last() else {
            return Err(bad_command_line(
                "give at least one source and a destination",
            ));
        };
        let destination = Location::parse(destination);
        let sources: Vec<Location> = sources.iter().map(|s| Location::parse(s)).collect();
        let (machine, push) = match (&destination, sources.iter().all(Location::is_local)) {
            (Location::Remote { machine, .. }, true) => (machine.clone(), true),
            (Location::Local(_), false) => {
                let mut machines = sources.iter().filter_map(Location::machine);
                let first = machines.next().unwrap_or_default().to_owned();
                if machines.any(|m| m != first) || sources.iter().any(Location::is_local) {
                    return Err(bad_command_line("all sources must be on the same machine"));
                }
                (first, false)
            }
            (Location::Remote { .. }, false) => {
                return Err(bad_command_line(
                    "copying between two machines is not supported; copy through this one",
                ));
            }
            (Location::Local(_), true) => {
                return Err(bad_command_line(
                    "one side must be MACHINE:PATH; for local copies use cp",
                ));
            }
        };
        Ok(Self {
            sources,
            destination,
            machine,
            push,
        })
    }
}

/// Logs in, opens a copy stream to the machine (and more for `--parallel`) and runs the whole plan over them.
async fn copy(
    global: &GlobalArgs,
    workspace: Option<&str>,
    args: &CpArgs,
    plan: &Plan,
    limit: Option<u64>,
) -> Result<Totals, Failure> {
    let reach = reach::login(global, workspace, &plan.machine).await?;
    let first = reach::open(&reach, StreamKind::Copy).await?;
    let run = Arc::new(Run {
        progress: progress_bar(args.json)?,
        files: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        refused: Mutex::new(Vec::new()),
        limit,
        started: Instant::now(),
        machine: plan.machine.clone(),
        preserve: args.preserve,
    });
    let mut streams = Streams::new(
        &reach,
        Transfer::new(first, Arc::clone(&run)),
        args.parallel,
    );
    let result = if plan.push {
        let remote = plan.destination.path().to_owned();
        let local: Vec<PathBuf> = plan
            .sources
            .iter()
            .map(|s| PathBuf::from(s.path()))
            .collect();
        push_all(&mut streams, &local, &remote, args.recursive).await
    } else {
        let remote: Vec<String> = plan.sources.iter().map(|s| s.path().to_owned()).collect();
        pull_all(
            &mut streams,
            &remote,
            Path::new(plan.destination.path()),
            args.recursive,
        )
        .await
    };
    run.progress.finish_and_clear();
    if let Err(failure) = result {
        // A stream cut because the credential was revoked says so, rather than "connection lost".
        return Err(reach::explain(&reach, failure).await);
    }
    streams.end().await?;
    reach.close().await;
    Ok(run.totals())
}

/// Moves one file over `transfer`.
async fn run_job(transfer: &mut Transfer, job: Job) -> Result<(), Failure> {
    match job {
        Job::Put {
            local,
            metadata,
            remote,
            root,
        } => {
            if let Some(root) = root {
                claim_root(transfer, &root).await?;
            }
            put_file(transfer, &local, &metadata, &remote).await
        }
        Job::GetInTree {
            remote,
            entry,
            root,
            relative,
        } => {
            let outcome = match place_of(&root, &relative) {
                Ok((dir, name)) => get_file(transfer, &remote, &entry, dir, name).await,
                Err(refusal) => Err(refusal),
            };
            settle(&transfer.run, &entry.path, outcome)
        }
        Job::Get {
            remote,
            entry,
            local,
        } => get_file_named(transfer, &remote, &entry, &local).await,
    }
}

/// Makes a pushed tree's top directory on this stream, once, before a file goes below it.
async fn claim_root(transfer: &mut Transfer, root: &PushedRoot) -> Result<(), Failure> {
    if !transfer.roots.contains(&root.remote) {
        mkdir(transfer, &root.remote, root.mode).await?;
        transfer.roots.push(root.remote.clone());
    }
    Ok(())
}

/// A progress bar on a terminal's stderr, unless the summary is JSON.
fn progress_bar(json: bool) -> Result<ProgressBar, Failure> {
    if json || !std::io::stderr().is_terminal() {
        return Ok(ProgressBar::hidden());
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} ETA {eta}",
        )
        .map_err(anyhow::Error::from)?,
    );
    Ok(bar)
}

/// The JSON summary when asked for (else one line on a terminal, where the progress bar was), and the exit: a
/// failure if any remote name was refused.
fn summarize(
    totals: &Totals,
    elapsed: Duration,
    json: bool,
    push: bool,
) -> Result<ExitCode, Failure> {
    if !json && std::io::stderr().is_terminal() {
        eprintln!("{}", summary_line(totals, elapsed, push));
    }
    if json {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        println!(
            "{}",
            json!({
                "files": totals.files,
                "bytes": totals.bytes,
                "resumed_bytes": totals.resumed,
                "refused": totals.refused,
                "duration_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                "bytes_per_second": (totals.bytes as f64 / seconds) as u64,
            })
        );
    }
    if totals.refused.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::new(
            Kind::General,
            format!(
                "refused {} unsafe name(s) from the machine (listed above); everything else was copied",
                totals.refused.len()
            ),
        ))
    }
}

/// What stays on the terminal once the progress bar has cleared: `copied 12 files (1.2 GiB) to web-1 in 3.4 s,
/// 350 MiB/s; 200 MiB were already there`.
fn summary_line(totals: &Totals, elapsed: Duration, push: bool) -> String {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let files = if totals.files == 1 { "file" } else { "files" };
    let direction = if push { "sent" } else { "received" };
    let mut line = format!(
        "cmdop: {} {files} {direction}, {} in {seconds:.1} s ({}/s)",
        totals.files,
        binary_bytes(totals.bytes),
        binary_bytes((totals.bytes as f64 / seconds) as u64),
    );
    if totals.resumed > 0 {
        line.push_str(&format!(
            "; {} were already there from an earlier run",
            binary_bytes(totals.resumed)
        ));
    }
    line
}

/// `512 B`, `1.5 KiB`, `3.2 GiB`.
fn binary_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS.get(unit).copied().unwrap_or("B")),
    }
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Local(String),
    Remote { machine: String, path: String },
}

impl Location {
    /// `MACHINE:PATH` when a `:` comes before any `/` (as scp decides); write `./a:b` for a local name with a
    /// colon.
    fn parse(text: &str) -> Self {
        match text.split_once(':') {
            Some((machine, path)) if !machine.is_empty() && !machine.contains('/') => {
                Self::Remote {
                    machine: machine.to_owned(),
                    path: path.to_owned(),
                }
            }
            _ => Self::Local(text.to_owned()),
        }
    }

    fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }

    fn machine(&self) -> Option<&str> {
        match self {
            Self::Remote { machine, .. } => Some(machine),
            Self::Local(_) => None,
        }
    }

    fn path(&self) -> &str {
        match self {
            Self::Local(path) | Self::Remote { path, .. } => path,
        }
    }
}

fn usage(why: &str) -> Failure {
    Failure::new(
        Kind::General,
        format!(
            "{why}; usage: cmdop connect cp [-r] [-p] SRC… DST, e.g. cp ./a.txt web-1:backup/ or cp -r web-1:logs ./"
        ),
    )
}

/// The command line itself is wrong (exit 2, as for any usage error).
fn bad_command_line(why: &str) -> Failure {
    let general = usage(why);
    crate::exit::usage(general.message())
}

/// `0`, `500K`, `10M`, `1G`, or bytes.
fn parse_rate(text: &str) -> Result<Option<u64>, Failure> {
    let bad = || {
        crate::exit::usage(format!(
            "invalid --limit-rate {text:?}: use bytes per second with an optional K, M or G, e.g. 10M"
        ))
    };
    let text = text.trim();
    let (number, multiplier) = match text.char_indices().last() {
        Some((at, 'K' | 'k')) => (text.get(..at).unwrap_or_default(), 1024),
        Some((at, 'M' | 'm')) => (text.get(..at).unwrap_or_default(), 1024 * 1024),
        Some((at, 'G' | 'g')) => (text.get(..at).unwrap_or_default(), 1024 * 1024 * 1024),
        _ => (text, 1),
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let rate = number.saturating_mul(multiplier);
    Ok((rate > 0).then_some(rate))
}

async fn request(transfer: &mut Transfer, request: &CopyRequest) -> Result<CopyReply, Failure> {
    transfer.sender.send(request).await?;
    next_reply(transfer).await
}

async fn next_reply(transfer: &mut Transfer) -> Result<CopyReply, Failure> {
    transfer
        .receiver
        .recv::<CopyReply>()
        .await?
        .ok_or_else(|| Failure::connection_lost("the machine ended the copy stream early"))
}

fn remote_failure(message: String) -> Failure {
    Failure::new(Kind::General, format!("the machine says: {message}"))
}

fn unexpected(reply: &CopyReply) -> Failure {
    Failure::new(
        Kind::General,
        format!("unexpected answer from the machine: {reply:?}"),
    )
}

/// Remote stat; `None` when nothing exists there.
async fn stat(transfer: &mut Transfer, path: &str) -> Result<Option<Entry>, Failure> {
    match request(
        transfer,
        &CopyRequest::Stat {
            path: path.to_owned(),
        },
    )
    .await?
    {
        CopyReply::Entry(entry) => Ok(Some(entry)),
        CopyReply::Missing => Ok(None),
        CopyReply::Failed { message } => Err(remote_failure(message)),
        other => Err(unexpected(&other)),
    }
}

/// Joins a remote directory and a name with `/`.
fn remote_join(dir: &str, name: &str) -> String {
    if dir.is_empty() || dir == "~" {
        name.to_owned()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn local_name(path: &Path) -> Result<String, Failure> {
    let name = path
        .file_name()
        .map(ToOwned::to_owned)
        .or_else(|| {
            fs::canonicalize(path)
                .ok()?
                .file_name()
                .map(ToOwned::to_owned)
        })
        .and_then(|n| n.to_str().map(str::to_owned))
        .ok_or_else(|| usage(&format!("{} has no usable file name", path.display())))?;
    Ok(name)
}

async fn push_all(
    streams: &mut Streams<'_>,
    sources: &[PathBuf],
    destination: &str,
    recursive: bool,
) -> Result<(), Failure> {
    let transfer = streams.first()?;
    let target = stat(transfer, destination).await?;
    let into_dir = matches!(target.as_ref().map(|e| &e.kind), Some(EntryKind::Dir));
    if sources.len() > 1 && !into_dir {
        return Err(usage(&format!(
            "with several sources the destination {destination} must be an existing directory"
        )));
    }
    // Sizes first, so the progress bar knows the total.
    let mut plan = Vec::new();
    for source in sources {
        let metadata =
            fs::metadata(source).with_context(|| format!("cannot read {}", source.display()))?;
        let remote = if into_dir {
            remote_join(destination, &local_name(source)?)
        } else {
            destination.to_owned()
        };
        if metadata.is_dir() {
            if !recursive {
                return Err(usage(&format!(
                    "{} is a directory; add -r",
                    source.display()
                )));
            }
            let entries = walk_local(source)?;
            let bytes: u64 = entries
                .iter()
                .map(|(_, m)| if m.is_file() { m.len() } else { 0 })
                .sum();
            transfer.run.progress.inc_length(bytes);
            plan.push((source.clone(), remote, metadata, Some(entries)));
        } else {
            transfer.run.progress.inc_length(metadata.len());
            plan.push((source.clone(), remote, metadata, None));
        }
    }
    // Single files are spread together; a tree waits for the files before it, and they for it.
    let mut files = Vec::new();
    for (source, remote, metadata, entries) in plan {
        match entries {
            None => files.push(Job::Put {
                local: source,
                metadata,
                remote,
                root: None,
            }),
            Some(entries) => {
                streams.spread(std::mem::take(&mut files)).await?;
                push_tree(streams, &source, &remote, &metadata, entries).await?;
            }
        }
    }
    streams.spread(files).await
}

/// A local directory and everything under it, to `remote`: the directories first, in order on one stream, then
/// the files spread over the streams, then the symlinks and (`-p`) the directories' times.
async fn push_tree(
    streams: &mut Streams<'_>,
    source: &Path,
    remote: &str,
    metadata: &fs::Metadata,
    entries: Vec<(PathBuf, fs::Metadata)>,
) -> Result<(), Failure> {
    let root = Arc::new(PushedRoot {
        remote: remote.to_owned(),
        mode: metadata.mode() & 0o7777,
    });
    let transfer = streams.first()?;
    claim_root(transfer, &root).await?;
    let mut dirs = vec![(remote.to_owned(), modified_ns(metadata))];
    let mut files = Vec::new();
    let mut links = Vec::new();
    for (relative, metadata) in entries {
        let local = source.join(&relative);
        let remote = remote_join(remote, &relative.to_string_lossy());
        if metadata.file_type().is_symlink() {
            links.push((local, remote));
        } else if metadata.is_dir() {
            mkdir(transfer, &remote, metadata.mode()).await?;
            dirs.push((remote, modified_ns(&metadata)));
        } else if metadata.is_file() {
            files.push(Job::Put {
                local,
                metadata,
                remote,
                root: Some(Arc::clone(&root)),
            });
        }
    }
    streams.spread(files).await?;
    let transfer = streams.first()?;
    claim_root(transfer, &root).await?;
    for (local, remote) in links {
        let target = fs::read_link(&local)
            .with_context(|| format!("cannot read link {}", local.display()))?;
        let reply = request(
            transfer,
            &CopyRequest::Symlink {
                path: remote,
                target: target.to_string_lossy().into_owned(),
            },
        )
        .await?;
        expect_done(reply)?;
    }
    // After their contents, which change a directory's time as they arrive; deepest first.
    if transfer.run.preserve {
        for (dir, modified) in dirs.iter().rev() {
            set_remote_modified(transfer, dir, *modified).await?;
        }
    }
    Ok(())
}

/// `-p`: gives a remote file or directory the source's modification time.
async fn set_remote_modified(
    transfer: &mut Transfer,
    path: &str,
    modified_ns: u64,
) -> Result<(), Failure> {
    let reply = request(
        transfer,
        &CopyRequest::SetModified {
            path: path.to_owned(),
            modified_ns,
        },
    )
    .await?;
    expect_done(reply)
}

/// A `Put` the machine refused, in the words of the person's command: the machine names its partial file
/// (`.NAME.TAG-NONCE.cmdop-part`, the nonce its own), the person named the target.
fn put_failed(transfer: &Transfer, local: &Path, remote: &str, tag: u64, message: &str) -> Failure {
    let name = remote.rsplit('/').next().unwrap_or(remote);
    let message = if name.is_empty() {
        message.to_owned()
    } else {
        without_part_names(message, name, tag)
    };
    Failure::new(
        Kind::General,
        format!(
            "cannot copy {} to {}:{remote}: {message}",
            local.display(),
            transfer.run.machine
        ),
    )
}

fn expect_done(reply: CopyReply) -> Result<(), Failure> {
    match reply {
        CopyReply::Done => Ok(()),
        CopyReply::Failed { message } => Err(remote_failure(message)),
        other => Err(unexpected(&other)),
    }
}

async fn mkdir(transfer: &mut Transfer, path: &str, mode: u32) -> Result<(), Failure> {
    let reply = request(
        transfer,
        &CopyRequest::Mkdir {
            path: path.to_owned(),
            mode: mode & 0o7777,
        },
    )
    .await?;
    expect_done(reply)
}

/// Every entry under `root` (relative paths, a directory before its contents), without following symlinks.
fn walk_local(root: &Path) -> Result<Vec<(PathBuf, fs::Metadata)>, Failure> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = root.join(&relative);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let relative = relative.join(&name);
            let metadata = fs::symlink_metadata(root.join(&relative))
                .with_context(|| format!("cannot read {}", root.join(&relative).display()))?;
            if metadata.is_dir() {
                subdirs.push(relative.clone());
            }
            out.push((relative, metadata));
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

async fn put_file(
    transfer: &mut Transfer,
    local: &Path,
    metadata: &fs::Metadata,
    remote: &str,
) -> Result<(), Failure> {
    let cannot = |err: std::io::Error| {
        Failure::new(
            Kind::General,
            format!("cannot read {}: {err}", local.display()),
        )
    };
    let mut file = File::open(local).map_err(cannot)?;
    let size = metadata.len();
    let mode = metadata.mode() & 0o7777;
    let tag = version_tag(size, modified_ns(metadata), mode);
    let reply = request(
        transfer,
        &CopyRequest::Put {
            path: remote.to_owned(),
            size,
            mode,
            tag,
        },
    )
    .await?;
    let offset = match reply {
        CopyReply::Resume { offset } if offset <= size => offset,
        CopyReply::Failed { message } => {
            return Err(put_failed(transfer, local, remote, tag, &message));
        }
        other => return Err(unexpected(&other)),
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; MAX_CHUNK];
    hash_prefix(&mut file, offset, &mut hasher, &mut buffer).map_err(cannot)?;
    transfer.run.resumed(offset);
    loop {
        let n = file.read(&mut buffer).map_err(cannot)?;
        if n == 0 {
            break;
        }
        let chunk = buffer.get(..n).unwrap_or_default();
        hasher.update(chunk);
        transfer
            .sender
            .send(&CopyRequest::Chunk(chunk.to_vec()))
            .await?;
        account(transfer, n).await;
    }
    let reply = request(
        transfer,
        &CopyRequest::PutEnd {
            sha256: hasher.finalize().into(),
        },
    )
    .await?;
    match reply {
        CopyReply::Done => {}
        CopyReply::Failed { message } => {
            return Err(put_failed(transfer, local, remote, tag, &message));
        }
        other => return Err(unexpected(&other)),
    }
    if transfer.run.preserve {
        set_remote_modified(transfer, remote, modified_ns(metadata)).await?;
    }
    transfer.run.files.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn hash_prefix(
    file: &mut File,
    length: u64,
    hasher: &mut Sha256,
    buffer: &mut [u8],
) -> std::io::Result<()> {
    let mut prefix = file.take(length);
    loop {
        let n = prefix.read(buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(buffer.get(..n).unwrap_or_default());
    }
    let file = prefix.into_inner();
    file.seek(SeekFrom::Start(length))?;
    Ok(())
}

/// Counts bytes moved and, under `--limit-rate`, waits until the average rate of all streams together is back
/// under the limit.
async fn account(transfer: &Transfer, n: usize) {
    let run = &transfer.run;
    let n = u64::try_from(n).unwrap_or(u64::MAX);
    let moved = run.bytes.fetch_add(n, Ordering::Relaxed).saturating_add(n);
    run.progress.inc(n);
    if let Some(limit) = run.limit {
        let due = Duration::from_secs_f64(moved as f64 / limit as f64);
        let elapsed = run.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

fn modified_ns(metadata: &fs::Metadata) -> u64 {
    let seconds = u64::try_from(metadata.mtime()).unwrap_or(0);
    let nanos = u64::try_from(metadata.mtime_nsec()).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

async fn pull_all(
    streams: &mut Streams<'_>,
    sources: &[String],
    destination: &Path,
    recursive: bool,
) -> Result<(), Failure> {
    let into_dir = destination.is_dir();
    if sources.len() > 1 && !into_dir {
        return Err(usage(&format!(
            "with several sources the destination {} must be an existing directory",
            destination.display()
        )));
    }
    // Everything is looked up first, so the progress bar knows the total.
    let mut pulls = Vec::new();
    let transfer = streams.first()?;
    for source in sources {
        pulls.push(Pull::look_up(transfer, source, destination, into_dir, recursive).await?);
    }
    // Single files are spread together; a tree waits for the files before it, and they for it.
    let mut files = Vec::new();
    for pull in pulls {
        match pull.tree {
            None => files.push(Job::Get {
                remote: pull.source,
                entry: pull.entry,
                local: pull.local,
            }),
            Some(entries) => {
                streams.spread(std::mem::take(&mut files)).await?;
                pull_tree(streams, &pull.source, &pull.entry, &pull.local, entries).await?;
            }
        }
    }
    streams.spread(files).await
}

/// `-p`: gives a local file or directory the source's modification time.
fn set_local_modified(path: &Path, modified_ns: u64) -> Result<(), Failure> {
    let when = std::time::UNIX_EPOCH + Duration::from_nanos(modified_ns);
    File::open(path)
        .and_then(|file| file.set_modified(when))
        .map_err(|err| {
            Failure::new(
                Kind::General,
                format!(
                    "cannot set the modification time of {}: {err}",
                    path.display()
                ),
            )
        })
}

/// One source of a pull: a file, or a directory with everything under it.
struct Pull {
    source: String,
    entry: Entry,
    local: PathBuf,
    /// The directory's entries, for a recursive copy of a directory.
    tree: Option<Vec<Entry>>,
}

impl Pull {
    /// Stats `source` on the machine (and lists it, for a directory), counting its bytes into the progress bar;
    /// it lands at `destination`, or under its own name in it when `into_dir`.
    async fn look_up(
        transfer: &mut Transfer,
        source: &str,
        destination: &Path,
        into_dir: bool,
        recursive: bool,
    ) -> Result<Self, Failure> {
        // A missing file is not a missing machine: exit 1, not 4 (docs/cli.md).
        let entry = stat(transfer, source).await?.ok_or_else(|| {
            Failure::new(
                Kind::General,
                format!(
                    "{}:{source}: no such file or directory on the machine",
                    transfer.run.machine
                ),
            )
        })?;
        let name = remote_base_name(source)?;
        let local = if into_dir {
            destination.join(&name)
        } else {
            destination.to_path_buf()
        };
        let tree = match entry.kind {
            EntryKind::File => {
                transfer.run.progress.inc_length(entry.size);
                None
            }
            EntryKind::Dir if recursive => {
                let entries = list(transfer, source).await?;
                transfer
                    .run
                    .progress
                    .inc_length(entries.iter().map(|e| e.size).sum());
                Some(entries)
            }
            EntryKind::Dir => return Err(usage(&format!("{source} is a directory; add -r"))),
            EntryKind::Symlink { .. } => {
                return Err(usage(&format!(
                    "{source} is a symbolic link; name the file or directory it points to"
                )));
            }
        };
        Ok(Self {
            source: source.to_owned(),
            entry,
            local,
            tree,
        })
    }
}

/// A directory and everything under it. Every name comes from the machine and is checked before anything is
/// written; an unsafe one is refused (and reported), the rest is copied. Everything below `local` is reached
/// through a handle of it, never through a symlink. The directories are made first, in the listing's order;
/// then the files are spread over the streams; the symlinks from the machine are made last, then each is
/// followed through everything the copy made and removed if it leads outside.
async fn pull_tree(
    streams: &mut Streams<'_>,
    source: &str,
    top: &Entry,
    local: &Path,
    entries: Vec<Entry>,
) -> Result<(), Failure> {
    create_dir(local, top.mode)?;
    let root = Arc::new(Landing::open_named(local).map_err(landing_failure)?);
    let run = Arc::clone(&streams.first()?.run);
    let mut links = Vec::new();
    let mut files = Vec::new();
    // For `-p`: each directory made, with the time to give it once its contents are in.
    let mut dirs = Vec::new();
    for child in entries {
        let relative = match safe_relative(&child.path) {
            Ok(relative) => relative,
            Err(why) => {
                refuse(&run, &child.path, why);
                continue;
            }
        };
        let remote = remote_join(source, &child.path);
        let outcome = match &child.kind {
            EntryKind::Dir => {
                let made = make_dir(&root, &relative, child.mode);
                if made.is_ok() {
                    dirs.push((relative.clone(), child.modified_ns));
                }
                made
            }
            EntryKind::File => {
                files.push(Job::GetInTree {
                    remote,
                    entry: child,
                    root: Arc::clone(&root),
                    relative,
                });
                continue;
            }
            EntryKind::Symlink { target } => match symlink_stays_inside(&relative, target) {
                Ok(()) => {
                    links.push((child.path.clone(), relative, target.clone()));
                    Ok(())
                }
                Err(why) => Err(Refusal::Unsafe(why.to_owned())),
            },
        };
        settle(&run, &child.path, outcome)?;
    }
    streams.spread(files).await?;
    place_symlinks(&run, &root, links)?;
    // Directory times last, since their contents change them as they arrive; deepest first.
    if run.preserve {
        for (relative, modified_ns) in dirs.iter().rev() {
            if let Ok((dir, name)) = place_of(&root, relative) {
                dir.set_modified(&name, *modified_ns)
                    .map_err(landing_failure)?;
            }
        }
        set_local_modified(local, top.modified_ns)?;
    }
    Ok(())
}

/// Why one name from the machine was not copied: refused and reported (the rest goes on), or a failure that
/// ends the copy.
enum Refusal {
    Unsafe(String),
    Fatal(Failure),
}

impl From<Failure> for Refusal {
    fn from(failure: Failure) -> Self {
        Self::Fatal(failure)
    }
}

impl From<LandingError> for Refusal {
    fn from(err: LandingError) -> Self {
        match err {
            LandingError::Symlink { .. } => Self::Unsafe(
                "a symlink on the way would lead the write outside the destination".into(),
            ),
            LandingError::NotADirectory { .. } | LandingError::NotPlain { .. } => {
                Self::Unsafe(err.to_string())
            }
            LandingError::Io { ref source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Self::Unsafe("its directory is not in the listing".into())
            }
            err => Self::Fatal(landing_failure(err)),
        }
    }
}

fn landing_failure(err: LandingError) -> Failure {
    Failure::new(Kind::General, err.to_string())
}

/// Reports a refused name and goes on, or ends the copy.
fn settle(run: &Run, name: &str, outcome: Result<(), Refusal>) -> Result<(), Failure> {
    match outcome {
        Ok(()) => Ok(()),
        Err(Refusal::Unsafe(why)) => {
            refuse(run, name, &why);
            Ok(())
        }
        Err(Refusal::Fatal(failure)) => Err(failure),
    }
}

/// The directory an entry goes in (which must already be there, a real directory) and its name in it.
fn place_of(root: &Landing, relative: &Path) -> Result<(Landing, OsString), Refusal> {
    let name = relative
        .file_name()
        .ok_or_else(|| Refusal::Unsafe("not a plain relative path".into()))?;
    let parent = relative.parent().unwrap_or(Path::new(""));
    Ok((root.subdir(parent)?, name.to_owned()))
}

/// A directory from the machine, without its setuid and setgid bits.
fn make_dir(root: &Landing, relative: &Path, mode: u32) -> Result<(), Refusal> {
    let (dir, name) = place_of(root, relative)?;
    dir.make_dir(&name, mode & MACHINE_MODE_BITS)?;
    Ok(())
}

/// Permission bits a copy from the machine keeps: setuid and setgid are dropped, since the machine is not
/// trusted to hand this user (or root) programs that run as them.
const MACHINE_MODE_BITS: u32 = 0o1777;

/// Makes the machine's symlinks once everything else is there, then removes every one that, followed through
/// all the others, leads outside the destination; removing one can change where others lead, so the check is
/// repeated until none is removed.
fn place_symlinks(
    run: &Run,
    root: &Landing,
    links: Vec<(String, PathBuf, String)>,
) -> Result<(), Failure> {
    let mut placed = Vec::new();
    for (name, relative, target) in links {
        let outcome = place_symlink(root, &relative, &target);
        let made = outcome.is_ok();
        settle(run, &name, outcome)?;
        if made {
            placed.push((name, relative));
        }
    }
    while let Some(at) = placed
        .iter()
        .position(|(_, relative)| root.symlink_leaves(relative))
    {
        let (name, relative) = placed.remove(at);
        let (dir, file_name) = place_of(root, &relative).map_err(|_| {
            landing_failure(LandingError::NotPlain {
                name: relative.clone(),
                below: root.shown().to_path_buf(),
            })
        })?;
        dir.remove(&file_name).map_err(landing_failure)?;
        refuse(
            run,
            &name,
            "symlink that, followed through the other symlinks of the copy, leads outside the destination",
        );
    }
    Ok(())
}

/// One symlink from the machine, replacing only a symlink of an earlier run.
fn place_symlink(root: &Landing, relative: &Path, target: &str) -> Result<(), Refusal> {
    let (dir, name) = place_of(root, relative)?;
    match dir.standing(&name)? {
        Standing::Nothing | Standing::Symlink => Ok(dir.place_symlink(&name, target)?),
        _ => Err(Refusal::Unsafe(
            "something other than a symlink already stands at that name".into(),
        )),
    }
}

fn refuse(run: &Run, name: &str, why: &str) {
    run.progress.suspend(|| {
        eprintln!("cmdop: refusing {name:?} from the machine: {why}");
    });
    run.refused
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(name.to_owned());
}

/// The directory a person named (created if missing, symlinks in its path followed as given), with the
/// machine's mode less setuid and setgid.
fn create_dir(path: &Path, mode: u32) -> Result<(), Failure> {
    fs::create_dir_all(path)
        .and_then(|()| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & MACHINE_MODE_BITS))
        })
        .with_context(|| format!("cannot create directory {}", path.display()))?;
    Ok(())
}

async fn list(transfer: &mut Transfer, path: &str) -> Result<Vec<Entry>, Failure> {
    transfer
        .sender
        .send(&CopyRequest::List {
            path: path.to_owned(),
        })
        .await?;
    let mut entries = Vec::new();
    loop {
        match next_reply(transfer).await? {
            CopyReply::Entry(entry) => entries.push(entry),
            CopyReply::ListEnd => return Ok(entries),
            CopyReply::Failed { message } => return Err(remote_failure(message)),
            other => return Err(unexpected(&other)),
        }
    }
}

/// The last component of a remote path the person typed, as a local name.
fn remote_base_name(path: &str) -> Result<String, Failure> {
    let trimmed = path.trim_end_matches('/');
    let name = trimmed.rsplit('/').next().unwrap_or_default();
    match name {
        "" | "~" => Err(usage(&format!(
            "{path:?} names no file; give a destination name"
        ))),
        _ => {
            safe_relative(name).map_err(|why| usage(&format!("{path:?}: {why}")))?;
            Ok(name.to_owned())
        }
    }
}

/// A name from the machine as a relative path that stays inside the destination, or why not.
fn safe_relative(name: &str) -> Result<PathBuf, &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.chars().any(char::is_control) {
        return Err("control characters in a name");
    }
    if name.starts_with('/') {
        return Err("absolute path");
    }
    let mut path = PathBuf::new();
    for part in name.split('/') {
        match part {
            "" | "." => return Err("empty or `.` path component"),
            ".." => return Err("`..` would leave the destination"),
            part => path.push(part),
        }
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err("not a plain relative path");
    }
    Ok(path)
}

/// A symlink at `relative` pointing to `target` must be relative and resolve (lexically) inside the
/// destination.
fn symlink_stays_inside(relative: &Path, target: &str) -> Result<(), &'static str> {
    if target.is_empty() || target.chars().any(char::is_control) {
        return Err("symlink with an empty target or control characters");
    }
    if target.starts_with('/') {
        return Err("symlink to an absolute path");
    }
    let mut depth: usize = relative.components().count().saturating_sub(1);
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("symlink pointing outside the destination")?;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// A single file the person named: it lands at `local`, in the directory named there.
async fn get_file_named(
    transfer: &mut Transfer,
    remote: &str,
    entry: &Entry,
    local: &Path,
) -> Result<(), Failure> {
    if local.is_dir() {
        return Err(usage(&format!("{} is a directory", local.display())));
    }
    let name = local
        .file_name()
        .ok_or_else(|| usage(&format!("{} is not a file name", local.display())))?;
    let parent = match local.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir = Landing::open_named(parent).map_err(landing_failure)?;
    match get_file(transfer, remote, entry, dir, name.to_owned()).await {
        Ok(()) => Ok(()),
        Err(Refusal::Unsafe(why)) => Err(Failure::new(
            Kind::General,
            format!("cannot write {}: {why}", local.display()),
        )),
        Err(Refusal::Fatal(failure)) => Err(failure),
    }
}

/// Downloads `remote` into `name` in `dir`: into a partial file (resumed if an earlier run left one), checked
/// against the machine's whole-file SHA-256, then given its mode (less setuid and setgid), synced, and its name.
async fn get_file(
    transfer: &mut Transfer,
    remote: &str,
    entry: &Entry,
    dir: Landing,
    name: OsString,
) -> Result<(), Refusal> {
    refuse_unless_a_file_may_land(&dir, &name)?;
    let text = name.to_str().ok_or_else(|| {
        usage(&format!(
            "{} is not UTF-8",
            dir.shown().join(&name).display()
        ))
    })?;
    let tag = version_tag(entry.size, entry.modified_ns, entry.mode);
    let mut partial = dir.partial(text, tag, entry.size)?;
    let target = dir.shown().join(&name);
    let cannot = |err: std::io::Error| cannot_write(&target, err);
    let offset = partial.length();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; MAX_CHUNK];
    hash_prefix(partial.file(), offset, &mut hasher, &mut buffer).map_err(cannot)?;
    transfer.run.resumed(offset);
    transfer
        .sender
        .send(&CopyRequest::Get {
            path: remote.to_owned(),
            offset,
        })
        .await
        .map_err(Failure::from)?;
    let (digest, mode) = loop {
        match next_reply(transfer).await? {
            CopyReply::Chunk(bytes) => {
                partial.file().write_all(&bytes).map_err(cannot)?;
                hasher.update(&bytes);
                account(transfer, bytes.len()).await;
            }
            CopyReply::GetEnd { sha256, mode } => break (sha256, mode),
            CopyReply::Failed { message } => {
                return Err(Failure::new(
                    Kind::General,
                    format!(
                        "cannot copy {}:{remote} to {}: the machine says: {message}",
                        transfer.run.machine,
                        target.display()
                    ),
                )
                .into());
            }
            other => return Err(unexpected(&other).into()),
        }
    };
    if <[u8; 32]>::from(hasher.finalize()) != digest {
        partial.discard(&dir);
        return Err(Failure::new(
            Kind::General,
            format!(
                "{remote} arrived corrupted (SHA-256 mismatch) and was discarded; run the copy again"
            ),
        )
        .into());
    }
    let modified_ns = transfer.run.preserve.then_some(entry.modified_ns);
    // A file keeps its permission bits only: no setuid, setgid or sticky bit from the machine.
    land(partial, dir, name, mode & 0o777, modified_ns).await?;
    transfer.run.files.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Gives a verified partial file its modification time (`-p`) and `mode`, syncs it and gives it its `name` in
/// `dir`. The syncs wait for the disk, so they run off the runtime's threads and the other streams go on.
async fn land(
    partial: Partial,
    dir: Landing,
    name: OsString,
    mode: u32,
    modified_ns: Option<u64>,
) -> Result<(), Failure> {
    let target = dir.shown().join(&name);
    let shown = target.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(modified_ns) = modified_ns {
            partial
                .set_modified(modified_ns)
                .map_err(|err| cannot_write(&target, err))?;
        }
        partial.finish(&dir, &name, mode).map_err(landing_failure)
    })
    .await
    .map_err(|err| {
        Failure::new(
            Kind::General,
            format!(
                "finishing {} stopped unexpectedly ({err}); run the copy again",
                shown.display()
            ),
        )
    })?
}

/// Refuses a name where a directory, device, FIFO or socket stands; a file or a symlink there is replaced by
/// the final rename (never written through).
fn refuse_unless_a_file_may_land(dir: &Landing, name: &OsStr) -> Result<(), Refusal> {
    match dir.standing(name)? {
        Standing::Dir => Err(Refusal::Unsafe("a directory stands at that name".into())),
        Standing::Other => Err(Refusal::Unsafe(
            "a device, FIFO or socket stands at that name".into(),
        )),
        Standing::Nothing | Standing::File | Standing::Symlink => Ok(()),
    }
}

/// `message` with every partial-file name of version `tag` of `name` replaced by `name`.
fn without_part_names(message: &str, name: &str, tag: u64) -> String {
    message
        .split_inclusive(|c: char| c == '/' || c.is_whitespace())
        .map(|piece| {
            let word = piece.trim_end_matches(|c: char| c == '/' || c.is_whitespace());
            let rest = piece.get(word.len()..).unwrap_or_default();
            let bare = word.trim_end_matches([':', ',', ';', ')']);
            match parse_part_name(name, bare) {
                Some((found, _)) if found == tag => {
                    format!("{name}{}{rest}", word.get(bare.len()..).unwrap_or_default())
                }
                _ => piece.to_owned(),
            }
        })
        .collect()
}

/// Names the file the person asked for, not the partial file it is written through.
fn cannot_write(local: &Path, err: std::io::Error) -> Failure {
    Failure::new(
        Kind::General,
        format!("cannot write {}: {err}", local.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_put_names_the_target_not_the_machines_partial_file() {
        let tag = 0x0123_4567_89ab_cdef;
        let part = cmdop_proto::ops::copy::part_name("file", tag, 42);
        let message = format!("cannot create /nonexistent/dir/{part}: No such file or directory");
        assert_eq!(
            without_part_names(&message, "file", tag),
            "cannot create /nonexistent/dir/file: No such file or directory"
        );
        // Another version's partial file, or another name, is left as it is.
        assert_eq!(without_part_names(&message, "file", tag + 1), message);
        assert_eq!(without_part_names(&message, "other", tag), message);
    }

    #[test]
    fn locations_split_like_scp() {
        assert_eq!(
            Location::parse("web-1:logs/a"),
            Location::Remote {
                machine: "web-1".into(),
                path: "logs/a".into()
            }
        );
        assert_eq!(Location::parse("./a:b"), Location::Local("./a:b".into()));
        assert_eq!(Location::parse("/tmp/x"), Location::Local("/tmp/x".into()));
        assert_eq!(
            Location::parse("web-1:"),
            Location::Remote {
                machine: "web-1".into(),
                path: String::new()
            }
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "x\u{1b}[2J",
            "new\nline",
            "..",
        ] {
            assert!(safe_relative(bad).is_err(), "{bad:?}");
        }
        assert_eq!(safe_relative("a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
        assert_eq!(safe_relative(".hidden").unwrap(), PathBuf::from(".hidden"));
    }

    #[test]
    fn symlinks_must_stay_inside() {
        assert!(symlink_stays_inside(Path::new("a/link"), "../b").is_ok());
        assert!(symlink_stays_inside(Path::new("a/link"), "c/d").is_ok());
        assert!(symlink_stays_inside(Path::new("link"), "../b").is_err());
        assert!(symlink_stays_inside(Path::new("a/link"), "../../b").is_err());
        assert!(symlink_stays_inside(Path::new("a/link"), "/etc").is_err());
    }

    #[test]
    fn writes_never_go_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("fine")).unwrap();
        std::os::unix::fs::symlink("/tmp", root.join("escape")).unwrap();
        let root = Landing::open_named(&root).unwrap();
        assert!(matches!(
            place_of(&root, Path::new("escape/x")),
            Err(Refusal::Unsafe(_))
        ));
        assert!(matches!(
            make_dir(&root, Path::new("escape"), 0o755),
            Err(Refusal::Unsafe(_))
        ));
        assert!(place_of(&root, Path::new("fine/x")).is_ok());
    }

    #[test]
    fn the_summary_line_says_what_moved() {
        let totals = Totals {
            files: 3,
            bytes: 3 << 20,
            resumed: 1 << 20,
            refused: Vec::new(),
        };
        let line = summary_line(&totals, Duration::from_secs(2), true);
        assert_eq!(
            line,
            "cmdop: 3 files sent, 3.0 MiB in 2.0 s (1.5 MiB/s); 1.0 MiB were already there from an earlier run"
        );
        assert_eq!(binary_bytes(512), "512 B");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("0").unwrap(), None);
        assert_eq!(parse_rate("10M").unwrap(), Some(10 << 20));
        assert_eq!(parse_rate("512k").unwrap(), Some(512 << 10));
        assert_eq!(parse_rate("1000").unwrap(), Some(1000));
        assert!(parse_rate("fast").is_err());
    }
}
