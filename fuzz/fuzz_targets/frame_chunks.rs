//! Fuzzes the incremental frame decoder with arbitrary chunking: feeding the same bytes in pieces must give the
//! same messages as feeding them at once, and never panic.
#![no_main]

use cmdop_proto::wire::{FrameDecoder, PeerMessage};
use libfuzzer_sys::fuzz_target;

fn decode_all(chunks: &[&[u8]]) -> Vec<Result<PeerMessage, ()>> {
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    for chunk in chunks {
        let mut input = *chunk;
        loop {
            match decoder.decode::<PeerMessage>(&mut input) {
                Ok(Some(message)) => out.push(Ok(message)),
                Ok(None) => break,
                Err(_) => {
                    out.push(Err(()));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else { return };
    let step = usize::from(step.max(1));
    let chunked: Vec<&[u8]> = bytes.chunks(step).collect();
    assert_eq!(decode_all(&chunked), decode_all(&[bytes]));
});
