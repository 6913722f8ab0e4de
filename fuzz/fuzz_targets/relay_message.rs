//! Fuzzes the clients' decoder of relay frames: it must never panic, and whatever it accepts must re-encode to
//! the same bytes it was decoded from.
#![no_main]

use cmdop_proto::wire::{FrameDecoder, RelayMessage, decode_body, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    if let Ok(Some(message)) = FrameDecoder::new().decode::<RelayMessage>(&mut input) {
        let consumed = &data[..data.len() - input.len()];
        assert_eq!(encode(&message).ok().as_deref(), Some(consumed));
    }
    let _ = decode_body::<RelayMessage>(data);
});
