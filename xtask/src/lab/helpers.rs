//! Small TCP programs the lab runs inside its namespaces (`xtask lab --helper NAME …`): servers that forwards
//! reach on the agent's side, and clients that use a forward on the client's side. Each stops by itself
//! after its `--seconds`, and each prints one JSON line saying what it did.
//!
//! The bytes a server sends are a pure function of a seed and the offset ([`pattern`]), so the reader checks
//! every byte as it arrives without a copy of the data.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

/// Runs helper `name` with its flags.
pub(crate) fn run(name: &str, args: &[String]) -> Result<()> {
    let flags = Flags::parse(args)?;
    match name {
        "forward" => super::forwarder::run(args),
        "serve" => serve(&flags),
        "blast" => blast(&flags),
        "get" => get(&flags),
        "drain" => drain(&flags),
        "hold" => hold(&flags),
        other => bail!("no lab helper named `{other}`"),
    }
}

/// `--name value` pairs.
struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> Result<Self> {
        let mut map = HashMap::new();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            map.insert(flag.trim_start_matches("--").to_owned(), value.clone());
        }
        Ok(Self(map))
    }

    fn text(&self, name: &str) -> Result<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("the helper needs --{name}"))
    }

    fn number(&self, name: &str) -> Result<u64> {
        self.text(name)?
            .parse()
            .with_context(|| format!("--{name} takes a whole number"))
    }

    fn number_or(&self, name: &str, default: u64) -> Result<u64> {
        if self.0.contains_key(name) {
            self.number(name)
        } else {
            Ok(default)
        }
    }

    fn address(&self, name: &str) -> Result<SocketAddr> {
        self.text(name)?
            .parse()
            .with_context(|| format!("--{name} takes IP:PORT"))
    }

    fn seconds(&self) -> Result<Duration> {
        Ok(Duration::from_secs(self.number("seconds")?))
    }
}

/// The byte at `offset` of the stream with `seed`: 8-byte blocks of splitmix64 of (seed, block number).
pub(crate) fn pattern(seed: u64, offset: u64, out: &mut [u8]) {
    let mut at = offset;
    let mut filled = 0;
    while filled < out.len() {
        let block = mix(seed ^ (at / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes();
        let start = usize::try_from(at % 8).unwrap_or(0);
        let take = (8 - start).min(out.len() - filled);
        if let (Some(dst), Some(src)) = (
            out.get_mut(filled..filled + take),
            block.get(start..start + take),
        ) {
            dst.copy_from_slice(src);
        }
        filled += take;
        at += take as u64;
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Accepts connections on `--listen` until `--seconds` pass, each handled on its own thread by `handle`.
fn accept_loop(flags: &Flags, handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Result<()> {
    let listen = flags.address("listen")?;
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + flags.seconds()?;
    let handle = Arc::new(handle);
    let accepted = AtomicU64::new(0);
    println!("{}", json!({ "listening": listen.to_string() }));
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                stream.set_nonblocking(false)?;
                let handle = Arc::clone(&handle);
                thread::spawn(move || handle(stream));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).context("accept failed"),
        }
    }
    println!(
        "{}",
        json!({ "accepted": accepted.load(Ordering::Relaxed) })
    );
    Ok(())
}

/// `serve --listen A --file F --seconds N`: an HTTP/1.0 server that answers every GET with the file.
fn serve(flags: &Flags) -> Result<()> {
    let file = PathBuf::from(flags.text("file")?);
    let len = std::fs::metadata(&file)
        .with_context(|| format!("cannot stat {}", file.display()))?
        .len();
    accept_loop(flags, move |stream| {
        let _ = answer_get(stream, &file, len);
    })
}

fn answer_get(mut stream: TcpStream, file: &PathBuf, len: u64) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    // The request line and headers, up to the empty line; the path does not matter.
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    )?;
    std::io::copy(&mut File::open(file)?, &mut stream)?;
    stream.shutdown(Shutdown::Write)?;
    Ok(())
}

/// `blast --listen A --seed S --bytes N --seconds T`: sends each connection `N` bytes of the pattern (0 for
/// endless, until the peer goes away), as fast as the connection takes them.
fn blast(flags: &Flags) -> Result<()> {
    let seed = flags.number("seed")?;
    let bytes = flags.number_or("bytes", 0)?;
    accept_loop(flags, move |mut stream| {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut offset = 0u64;
        while bytes == 0 || offset < bytes {
            let take = if bytes == 0 {
                buffer.len() as u64
            } else {
                (bytes - offset).min(buffer.len() as u64)
            };
            let Some(chunk) = buffer.get_mut(..usize::try_from(take).unwrap_or(0)) else {
                return;
            };
            pattern(seed, offset, chunk);
            if stream.write_all(chunk).is_err() {
                return;
            }
            offset += take;
        }
        let _ = stream.shutdown(Shutdown::Write);
    })
}

