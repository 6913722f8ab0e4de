//! Operation messages of a copy stream (`cmdop connect cp`): a sequence of requests from the client, each
//! answered by the agent, over one end-to-end stream.
//!
//! Remote paths are the agent user's: absolute, or relative to its home directory. Every transfer carries a
//! whole-file SHA-256 checked by the receiver before the file gets its final name, and resumes from a partial
//! file (`.NAME.TAG-NONCE.cmdop-part`, where `TAG` names the source version and `NONCE` is the receiver's own
//! random number) instead of starting over. Specified in
//! `docs/protocol.md` ("Copy streams").
//!
//! ```text
//!  client                                           agent
//!  Stat{path}                                  ──▶  ◀── Entry | Missing | Failed
//!  List{path}                                  ──▶  ◀── Entry… then ListEnd | Failed
//!  Put{path, size, mode, tag}                  ──▶  ◀── Resume{offset} | Failed
//!  Chunk… (from offset) then PutEnd{sha256}    ──▶  ◀── Done | Failed      (verified, fsynced, renamed)
//!  Get{path, offset}                           ──▶  ◀── Chunk… then GetEnd{sha256 of the whole file} | Failed
//!  Mkdir{path, mode} / Symlink{path, target}   ──▶  ◀── Done | Failed
//!  SetModified{path, modified_ns}  (cp -p)     ──▶  ◀── Done | Failed
//! ```

use serde::{Deserialize, Serialize};

/// Client to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyRequest {
    /// Describe one path (without following a final symlink).
    Stat {
        /// The remote path.
        path: String,
    },
    /// Describe the tree under a directory: one [`CopyReply::Entry`] per entry (paths relative to `path`,
    /// `/`-separated, a directory before its contents), then [`CopyReply::ListEnd`].
    List {
        /// The remote directory.
        path: String,
    },
    /// Start writing a file: the agent answers with the offset to resume from.
    Put {
        /// The remote file's final path.
        path: String,
        /// The whole file's size.
        size: u64,
        /// Permission bits to give it (`0o7777` at most).
        mode: u32,
        /// Names the source version (size, modification time, mode): a partial file left by a transfer of the
        /// same version is resumed, any other is discarded.
        tag: u64,
    },
    /// File bytes for the current `Put`, in order (at most [`super::MAX_CHUNK`]).
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The end of the current `Put`: SHA-256 of the whole file, from byte 0.
    PutEnd {
        /// The digest.
        sha256: [u8; 32],
    },
    /// Read a file from `offset` to its end.
    Get {
        /// The remote file.
        path: String,
        /// Where to start (the length of the client's partial file).
        offset: u64,
    },
    /// Create a directory (and any missing parents); an existing directory is fine.
    Mkdir {
        /// The remote directory.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Create a symbolic link at `path` pointing to `target`.
    Symlink {
        /// Where the link goes.
        path: String,
        /// What it points to, verbatim.
        target: String,
    },
    /// Set the modification time of a file or directory (not following a final symlink); its access time is
    /// left alone. Sent by `cp -p` after the file is complete (and after a directory's contents).
    SetModified {
        /// The remote path.
        path: String,
        /// Nanoseconds since the Unix epoch.
        modified_ns: u64,
    },
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, with its target verbatim.
    Symlink {
        /// The link's target.
        target: String,
    },
}

/// One file system entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// For `Stat`, the path as asked; for `List`, relative to the listed directory. Untrusted on the client.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Size in bytes (files only; 0 otherwise).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 when unknown).
    pub modified_ns: u64,
}

/// Agent to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyReply {
    /// The answer to `Stat`, or one entry of a `List`.
    Entry(Entry),
    /// `Stat`: nothing exists at that path.
    Missing,
    /// The end of a `List`.
    ListEnd,
    /// `Put`: send the file from this offset (the bytes before it already sit in the partial file).
    Resume {
        /// The offset.
        offset: u64,
    },
    /// File bytes of a `Get`, in order (at most [`super::MAX_CHUNK`]).
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The end of a `Get`: SHA-256 of the whole file, from byte 0.
    GetEnd {
        /// The digest.
        sha256: [u8; 32],
        /// The file's permission bits.
        mode: u32,
    },
    /// `PutEnd`, `Mkdir` or `Symlink` succeeded (for `PutEnd`: verified, synced and renamed).
    Done,
    /// The current request failed; the stream stays usable for the next one.
    Failed {
        /// Why, for the person at the client.
        message: String,
    },
}

/// Suffix of partial files.
pub const PART_SUFFIX: &str = ".cmdop-part";

