//! Fuzzes the decoders of every signed fleet-lock document (authority states, machine and member certificates,
//! enrolment authorizations, revocation lists), capabilities and stream credentials, which reach agents and
//! clients through the relay: they must never panic, and whatever they accept must re-encode to the same bytes.
#![no_main]

use cmdop_fleet::SignedCapability;
use cmdop_fleet::lock::{
    MachineCertificate, SignedAuthority, SignedEnrolmentAuthorization, SignedMemberCertificate,
    SignedRevocationList, StreamCredentials, VerifiedAuthority,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(x) = SignedAuthority::from_bytes(data) {
        assert_eq!(x.to_bytes(), data);
    }
    if let Ok(x) = MachineCertificate::from_bytes(data) {
        assert_eq!(x.to_bytes(), data);
    }
    if let Ok(x) = SignedEnrolmentAuthorization::from_bytes(data) {
        assert_eq!(x.to_bytes(), data);
    }
    if let Ok(x) = SignedMemberCertificate::from_bytes(data) {
        assert_eq!(x.to_bytes(), data);
    }
    if let Ok(x) = SignedRevocationList::from_bytes(data) {
        assert_eq!(x.to_bytes(), data);
    }
    if let Ok(x) = StreamCredentials::from_bytes(data) {
        assert_eq!(x.to_bytes(), data);
    }
    if let Ok(x) = SignedCapability::from_bytes(data) {
        assert_eq!(x.to_bytes(), data);
    }
    // A chain cut out of the input: verification from any claimed root is total too.
    let chain: Vec<Vec<u8>> = data.split(|b| *b == 0xff).map(<[u8]>::to_vec).collect();
    if let Ok(root) = VerifiedAuthority::claimed_fleet_key(&chain) {
        let _ = VerifiedAuthority::verify(cmdop_fleet::FleetId::from_bytes([0; 16]), &root, &chain);
    }
});
