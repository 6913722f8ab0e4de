//! Tunnel streams on the agent: connect to the destination a client asked for, if the destination policy
//! allows it, and pipe bytes until both directions end.
//!
//! The name is resolved once, here; each resolved address is canonicalised and checked, and the connection
//! goes to the checked address, never to a second resolution of the name.

use std::net::SocketAddr;
use std::time::Duration;

use cmdop_relay::e2e::CloseReason;
use cmdop_relay::ops::forward::{TunnelReply, TunnelRequest};
use cmdop_relay::secure_stream::{SecureReceiver, SecureSender, SecureStreamError};
use cmdop_relay::tunnel;
use tokio::net::TcpStream;

use crate::destination_policy::{DestinationPolicy, Verdict};

/// How long resolving the destination and connecting to it may take, together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one tunnel stream.
pub async fn serve(
    mut sender: SecureSender,
    mut receiver: SecureReceiver,
    policy: &DestinationPolicy,
) -> Result<(), SecureStreamError> {
    let Some(TunnelRequest::Connect { host, port }) = receiver.recv::<TunnelRequest>().await?
    else {
        sender
            .close(CloseReason::Protocol, "expected a connect request first")
            .await;
        return Ok(());
    };
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect(&host, port, policy))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "connecting to {host}:{port} took longer than {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        });
    match connected {
        Err(message) => {
            tracing::info!(%host, port, %message, "forward refused");
            sender.send(&TunnelReply::Refused { message }).await?;
            sender.end(1).await
        }
        Ok((tcp, address)) => {
            tracing::info!(%host, port, %address, "forward connected");
            sender
                .send(&TunnelReply::Connected {
                    address: address.to_string(),
                })
                .await?;
            let totals = tunnel::pipe(tcp, sender, receiver).await?;
            tracing::debug!(%address, sent = totals.sent, received = totals.received, "forward ended");
            Ok(())
        }
    }
}

/// Resolves `host` once and connects to the first address the policy allows that answers.
async fn connect(
    host: &str,
    port: u16,
    policy: &DestinationPolicy,
) -> Result<(TcpStream, SocketAddr), String> {
    // `[::1]` is how people write IPv6 next to a port; the resolver wants it bare.
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.is_empty() {
        return Err("no destination host given".to_owned());
    }
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|err| format!("cannot resolve {bare}: {err}"))?
        .collect();
    let mut refusal = None;
    let mut failure = None;
    for candidate in resolved {
        match policy.check(candidate) {
            Verdict::Refused(rule) => {
                refusal.get_or_insert_with(|| {
                    format!(
                        "{bare}:{port} ({}) is not an allowed destination: {rule}",
                        candidate.ip()
                    )
                });
            }
            Verdict::Allowed(address) => match TcpStream::connect(address).await {
                Ok(tcp) => {
                    // Interactive protocols (ssh, redis) need their small writes out at once; bulk reads are
                    // a frame's worth each anyway.
                    let _ = tcp.set_nodelay(true);
                    return Ok((tcp, address));
                }
                Err(err) => {
                    failure.get_or_insert_with(|| format!("cannot connect to {address}: {err}"));
                }
            },
        }
    }
    Err(failure
        .or(refusal)
        .unwrap_or_else(|| format!("{bare} resolved to no address")))
}
