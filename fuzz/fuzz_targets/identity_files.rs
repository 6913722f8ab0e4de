//! Fuzzes the readers of the encrypted seed file (`agent_keypair.bin`) and its key file (`agent_keypair.key`):
//! `cmdop_identity::store::format`'s parsers, which take the files' bytes. Whatever the two hold, parsing returns
//! a value or an error, never a panic; and only whole files open. That a key file's id names the seed file's key
//! is checked one layer up, in cmdop-keystore (`read_key_file`, tested in `crates/cmdop-keystore/tests/store.rs`):
//! at this layer a seed opens under the right key bytes whatever id the key file carries.
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
            // Only whole files (86 and 57 bytes) parse.
            assert_eq!((seed.len(), key.len()), (86, 57));
            let _ = (key_id, cmdop_identity::Identity::from_seed(&opened));
        }
    }
});
