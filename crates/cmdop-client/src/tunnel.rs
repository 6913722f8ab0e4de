//! The byte pipe between one TCP connection and one tunnel stream in raw mode ([`cmdop_proto::ops::forward`]),
//! used by both ends: the client for the connection it accepted, the agent for the one it made.
//!
//! ```text
//!  TCP read  ──▶ send_buffer (≤ one channel frame per read) ──▶ … peer … ──▶ TCP write
//!  TCP EOF   ──▶ the channel's End frame                   ──▶ … peer … ──▶ shutdown(Write)   (half-close)
//!  TCP error ──▶ the channel's Close frame                 ──▶ … peer … ──▶ connection dropped (reset)
//! ```
//!
//! Each direction finishes on its own, so half-closed protocols (a request, then `shutdown(Write)`, then the
//! reply) work; an error in either direction ends both.

use bytes::BufMut as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::secure_stream::{SecureReceiver, SecureSender, SecureStreamError, data_buffer};
use cmdop_proto::e2e::CloseReason;

/// Bytes read from the TCP connection at once: one channel data frame's worth, so each read becomes exactly
/// one sealed frame.
pub const TCP_READ_CHUNK: usize = cmdop_proto::e2e::MAX_DATA_PER_FRAME;

/// Bytes moved by a finished pipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipeTotals {
    /// From the TCP connection into the stream.
    pub sent: u64,
    /// From the stream into the TCP connection.
    pub received: u64,
}

/// Moves bytes both ways until both directions have ended. An error in either direction (the TCP connection
/// reset, the stream cut or closed by the peer) ends both and is returned.
pub async fn pipe(
    tcp: TcpStream,
    sender: SecureSender,
    receiver: SecureReceiver,
) -> Result<PipeTotals, SecureStreamError> {
    let (read, write) = tcp.into_split();
    let (sent, received) = tokio::try_join!(upstream(read, sender), downstream(receiver, write))?;
    Ok(PipeTotals { sent, received })
}

async fn upstream(
    mut read: OwnedReadHalf,
    mut sender: SecureSender,
) -> Result<u64, SecureStreamError> {
    let mut total = 0u64;
    loop {
        // Read straight into the buffer the channel seals in place and QUIC sends: no copy on the way.
        let mut buffer = data_buffer(TCP_READ_CHUNK);
        match read
            .read_buf(&mut (&mut buffer).limit(TCP_READ_CHUNK))
            .await
        {
            Ok(0) => {
                sender.end(0).await?;
                return Ok(total);
            }
            Ok(n) => {
                sender.send_buffer(buffer).await?;
                total = total.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
            }
            Err(err) => {
                let message = format!("the TCP connection failed: {err}");
                sender.close(CloseReason::Internal, &message).await;
                return Err(SecureStreamError::Io(message));
            }
        }
    }
}

async fn downstream(
    mut receiver: SecureReceiver,
    mut write: OwnedWriteHalf,
) -> Result<u64, SecureStreamError> {
    let mut total = 0u64;
    // Each message's data is written from where it was decrypted.
    while let Some(bytes) = receiver.recv_slice().await? {
        write
            .write_all(bytes)
            .await
            .map_err(|err| SecureStreamError::Io(format!("the TCP connection failed: {err}")))?;
        total = total.saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
    }
    // The peer's FIN, authenticated: pass it on as ours.
    let _ = write.shutdown().await;
    Ok(total)
}