/// The name of a partial file for a target named `file_name`, a source version `tag` and a random `nonce`, in
/// the target's directory: hidden, naming the version so that only the same version resumes from it, and
/// carrying a nonce the receiver draws from its own random source, so that the peer (which knows the file
/// name and the tag) cannot predict the name and put something there first.
pub fn part_name(file_name: &str, tag: u64, nonce: u64) -> String {
    format!(".{file_name}.{tag:016x}-{nonce:016x}{PART_SUFFIX}")
}

/// What [`part_name`] put into `candidate` for a target named `file_name`: `Some((tag, nonce))`, or `None` if
/// `candidate` is not a partial file of that target. A name in the older form without a nonce
/// (`.NAME.TAG.cmdop-part`) reads as `Some((tag, None))`: such a file is never resumed, only removed.
pub fn parse_part_name(file_name: &str, candidate: &str) -> Option<(u64, Option<u64>)> {
    let middle = candidate
        .strip_prefix('.')?
        .strip_prefix(file_name)?
        .strip_prefix('.')?
        .strip_suffix(PART_SUFFIX)?;
    let hex = |text: &str| {
        (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(text, 16).ok())
            .flatten()
    };
    match middle.split_once('-') {
        Some((tag, nonce)) => Some((hex(tag)?, Some(hex(nonce)?))),
        None => Some((hex(middle)?, None)),
    }
}

