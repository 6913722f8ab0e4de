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
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
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
    }

    proptest! {
        #[test]
        fn requests_round_trip(host in ".{0,40}", port in any::<u16>()) {
            let request = TunnelRequest::Connect { host, port };
            let bytes = encode(&request).unwrap();
            let mut input = bytes.as_slice();
            let decoded = FrameDecoder::new().decode::<TunnelRequest>(&mut input).unwrap();
            prop_assert_eq!(decoded, Some(request));
        }

        #[test]
        fn replies_round_trip(text in ".{0,40}", connected in any::<bool>()) {
            let reply = if connected {
                TunnelReply::Connected { address: text }
            } else {
                TunnelReply::Refused { message: text }
            };
            let bytes = encode(&reply).unwrap();
            let mut input = bytes.as_slice();
            let decoded = FrameDecoder::new().decode::<TunnelReply>(&mut input).unwrap();
            prop_assert_eq!(decoded, Some(reply));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut input = bytes.as_slice();
            let mut decoder = FrameDecoder::new();
            while let Ok(Some(_)) = decoder.decode::<TunnelRequest>(&mut input) {}
            let mut input = bytes.as_slice();
            let mut decoder = FrameDecoder::new();
            while let Ok(Some(_)) = decoder.decode::<TunnelReply>(&mut input) {}
        }
    }
}
