//! Operation messages of a tunnel stream (`cmdop connect forward`): one TCP connection per stream.
//!
//! The client's first message names the destination; the agent answers once. After a
//! [`TunnelReply::Connected`] the stream leaves operation framing behind: the channel's data frames carry the
//! TCP bytes as they are, each direction's authenticated `End` frame is that direction's FIN (half-close), and
//! a `Close` frame is a reset. Specified in `docs/protocol.md` ("Tunnel streams").
//!
//! ```text
//!  client                                        agent
//!  TunnelRequest::Connect{host, port}       ──▶  resolve once, check the destination policy, connect
//!                                           ◀──  TunnelReply::Connected{address} | Refused{message} + End
//!  raw bytes ◀════════════════════════════════▶ raw bytes   (End = FIN, Close = reset)
//! ```
//!
//! A remote forward (`--remote`, like `ssh -R`) keeps the rule that only clients open streams: a control
//! stream asks the agent to listen, and each connection the agent accepts is announced there and claimed by a
//! new stream from the client.
//!
//! ```text
//!  TunnelRequest::Listen{port}              ──▶  bind 127.0.0.1:port on the machine
//!                                           ◀──  Listening{port} | Refused{message}
//!                                           ◀──  Accepted{id, peer} per connection, KeepAlive every minute
//!  (new stream) TunnelRequest::Attach{id}   ──▶  ◀── Connected{address: peer} | Refused, then raw bytes
//! ```

use serde::{Deserialize, Serialize};

/// Client to agent: the first (and only framed) message of a tunnel stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelRequest {
    /// Connect to `host:port` from the machine. `host` is a name or an address literal; the agent resolves it
    /// once and connects to the address it checked.
    Connect {
        /// Hostname or IP address, as the person wrote it (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// Listen on the machine's loopback (`127.0.0.1:port`, `0` for any free port) for a remote forward; this
    /// stream becomes its control stream and stays in message mode. Ending it stops the listener.
    Listen {
        /// TCP port on the machine.
        port: u16,
    },
    /// Claim a connection announced by [`TunnelReply::Accepted`] on this client's control stream.
    Attach {
        /// The announced id.
        id: u64,
    },
}

/// Agent to client: the answer to a [`TunnelRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelReply {
    /// Connected; raw bytes follow in both directions.
    Connected {
        /// The address actually connected to, `IP:PORT`, after resolution and canonicalisation.
        address: String,
    },
    /// Not connected (policy, resolution or connection failure); the agent's `End` frame follows.
    Refused {
        /// Why, for the person at the client.
        message: String,
    },
    /// The remote forward's listener is up.
    Listening {
        /// The port it listens on (the one chosen, when `0` was asked).
        port: u16,
    },
    /// A connection arrived at the remote forward's listener; claim it with [`TunnelRequest::Attach`] within
    /// 10 seconds or it is closed.
    Accepted {
        /// Random, unguessable, and valid only for streams from the same client key.
        id: u64,
        /// The connecting peer, `IP:PORT`.
        peer: String,
    },
    /// Nothing happened for a minute; keeps the relay from dropping an idle control stream.
    KeepAlive,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ops::testing;
    use crate::wire::{FrameDecoder, encode};

    #[test]
    fn golden_bytes() {
        let connect = TunnelRequest::Connect {
            host: "db".into(),
            port: 5432,
        };
        assert_eq!(
            hex::encode(encode(&connect).unwrap()),
            "0000000600026462b82a"
        );
        let connected = TunnelReply::Connected {
            address: "10.0.0.5:5432".into(),
        };
        assert_eq!(
            hex::encode(encode(&connected).unwrap()),
            "0000000f000d31302e302e302e353a35343332"
        );
        let refused = TunnelReply::Refused {
            message: "no".into(),
        };
        assert_eq!(hex::encode(encode(&refused).unwrap()), "0000000401026e6f");
        let listen = TunnelRequest::Listen { port: 8080 };
        assert_eq!(hex::encode(encode(&listen).unwrap()), "0000000301903f");
        let attach = TunnelRequest::Attach { id: 300 };
        assert_eq!(hex::encode(encode(&attach).unwrap()), "0000000302ac02");
        let listening = TunnelReply::Listening { port: 80 };
        assert_eq!(hex::encode(encode(&listening).unwrap()), "000000020250");
        let accepted = TunnelReply::Accepted {
            id: 1,
            peer: "a".into(),
        };
        assert_eq!(hex::encode(encode(&accepted).unwrap()), "0000000403010161");
        assert_eq!(
            hex::encode(encode(&TunnelReply::KeepAlive).unwrap()),
            "0000000104"
        );
    }

    proptest! {
        #[test]
        fn requests_round_trip(host in ".{0,40}", port in any::<u16>(), id in any::<u64>(), which in 0u8..3) {
            let request = match which {
                0 => TunnelRequest::Connect { host, port },
                1 => TunnelRequest::Listen { port },
                _ => TunnelRequest::Attach { id },
            };
            let bytes = encode(&request).unwrap();
            let mut input = bytes.as_slice();
            let decoded = FrameDecoder::new().decode::<TunnelRequest>(&mut input).unwrap();
            prop_assert_eq!(decoded, Some(request));
        }

        #[test]
        fn replies_round_trip(text in ".{0,40}", port in any::<u16>(), id in any::<u64>(), which in 0u8..5) {
            let reply = match which {
                0 => TunnelReply::Connected { address: text },
                1 => TunnelReply::Refused { message: text },
                2 => TunnelReply::Listening { port },
                3 => TunnelReply::Accepted { id, peer: text },
                _ => TunnelReply::KeepAlive,
            };
            let bytes = encode(&reply).unwrap();
            let mut input = bytes.as_slice();
            let decoded = FrameDecoder::new().decode::<TunnelReply>(&mut input).unwrap();
            prop_assert_eq!(decoded, Some(reply));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            testing::decode_garbage::<TunnelRequest>(&bytes);
            testing::decode_garbage::<TunnelReply>(&bytes);
        }
    }
}
