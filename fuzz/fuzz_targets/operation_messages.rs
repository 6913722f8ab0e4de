//! Fuzzes the decoding of operation messages (what client and agent say inside the end-to-end channel): both
//! directions' types (exec and shell streams) through the bounded frame decoder, never panicking and never buffering past one frame.
#![no_main]

use cmdop_relay::ops::shell::{ShellReply, ShellRequest};
use cmdop_relay::ops::{AgentOp, ClientOp};
use cmdop_relay::wire::FrameDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let mut decoder = FrameDecoder::new();
    while let Ok(Some(_)) = decoder.decode::<ClientOp>(&mut input) {}
    let mut input = data;
    let mut decoder = FrameDecoder::new();
    while let Ok(Some(_)) = decoder.decode::<AgentOp>(&mut input) {}
    let mut input = data;
    let mut decoder = FrameDecoder::new();
    while let Ok(Some(_)) = decoder.decode::<ShellRequest>(&mut input) {}
    let mut input = data;
    let mut decoder = FrameDecoder::new();
    while let Ok(Some(_)) = decoder.decode::<ShellReply>(&mut input) {}
});
