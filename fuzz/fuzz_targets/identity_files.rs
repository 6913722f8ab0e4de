//! Fuzzes the readers of the encrypted seed file (`agent_keypair.bin`) and its key file (`agent_keypair.key`):
//! `cmdop_identity::store::format`'s parsers, which take the files' bytes. Whatever the two hold, parsing returns
//! a value or an error, never a panic; and a seed file opens only under the key its key file names and holds.
//!
//! The input is `split ‖ seed file ‖ key file`, the first `split` bytes after the first byte going to the
//! seed file. (The seed store in cmdop-keystore, which adds the files and the OS keyring around these parsers,
//! is not linked here: the fuzz targets link only the sans-IO core, fleet and identity.)
#![no_main]

use cmdop_identity::store::format::{parse_key_file, parse_seed_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (seed, key) = rest.split_at(usize::from(split).min(rest.len()));
    let sealed = parse_seed_file(seed);
    let kek = parse_key_file(key);
    if let (Ok(sealed), Ok((key_id, kek))) = (sealed, kek) {
        if let Some(opened) = sealed.open(&kek) {
            // Only whole files (86 and 57 bytes) parse, and a seed opens only under the key id it names.
            assert_eq!((seed.len(), key.len()), (86, 57));
            assert_eq!(sealed.key_id(), &key_id);
            let _ = cmdop_identity::Identity::from_seed(&opened);
        }
    }
});
