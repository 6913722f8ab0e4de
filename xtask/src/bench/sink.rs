//! The two ends of a tunnel benchmark: senders that write into a forwarded port, and a sink on 127.0.0.1
//! that reads each connection to its end and answers with the count.
//!
//! With several concurrent connections the sink also says how evenly they were served: when the first
//! connection reaches its end, it notes how many bytes each connection had delivered by then.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const MIB: u64 = 1024 * 1024;

/// What the sink has seen since the last [`Sink::begin`].
#[derive(Debug, Default)]
struct Round {
    /// Bytes delivered so far, per connection in the order they arrived.
    counters: Vec<Arc<AtomicU64>>,
    /// Each connection's bytes when the first connection ended.
    at_first_end: Option<Vec<u64>>,
}

/// A sink on 127.0.0.1 that reads each connection to its end and answers with the byte count.
#[derive(Debug, Clone)]
pub(super) struct Sink {
    pub(super) port: u16,
    round: Arc<Mutex<Round>>,
}

impl Sink {
    pub(super) fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot start the sink")?;
        let port = listener.local_addr()?.port();
        let sink = Self {
            port,
            round: Arc::default(),
        };
        let accepting = sink.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let counter = Arc::new(AtomicU64::new(0));
                accepting.lock().counters.push(Arc::clone(&counter));
                let round = Arc::clone(&accepting.round);
                thread::spawn(move || drain(stream, &counter, &round));
            }
        });
        Ok(sink)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Round> {
        self.round.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the previous round's connections.
    pub(super) fn begin(&self) {
        *self.lock() = Round::default();
    }

    /// Each connection's share of the bytes delivered while all of them were running (up to the moment the
    /// first one ended), as `(smallest, largest)` fractions of the total.
    pub(super) fn shares(&self) -> Option<(f64, f64)> {
        let round = self.lock();
        let counts = round.at_first_end.as_ref()?;
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let min = counts.iter().copied().min().unwrap_or(0) as f64 / total as f64;
        let max = counts.iter().copied().max().unwrap_or(0) as f64 / total as f64;
        Some((min, max))
    }
}

fn drain(mut stream: TcpStream, counter: &AtomicU64, round: &Mutex<Round>) {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 {
            break;
        }
        total += n as u64;
        counter.store(total, Ordering::Relaxed);
    }
    {
        let mut round = round.lock().unwrap_or_else(PoisonError::into_inner);
        if round.at_first_end.is_none() {
            let counts = round
                .counters
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
            round.at_first_end = Some(counts);
        }
    }
    let _ = stream.write_all(&total.to_be_bytes());
}

/// Sends `bytes` to `port` over one connection, half-closes, and waits for the sink's count.
fn send_one(port: u16, bytes: u64) -> Result<()> {
    let block: Vec<u8> = (0..MIB)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).context("cannot connect to the forward")?;
    stream.set_nodelay(true)?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(MIB)).unwrap_or(block.len());
        stream
            .write_all(block.get(..n).unwrap_or_default())
            .context("the forward broke while sending")?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream
        .read_exact(&mut count)
        .context("the forward ended before the sink's count came back")?;
    let got = u64::from_be_bytes(count);
    if got != bytes {
        bail!("the sink counted {got} bytes, {bytes} were sent");
    }
    Ok(())
}

/// Sends `mib` MiB in total over `streams` concurrent connections (an equal part each) and returns the time
/// from the first connect to the last count.
pub(super) fn send(port: u16, mib: u64, streams: usize) -> Result<Duration> {
    let total = mib * MIB;
    let per_stream = total / streams as u64;
    let started = Instant::now();
    let senders: Vec<_> = (0..streams)
        .map(|i| {
            // The first stream also carries the remainder, so the total is exact.
            let bytes = if i == 0 {
                total - per_stream * (streams as u64 - 1)
            } else {
                per_stream
            };
            thread::spawn(move || send_one(port, bytes))
        })
        .collect();
    for sender in senders {
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("a sender thread panicked"))??;
    }
    Ok(started.elapsed())
}