/// `get --connect A --out F --seconds T`: one HTTP/1.0 GET, the body written to F.
fn get(flags: &Flags) -> Result<()> {
    let connect = flags.address("connect")?;
    let out = PathBuf::from(flags.text("out")?);
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&connect, Duration::from_secs(10))
        .with_context(|| format!("cannot connect to {connect}"))?;
    stream.set_read_timeout(Some(flags.seconds()?))?;
    write!(stream, "GET /file HTTP/1.0\r\nHost: lab\r\n\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the connection closed inside the response headers");
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse::<u64>().ok();
        }
    }
    let mut file =
        File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let copied = std::io::copy(&mut reader, &mut file)?;
    println!(
        "{}",
        json!({ "bytes": copied, "content_length": length, "seconds": started.elapsed().as_secs_f64() })
    );
    if length != Some(copied) {
        bail!("got {copied} bytes of a body announced as {length:?}");
    }
    Ok(())
}

/// `drain --connect A --seed S --bytes N --slow-rate B --slow-seconds T --seconds T`: reads N bytes of the
/// pattern, at most B bytes a second for the first T seconds (a slow reader), then as fast as they come;
/// checks every byte.
fn drain(flags: &Flags) -> Result<()> {
    let connect = flags.address("connect")?;
    let seed = flags.number("seed")?;
    let total = flags.number("bytes")?;
    let slow_rate = flags.number_or("slow-rate", 0)?;
    let slow_for = Duration::from_secs(flags.number_or("slow-seconds", 0)?);
    let started = Instant::now();
    let deadline = started + flags.seconds()?;
    let mut stream = TcpStream::connect_timeout(&connect, Duration::from_secs(10))
        .with_context(|| format!("cannot connect to {connect}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut expected = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    let mut slow_bytes = 0u64;
    let mut first_byte = None;
    let mut tick_bytes = 0u64;
    let mut tick_started = Instant::now();
    // The slow phase starts with the first byte, not with the connection.
    let mut slow_until = None;
    while offset < total {
        if Instant::now() > deadline {
            bail!("read {offset} of {total} bytes before the deadline");
        }
        let slow = slow_rate > 0 && slow_until.is_none_or(|until| Instant::now() < until);
        // The slow phase reads a tenth of the rate per tick of 100 ms, however the bytes arrive.
        let budget = (slow_rate / 10).max(1);
        let want = if slow {
            budget - tick_bytes
        } else {
            buffer.len() as u64
        };
        let want = usize::try_from(want.min(total - offset).min(buffer.len() as u64)).unwrap_or(1);
        let Some(chunk) = buffer.get_mut(..want) else {
            break;
        };
        let n = stream.read(chunk)?;
        if n == 0 {
            bail!("the stream ended after {offset} of {total} bytes");
        }
        if first_byte.is_none() {
            first_byte = Some(started.elapsed());
            slow_until = Some(Instant::now() + slow_for);
        }
        let (Some(got), Some(want_bytes)) = (buffer.get(..n), expected.get_mut(..n)) else {
            break;
        };
        pattern(seed, offset, want_bytes);
        if got != want_bytes {
            bail!("byte mismatch within the {n} bytes at offset {offset}");
        }
        offset += n as u64;
        if slow {
            slow_bytes += n as u64;
            tick_bytes += n as u64;
            if tick_bytes >= budget {
                thread::sleep(Duration::from_millis(100).saturating_sub(tick_started.elapsed()));
                tick_started = Instant::now();
                tick_bytes = 0;
            }
        }
    }
    println!(
        "{}",
        json!({
            "bytes": offset,
            "slow_bytes": slow_bytes,
            "first_byte_seconds": first_byte.map(|d| d.as_secs_f64()),
            "seconds": started.elapsed().as_secs_f64(),
            "intact": true
        })
    );
    Ok(())
}

/// `hold --connect A --count N --seconds T`: opens N connections and never reads or writes them; after T
/// seconds says how many connected and how many the far side has since closed (seen with `peek`, which
/// reads nothing).
fn hold(flags: &Flags) -> Result<()> {
    let connect = flags.address("connect")?;
    let count = flags.number("count")?;
    let hold_for = flags.seconds()?;
    let started = Instant::now();
    let mut streams = Vec::new();
    let mut failed = 0u64;
    for _ in 0..count {
        match TcpStream::connect_timeout(&connect, Duration::from_secs(5)) {
            Ok(stream) => streams.push(stream),
            Err(_) => failed += 1,
        }
    }
    let opened_in = started.elapsed();
    println!(
        "{}",
        json!({ "connected": streams.len(), "failed": failed, "open_seconds": opened_in.as_secs_f64() })
    );
    thread::sleep(hold_for.saturating_sub(started.elapsed()));
    let mut closed = 0u64;
    let mut byte = [0u8; 1];
    for stream in &streams {
        stream.set_nonblocking(true)?;
        match stream.peek(&mut byte) {
            Ok(0) => closed += 1,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => closed += 1,
        }
    }
    println!(
        "{}",
        json!({ "held": streams.len(), "closed_by_peer": closed })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_the_same_whatever_the_chunking() {
        let mut whole = vec![0u8; 1000];
        pattern(5, 3, &mut whole);
        let mut pieces = vec![0u8; 1000];
        let mut at = 0;
        for size in [1, 7, 8, 9, 100, 875] {
            pattern(5, 3 + at as u64, &mut pieces[at..at + size]);
            at += size;
        }
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 1000];
        pattern(6, 3, &mut other);
        assert_ne!(whole, other);
    }
}
