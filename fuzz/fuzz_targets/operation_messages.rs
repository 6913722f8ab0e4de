//! Fuzzes the decoding of operation messages (what client and agent say inside the end-to-end channel): both
//! directions' types of every stream kind through the bounded frame decoder, never panicking and never
//! buffering past one frame.
#![no_main]

use cmdop_proto::ops::copy::{CopyReply, CopyRequest};
use cmdop_proto::ops::forward::{TunnelReply, TunnelRequest};
use cmdop_proto::ops::shell::{ShellReply, ShellRequest};
use cmdop_proto::ops::{AgentOp, ClientOp};
use cmdop_proto::wire::FrameDecoder;
use libfuzzer_sys::fuzz_target;

macro_rules! decode_all {
    ($message:ty, $data:expr) => {{
        let mut input = $data;
        let mut decoder = FrameDecoder::new();
        while let Ok(Some(_)) = decoder.decode::<$message>(&mut input) {}
    }};
}

fuzz_target!(|data: &[u8]| {
    decode_all!(ClientOp, data);
    decode_all!(AgentOp, data);
    decode_all!(TunnelRequest, data);
    decode_all!(TunnelReply, data);
    decode_all!(CopyRequest, data);
    decode_all!(CopyReply, data);
    decode_all!(ShellRequest, data);
    decode_all!(ShellReply, data);
});
