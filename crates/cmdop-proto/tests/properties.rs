//! Property tests: arbitrary data round-trips through the channel (with rekeys and arbitrary chunking), and
//! arbitrary bytes never make the decoder, the frame decoder or a session panic.

// Helpers outside #[test] functions unwrap too: a panic in a test harness is a test failure.
#![allow(clippy::unwrap_used)]

use crate::support::*;
use cmdop_proto::e2e::{Incoming, MessageDecoder, RekeyPolicy, decode_frame};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_data_round_trips_both_ways(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..12),
        wire_chunk in 1usize..5000,
        max_frames in 1u64..6,
        status in any::<u8>(),
    ) {
        let route = prologue(&agent());
        let policy = RekeyPolicy { max_frames, ..RekeyPolicy::default() };
        let mut pair = pair_with(20, route, route, policy);
        let at = now();
        for client_sends in [true, false] {
            let (sender, receiver) =
                if client_sends { (&mut pair.client, &mut pair.agent) } else { (&mut pair.agent, &mut pair.client) };
            let mut wire = Vec::new();
            for chunk in &chunks {
                sender.send_data(chunk, at, &mut wire).unwrap();
            }
            sender.send_end(status, at, &mut wire).unwrap();
            let got = receive(receiver, &wire, wire_chunk);
            prop_assert_eq!(&got.outcome, &Ok(()));
            let mut expected: Vec<Incoming> =
                chunks.iter().filter(|c| !c.is_empty()).map(|c| Incoming::Data(c.clone())).collect();
            expected.push(Incoming::End { status });
            prop_assert_eq!(got.delivered, expected);
        }
    }

    #[test]
    fn garbage_never_panics_the_decoder_or_a_session(
        garbage in proptest::collection::vec(any::<u8>(), 0..4096),
        split in 1usize..300,
    ) {
        let mut pair = pair();
        let got = receive(&mut pair.agent, &garbage, split);
        // Random bytes never authenticate, so nothing is ever delivered.
        prop_assert!(got.delivered.is_empty());
        prop_assert!(got.outcome.is_err() || garbage.is_empty());

        let mut decoder = MessageDecoder::new();
        let mut input = garbage.as_slice();
        while let Ok(Some(message)) = decoder.feed(&mut input) {
            prop_assert!(!message.is_empty());
            let _ = decode_frame(&message);
        }
        let _ = decode_frame(&garbage);
    }
}
