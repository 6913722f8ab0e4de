//! The copy streams of one `cmdop connect cp` run (`--parallel N`): files spread over up to N end-to-end
//! streams on the one machine connection, so that one file's round trips and the receiving side's fsync
//! overlap with the others' instead of adding up.
//!
//! What stays ordered stays on one stream: stats, listings, directories (made before any file goes into
//! them), symlinks and directory times (after the files). Only files are spread, and never two to the same
//! target at once: a later copy to a name lands after the earlier one, as when files went one by one. The
//! first failure ends the run: the other streams are cut where they are, which leaves at most a partial file
//! each (resumed by the next run), never a file under its final name that was not verified and synced.

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use cmdop_client::MachineConnection;
use cmdop_client::landing::Landing;
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::ops::copy::Entry;
use tokio::task::JoinSet;

use super::{Run, Transfer};
use crate::exit::{Failure, Kind};
use crate::reach;

/// How many files move at once unless `--parallel` says otherwise.
pub(super) const DEFAULT_PARALLEL: u8 = 8;

/// A pushed tree's top directory: every stream makes it (`Mkdir`) before it puts a file below it, since the
/// machine reaches what is below a directory a stream made through that stream's own handle of it.
#[derive(Debug)]
pub(super) struct PushedRoot {
    /// Its remote path.
    pub(super) remote: String,
    /// Its permission bits.
    pub(super) mode: u32,
}

/// One file to move.
pub(super) enum Job {
    /// A local file to the machine; `root` is the pushed tree it is in, if any.
    Put {
        local: PathBuf,
        metadata: fs::Metadata,
        remote: String,
        root: Option<Arc<PushedRoot>>,
    },
    /// A file of a pulled tree, landing at `relative` below `root`; a name that cannot land safely is refused
    /// and the rest goes on.
    GetInTree {
        remote: String,
        entry: Entry,
        root: Arc<Landing>,
        relative: PathBuf,
    },
    /// A file the person named, landing at `local`.
    Get {
        remote: String,
        entry: Entry,
        local: PathBuf,
    },
}

impl Job {
    /// Where it lands, to keep two copies to one name apart.
    fn target(&self) -> String {
        match self {
            Self::Put { remote, .. } => remote.clone(),
            Self::GetInTree { relative, .. } => relative.to_string_lossy().into_owned(),
            Self::Get { local, .. } => local.to_string_lossy().into_owned(),
        }
    }
}

/// The open copy streams of a run, and the connection to open more on.
pub(super) struct Streams<'a> {
    reach: &'a MachineConnection,
    run: Arc<Run>,
    /// The idle streams; the first one carries everything that is not spread.
    open: Vec<Transfer>,
    /// At most this many streams.
    parallel: usize,
    /// Set once opening a further stream failed: the run goes on with the ones it has.
    no_more: bool,
}

impl<'a> Streams<'a> {
    /// The streams of a run that has opened `first`.
    pub(super) fn new(reach: &'a MachineConnection, first: Transfer, parallel: u8) -> Self {
        Self {
            reach,
            run: Arc::clone(&first.run),
            open: vec![first],
            parallel: usize::from(parallel.max(1)),
            no_more: false,
        }
    }

    /// The stream for what is not spread.
    pub(super) fn first(&mut self) -> Result<&mut Transfer, Failure> {
        self.open
            .first_mut()
            .ok_or_else(|| Failure::connection_lost("no copy stream to the machine is left"))
    }

    /// Moves every file in `jobs`, up to `parallel` at once; returns the first failure, the others stopped.
    pub(super) async fn spread(&mut self, jobs: Vec<Job>) -> Result<(), Failure> {
        for batch in apart(jobs) {
            self.spread_batch(batch).await?;
        }
        Ok(())
    }

    async fn spread_batch(&mut self, jobs: VecDeque<Job>) -> Result<(), Failure> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.open_up_to(jobs.len()).await;
        let queue = Arc::new(Mutex::new(jobs));
        let mut workers = JoinSet::new();
        for transfer in self.open.drain(..) {
            workers.spawn(work(transfer, Arc::clone(&queue)));
        }
        let mut first_failure = None;
        while let Some(joined) = workers.join_next().await {
            let failure = match joined {
                Ok((transfer, Ok(()))) => {
                    self.open.push(transfer);
                    continue;
                }
                Ok((_, Err(failure))) => failure,
                Err(err) if err.is_cancelled() => continue,
                Err(err) => Failure::new(
                    Kind::General,
                    format!("a copy stream stopped unexpectedly ({err}); run the copy again"),
                ),
            };
            if first_failure.is_none() {
                first_failure = Some(failure);
                // The others stop where they are: a cut stream leaves a partial file, never a final one.
                workers.abort_all();
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Opens streams until there are `wanted` (at most `parallel`); a stream that cannot be opened leaves the
    /// run with the ones it has, since they are enough to finish it.
    async fn open_up_to(&mut self, wanted: usize) {
        while !self.no_more && self.open.len() < wanted.min(self.parallel) {
            match reach::open(self.reach, StreamKind::Copy).await {
                Ok(channel) => self
                    .open
                    .push(Transfer::new(channel, Arc::clone(&self.run))),
                Err(_) => self.no_more = true,
            }
        }
    }

    /// Ends every stream.
    pub(super) async fn end(self) -> Result<(), Failure> {
        for transfer in self.open {
            transfer.sender.end(0).await?;
        }
        Ok(())
    }
}

/// One stream's share: jobs from the queue until it is empty or one fails.
async fn work(
    mut transfer: Transfer,
    queue: Arc<Mutex<VecDeque<Job>>>,
) -> (Transfer, Result<(), Failure>) {
    loop {
        let next = queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        let Some(job) = next else {
            return (transfer, Ok(()));
        };
        if let Err(failure) = super::run_job(&mut transfer, job).await {
            return (transfer, Err(failure));
        }
    }
}

/// `jobs` in order, cut into runs in which no target repeats.
fn apart(jobs: Vec<Job>) -> Vec<VecDeque<Job>> {
    let mut batches = Vec::new();
    let mut batch = VecDeque::new();
    let mut targets = HashSet::new();
    for job in jobs {
        if !targets.insert(job.target()) {
            batches.push(std::mem::take(&mut batch));
            targets.clear();
            targets.insert(job.target());
        }
        batch.push_back(job);
    }
    batches.push(batch);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(local: &str) -> Job {
        Job::Get {
            remote: "r".into(),
            entry: Entry {
                path: "r".into(),
                kind: cmdop_proto::ops::copy::EntryKind::File,
                mode: 0o644,
                size: 0,
                modified_ns: 0,
            },
            local: PathBuf::from(local),
        }
    }

    #[test]
    fn two_copies_to_one_name_never_run_at_once() {
        let jobs = ["a", "b", "a", "c", "b", "b"]
            .map(get)
            .into_iter()
            .collect();
        let targets: Vec<Vec<String>> = apart(jobs)
            .iter()
            .map(|batch| batch.iter().map(Job::target).collect())
            .collect();
        assert_eq!(targets, [vec!["a", "b"], vec!["a", "c", "b"], vec!["b"]]);
    }
}
