//! Fuzzes the parser of credential texts (`cmdop_ak_…` / `cmdop_ut_…`) presented by peers.
#![no_main]

use cmdop_fleet::CredentialSecret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(secret) = CredentialSecret::parse(text)
    {
        assert_eq!(CredentialSecret::parse(&secret.expose_text()).map(|s| s.hash().to_bytes()), Ok(secret.hash().to_bytes()));
    }
});
