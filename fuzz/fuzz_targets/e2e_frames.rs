//! Fuzzes the end-to-end channel's decoders of untrusted bytes: the length-delimited message decoder over
//! arbitrary chunking, and the transport frame decoder over arbitrary plaintext.
#![no_main]

use cmdop_proto::e2e::{MessageDecoder, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame(data);
    let Some((&step, bytes)) = data.split_first() else { return };
    let mut decoder = MessageDecoder::new();
    for chunk in bytes.chunks(usize::from(step.max(1))) {
        let mut input = chunk;
        loop {
            match decoder.feed(&mut input) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
