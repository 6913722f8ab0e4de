//! Fuzzes the parsers of a client's pin files (`known_machines`, `fleet_locks`) and of enrolment key texts:
//! they must never panic, and a line they accept must be written back the same way.
#![no_main]

use cmdop_fleet::lock::EnrolmentSecret;
use cmdop_proto::pins::{MachinePin, parse_fleet_line, parse_known_machines, parse_machine_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_known_machines(text);
    if let Ok(Some(MachinePin::Current(pin))) = parse_machine_line(text) {
        assert_eq!(parse_machine_line(&pin.to_string()), Ok(Some(MachinePin::Current(pin))));
    }
    if let Ok(Some(pin)) = parse_fleet_line(text) {
        assert_eq!(parse_fleet_line(&pin.to_string()), Ok(Some(pin)));
    }
    if let Ok(secret) = EnrolmentSecret::parse(text) {
        assert_eq!(EnrolmentSecret::parse(&secret.expose_text()), Ok(secret));
    }
});
