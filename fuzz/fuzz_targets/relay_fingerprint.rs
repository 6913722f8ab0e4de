//! Fuzzes the parser of relay certificate fingerprints given on command lines and in config files.
#![no_main]

use cmdop_proto::RelayFingerprint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(fingerprint) = text.parse::<RelayFingerprint>()
    {
        assert_eq!(fingerprint.to_string().parse::<RelayFingerprint>().ok(), Some(fingerprint));
    }
});
