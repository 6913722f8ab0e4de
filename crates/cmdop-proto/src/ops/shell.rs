//! Operation messages of a shell stream ([`StreamKind::Shell`](crate::e2e::StreamKind::Shell)): attach to an
//! interactive session in a PTY on the agent, or list and end sessions.
//!
//! Sessions live on the agent, not in the stream: a stream only *attaches* to one, and its output is numbered
//! by byte offset from the session's start, so a client that lost its connection reattaches with the offset it
//! reached and receives exactly the bytes after it (or learns how many the agent's buffer no longer holds).
//!
//! ```text
//!  client                                       agent
//!  ShellRequest::Attach{session, resume_from…} ──▶ finds or creates the session
//!                                           ◀── ShellReply::Attached{name, offset, dropped}
//!  ShellRequest::Input / Resize / Ack / Detach ──▶
//!                                           ◀── ShellReply::Output (contiguous from `offset`)
//!                                           ◀── ShellReply::Exited(status), then the channel's End frame
//!
//!  ShellRequest::List                        ──▶
//!                                           ◀── ShellReply::Sessions([...]), End
//!  ShellRequest::Kill{name}                  ──▶
//!                                           ◀── ShellReply::Killed, End
//! ```
//!
//! Specified in `docs/protocol.md` ("Shell sessions"); variants are only ever appended.

use serde::{Deserialize, Serialize};

use super::ExitStatus;

/// Longest session name, in bytes.
pub const MAX_SESSION_NAME: usize = 32;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// The first message of a stream that attaches to a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// The session to attach to; `None` creates one with a generated name.
    pub session: Option<String>,
    /// Create the named session if it does not exist (`--session NAME` is create-or-attach); `false` when
    /// reattaching after a lost connection, so a session that ended is reported, never silently recreated.
    pub create: bool,
    /// Random per attaching terminal and kept across its reconnects: a new attachment with the same instance
    /// (from the same client key) replaces the old one, whose connection may not have been noticed dead yet.
    pub instance: [u8; 16],
    /// The output offset this terminal already shows; `None` replays everything the agent still holds.
    pub resume_from: Option<u64>,
    /// Observe only: input and resizes from this attachment are ignored.
    pub read_only: bool,
    /// `TERM` for a new session's shell.
    pub term: String,
    /// The client's window size.
    pub size: WindowSize,
}

/// Client to agent on a shell stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShellRequest {
    /// Attach to (or create) a session; the first message only.
    Attach(AttachRequest),
    /// List this machine's sessions; the first message only.
    List,
    /// End a session (its processes get SIGHUP, then SIGKILL); the first message only.
    Kill {
        /// The session's name.
        name: String,
    },
    /// Keystrokes for the session (at most [`MAX_CHUNK`](super::MAX_CHUNK)).
    Input(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The client's window changed size.
    Resize(WindowSize),
    /// Leave the session running and end this attachment.
    Detach,
    /// The client has written the session's output up to this offset to its terminal. Until acknowledged,
    /// the agent keeps bytes in its buffer even when that means pausing the program, so a client that dies
    /// and comes back (or its successor) can resume without a gap.
    Ack(u64),
}

/// One session, as `cmdop connect sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session's name.
    pub name: String,
    /// When it was created, Unix seconds.
    pub created: u64,
    /// When a client last attached, Unix seconds.
    pub last_attached: u64,
    /// Clients attached now.
    pub attached: u32,
    /// The command in the foreground of its terminal (e.g. `bash`, `vim notes.txt`).
    pub command: String,
    /// Output bytes held for reattaching.
    pub buffered: u64,
    /// How it ended, if it did (kept briefly so a reconnecting client still gets its last output).
    pub exited: Option<ExitStatus>,
}

/// Agent to client on a shell stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShellReply {
    /// Attached; `Output` follows, starting at `offset`.
    Attached {
        /// The session's name (generated ones are learnt here).
        session: String,
        /// Whether this attach created the session.
        created: bool,
        /// The offset of the first output byte that follows.
        offset: u64,
        /// Bytes between `resume_from` and `offset` that the buffer no longer held.
        dropped: u64,
    },
    /// Terminal output, contiguous with what came before on this stream.
    Output(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The session's shell ended; nothing but the channel's end frame follows.
    Exited(ExitStatus),
    /// The answer to [`ShellRequest::List`].
    Sessions(Vec<SessionInfo>),
    /// The answer to [`ShellRequest::Kill`].
    Killed,
    /// The request was refused or failed; nothing but the end frame follows.
    Failed {
        /// What went wrong, for the person at the client.
        message: String,
    },
    /// Another attachment of the same terminal instance took over; this stream ends.
    Replaced,
}

