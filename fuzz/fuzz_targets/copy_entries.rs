//! Fuzzes the copy stream's messages as each side receives them: the listings and stats a client gets from a
//! machine (entry names, symlink targets, modes, sizes) and the paths an agent gets from a client. Decoding
//! never panics, buffers at most one frame, and every decoded message survives an encode/decode round trip;
//! the partial-file name made from an entry's name stays in the entry's directory.
#![no_main]

use cmdop_proto::ops::copy::{
    CopyReply, CopyRequest, EntryKind, PART_SUFFIX, parse_part_name, part_name, version_tag,
};
use cmdop_proto::wire::{FrameDecoder, MAX_FRAME_SIZE, decode_body, encode};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    for reply in decode_stream::<CopyReply>(data) {
        if let CopyReply::Entry(entry) = &reply {
            let tag = version_tag(entry.size, entry.modified_ns, entry.mode);
            check_part_name(&entry.path, tag);
            if let EntryKind::Symlink { target } = &entry.kind {
                let _ = target.split('/').filter(|c| *c == "..").count();
            }
        }
    }
    for request in decode_stream::<CopyRequest>(data) {
        if let CopyRequest::Put { path, tag, .. } = &request {
            let name = path.rsplit('/').next().unwrap_or(path);
            check_part_name(name, *tag);
        }
    }
});

/// Every message a peer sending `data` on a copy stream gets decoded as, each checked to round-trip.
fn decode_stream<M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    data: &[u8],
) -> Vec<M> {
    let mut input = data;
    let mut decoder = FrameDecoder::new();
    let mut messages = Vec::new();
    while let Ok(Some(message)) = decoder.decode::<M>(&mut input) {
        let frame = encode(&message).expect("a decoded message encodes");
        assert!(frame.len() <= 4 + MAX_FRAME_SIZE);
        let again: M = decode_body(&frame[4..]).expect("an encoded message decodes");
        assert_eq!(again, message);
        messages.push(message);
    }
    messages
}

/// The partial file of a target named `name` is hidden, in the same directory, names the version and a nonce,
/// and reads back as exactly that version and nonce.
fn check_part_name(name: &str, tag: u64) {
    let nonce = tag.rotate_left(17) ^ 0x5a5a;
    let part = part_name(name, tag, nonce);
    assert!(part.starts_with('.'));
    assert!(part.ends_with(PART_SUFFIX));
    assert_eq!(part.len(), 1 + name.len() + 1 + 16 + 1 + 16 + PART_SUFFIX.len());
    assert_eq!(part.matches('/').count(), name.matches('/').count());
    assert_eq!(parse_part_name(name, &part), Some((tag, Some(nonce))));
}