/// The resume tag of a source version: the first 8 bytes of SHA-256 over size, modification time and mode.
pub fn version_tag(size: u64, modified_ns: u64, mode: u32) -> u64 {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"cmdop copy tag v1");
    hasher.update(size.to_be_bytes());
    hasher.update(modified_ns.to_be_bytes());
    hasher.update(mode.to_be_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ops::MAX_CHUNK;
    use crate::ops::testing;
    use crate::wire::encode;

    fn hex(value: &impl Serialize) -> String {
        hex::encode(encode(value).unwrap())
    }

    #[test]
    fn golden_bytes() {
        assert_eq!(
            hex(&CopyRequest::Stat { path: "a".into() }),
            "00000003000161"
        );
        assert_eq!(
            hex(&CopyRequest::List { path: "d".into() }),
            "00000003010164"
        );
        assert_eq!(
            hex(&CopyRequest::Put {
                path: "f".into(),
                size: 300,
                mode: 0o644,
                tag: 1,
            }),
            "00000008020166ac02a40301"
        );
        assert_eq!(
            hex(&CopyRequest::Chunk(b"hi".to_vec())),
            "00000004030268 69".replace(' ', "")
        );
        assert_eq!(
            hex(&CopyRequest::PutEnd { sha256: [7; 32] }),
            format!("0000002104{}", "07".repeat(32))
        );
        assert_eq!(
            hex(&CopyRequest::Get {
                path: "f".into(),
                offset: 5,
            }),
            "0000000405016605"
        );
        assert_eq!(
            hex(&CopyRequest::Mkdir {
                path: "d".into(),
                mode: 0o755,
            }),
            "00000005060164ed03"
        );
        assert_eq!(
            hex(&CopyRequest::Symlink {
                path: "l".into(),
                target: "t".into(),
            }),
            "0000000507016c0174"
        );
        assert_eq!(
            hex(&CopyRequest::SetModified {
                path: "f".into(),
                modified_ns: 300,
            }),
            "0000000508016 6ac02".replace(' ', "")
        );
        let entry = Entry {
            path: "x".into(),
            kind: EntryKind::Symlink { target: "y".into() },
            mode: 0o777,
            size: 0,
            modified_ns: 1,
        };
        assert_eq!(
            hex(&CopyReply::Entry(entry)),
            "0000000a000178020179ff030001"
        );
        assert_eq!(hex(&CopyReply::Missing), "0000000101");
        assert_eq!(hex(&CopyReply::ListEnd), "0000000102");
        assert_eq!(hex(&CopyReply::Resume { offset: 128 }), "00000003038001");
        assert_eq!(hex(&CopyReply::Chunk(vec![])), "000000020400");
        assert_eq!(
            hex(&CopyReply::GetEnd {
                sha256: [0; 32],
                mode: 0o600,
            }),
            format!("0000002305{}8003", "00".repeat(32))
        );
        assert_eq!(hex(&CopyReply::Done), "0000000106");
        assert_eq!(
            hex(&CopyReply::Failed {
                message: "no".into()
            }),
            "0000000407026e6f"
        );
    }

    #[test]
    fn a_full_chunk_fits_in_one_frame() {
        assert!(encode(&CopyRequest::Chunk(vec![0xff; MAX_CHUNK])).is_ok());
        assert!(encode(&CopyReply::Chunk(vec![0xff; MAX_CHUNK])).is_ok());
    }

    #[test]
    fn part_names_parse_back_and_nothing_else_does() {
        let name = part_name("f.txt", 0x0123_4567_89ab_cdef, 7);
        assert_eq!(name, ".f.txt.0123456789abcdef-0000000000000007.cmdop-part");
        assert_eq!(
            parse_part_name("f.txt", &name),
            Some((0x0123_4567_89ab_cdef, Some(7)))
        );
        assert_eq!(
            parse_part_name("f.txt", ".f.txt.0123456789abcdef.cmdop-part"),
            Some((0x0123_4567_89ab_cdef, None))
        );
        for other in [
            "f.txt",
            ".f.txt.cmdop-part",
            ".f.txt.0123-0000000000000007.cmdop-part",
            ".f.txt.0123456789abcdef-7.cmdop-part",
            ".f.0123456789abcdef-0000000000000007.cmdop-part",
            ".g.f.txt.0123456789abcdef-0000000000000007.cmdop-part",
            ".f.txt.0123456789abcdeg-0000000000000007.cmdop-part",
        ] {
            assert_eq!(parse_part_name("f.txt", other), None, "{other}");
        }
        // A file named like another's partial file is not mistaken for it.
        assert_eq!(parse_part_name("f", &part_name("f.txt", 1, 2)), None);
    }

    #[test]
    fn tags_change_with_the_version() {
        let tag = version_tag(10, 20, 0o644);
        assert_eq!(tag, version_tag(10, 20, 0o644));
        assert_ne!(tag, version_tag(11, 20, 0o644));
        assert_ne!(tag, version_tag(10, 21, 0o644));
        assert_ne!(tag, version_tag(10, 20, 0o600));
    }

    fn request() -> impl Strategy<Value = CopyRequest> {
        prop_oneof![
            ".{0,20}".prop_map(|path| CopyRequest::Stat { path }),
            ".{0,20}".prop_map(|path| CopyRequest::List { path }),
            (".{0,20}", any::<u64>(), any::<u32>(), any::<u64>()).prop_map(
                |(path, size, mode, tag)| CopyRequest::Put {
                    path,
                    size,
                    mode,
                    tag
                }
            ),
            prop::collection::vec(any::<u8>(), 0..100).prop_map(CopyRequest::Chunk),
            any::<[u8; 32]>().prop_map(|sha256| CopyRequest::PutEnd { sha256 }),
            (".{0,20}", any::<u64>()).prop_map(|(path, offset)| CopyRequest::Get { path, offset }),
            (".{0,20}", any::<u32>()).prop_map(|(path, mode)| CopyRequest::Mkdir { path, mode }),
            (".{0,20}", ".{0,20}").prop_map(|(path, target)| CopyRequest::Symlink { path, target }),
            (".{0,20}", any::<u64>())
                .prop_map(|(path, modified_ns)| CopyRequest::SetModified { path, modified_ns }),
        ]
    }

    fn reply() -> impl Strategy<Value = CopyReply> {
        let kind = prop_oneof![
            Just(EntryKind::File),
            Just(EntryKind::Dir),
            ".{0,20}".prop_map(|target| EntryKind::Symlink { target }),
        ];
        prop_oneof![
            (".{0,20}", kind, any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
                |(path, kind, mode, size, modified_ns)| CopyReply::Entry(Entry {
                    path,
                    kind,
                    mode,
                    size,
                    modified_ns
                })
            ),
            Just(CopyReply::Missing),
            Just(CopyReply::ListEnd),
            any::<u64>().prop_map(|offset| CopyReply::Resume { offset }),
            prop::collection::vec(any::<u8>(), 0..100).prop_map(CopyReply::Chunk),
            (any::<[u8; 32]>(), any::<u32>())
                .prop_map(|(sha256, mode)| CopyReply::GetEnd { sha256, mode }),
            Just(CopyReply::Done),
            ".{0,20}".prop_map(|message| CopyReply::Failed { message }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(ops in prop::collection::vec(request(), 1..8)) {
            prop_assert_eq!(testing::decode_all::<CopyRequest>(&testing::encode_all(&ops)), ops);
        }

        #[test]
        fn replies_round_trip(ops in prop::collection::vec(reply(), 1..8)) {
            prop_assert_eq!(testing::decode_all::<CopyReply>(&testing::encode_all(&ops)), ops);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            testing::decode_garbage::<CopyRequest>(&bytes);
            testing::decode_garbage::<CopyReply>(&bytes);
        }
    }
}