/// Whether `name` is a valid session name: 1 to [`MAX_SESSION_NAME`] bytes of `A-Z a-z 0-9 . _ -`, not
/// starting with `-` or `.` (so it never reads as a flag or a hidden file).
pub fn valid_session_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SESSION_NAME
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ops::testing;
    use crate::wire::encode;

    #[test]
    fn golden_bytes() {
        let attach = ShellRequest::Attach(AttachRequest {
            session: Some("s1".into()),
            create: true,
            instance: [7; 16],
            resume_from: Some(300),
            read_only: false,
            term: "xterm".into(),
            size: WindowSize { cols: 80, rows: 24 },
        });
        assert_eq!(
            hex::encode(encode(&attach).unwrap()),
            concat!(
                "00000022",
                "0001027331",
                "01",
                "07070707070707070707070707070707",
                "01ac02",
                "00",
                "05787465726d",
                "5018"
            )
        );
        assert_eq!(
            hex::encode(encode(&ShellRequest::List).unwrap()),
            "0000000101"
        );
        assert_eq!(
            hex::encode(encode(&ShellRequest::Kill { name: "s1".into() }).unwrap()),
            "0000000402027331"
        );
        assert_eq!(
            hex::encode(encode(&ShellRequest::Input(b"ls\r".to_vec())).unwrap()),
            "0000000503036c730d"
        );
        assert_eq!(
            hex::encode(
                encode(&ShellRequest::Resize(WindowSize {
                    cols: 120,
                    rows: 40
                }))
                .unwrap()
            ),
            "00000003047828"
        );
        assert_eq!(
            hex::encode(encode(&ShellRequest::Detach).unwrap()),
            "0000000105"
        );
        assert_eq!(
            hex::encode(
                encode(&ShellReply::Attached {
                    session: "s1".into(),
                    created: false,
                    offset: 1000,
                    dropped: 0
                })
                .unwrap()
            ),
            "000000080002733100e80700"
        );
        assert_eq!(
            hex::encode(encode(&ShellReply::Output(b"$ ".to_vec())).unwrap()),
            "0000000401022420"
        );
        assert_eq!(
            hex::encode(encode(&ShellReply::Exited(ExitStatus::Code(0))).unwrap()),
            "00000003020000"
        );
        let info = SessionInfo {
            name: "s1".into(),
            created: 1,
            last_attached: 2,
            attached: 1,
            command: "bash".into(),
            buffered: 3,
            exited: None,
        };
        assert_eq!(
            hex::encode(encode(&ShellReply::Sessions(vec![info])).unwrap()),
            "0000000f030102733101020104626173680300"
        );
        assert_eq!(
            hex::encode(encode(&ShellReply::Killed).unwrap()),
            "0000000104"
        );
        assert_eq!(
            hex::encode(
                encode(&ShellReply::Failed {
                    message: "no".into()
                })
                .unwrap()
            ),
            "0000000405026e6f"
        );
        assert_eq!(
            hex::encode(encode(&ShellReply::Replaced).unwrap()),
            "0000000106"
        );
    }

    #[test]
    fn session_names() {
        for good in [
            "s1",
            "build",
            "web.1",
            "a_b-c",
            "x",
            &"a".repeat(MAX_SESSION_NAME),
        ] {
            assert!(valid_session_name(good), "{good}");
        }
        let too_long = "a".repeat(MAX_SESSION_NAME + 1);
        for bad in ["", "-x", ".x", "a b", "a/b", "é", "a\n", too_long.as_str()] {
            assert!(!valid_session_name(bad), "{bad:?}");
        }
    }

    fn request() -> impl Strategy<Value = ShellRequest> {
        prop_oneof![
            (
                proptest::option::of("[a-z0-9]{1,8}"),
                any::<bool>(),
                any::<[u8; 16]>(),
                any::<Option<u64>>(),
                any::<bool>(),
                ".{0,10}",
                any::<(u16, u16)>()
            )
                .prop_map(
                    |(session, create, instance, resume_from, read_only, term, (cols, rows))| {
                        ShellRequest::Attach(AttachRequest {
                            session,
                            create,
                            instance,
                            resume_from,
                            read_only,
                            term,
                            size: WindowSize { cols, rows },
                        })
                    }
                ),
            Just(ShellRequest::List),
            ".{0,10}".prop_map(|name| ShellRequest::Kill { name }),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(ShellRequest::Input),
            any::<(u16, u16)>()
                .prop_map(|(cols, rows)| ShellRequest::Resize(WindowSize { cols, rows })),
            Just(ShellRequest::Detach),
            any::<u64>().prop_map(ShellRequest::Ack),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(ops in prop::collection::vec(request(), 1..6)) {
            prop_assert_eq!(testing::decode_all::<ShellRequest>(&testing::encode_all(&ops)), ops);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            testing::decode_garbage::<ShellReply>(&bytes);
            testing::decode_garbage::<ShellRequest>(&bytes);
        }
    }
}
