//! The byte layout of `agent_keypair.bin` and `agent_keypair.key`, encoded and decoded without any IO: bytes
//! in, bytes out. Which file a key-encryption key is kept in, or whether it is in the OS keyring instead, is
//! decided by `cmdop-keystore`; this module only records the choice (byte 9 of the seed file).
//!
//! The layout is specified byte by byte in `docs/identity.md`; the known-answer test at the bottom pins it.

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::seed::{SEED_LEN, Seed};

/// First bytes of a seed file. The trailing newline catches text-mode mangling, as PNG's magic does.
const SEED_MAGIC: [u8; 8] = *b"CMDOPID\n";
/// First bytes of a key file.
const KEY_MAGIC: [u8; 8] = *b"CMDOPKE\n";
/// The only format version so far, for both files.
const VERSION: u8 = 1;
/// Length of the random key id that ties a seed file to its key-encryption key.
pub const KEY_ID_LEN: usize = 16;
/// Length of the AES-GCM nonce stored in a seed file.
pub const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Magic, version, KEK location, key id, nonce: everything before the ciphertext, authenticated as AAD.
const HEADER_LEN: usize = 8 + 1 + 1 + KEY_ID_LEN + NONCE_LEN;
/// Total length of a version-1 seed file.
pub const SEED_FILE_LEN: usize = HEADER_LEN + SEED_LEN + TAG_LEN;
/// Total length of a version-1 key file.
pub const KEY_FILE_LEN: usize = 8 + 1 + KEY_ID_LEN + 32;

/// Where the key-encryption key of a seed file is kept, as recorded in byte 9 of the file.
///
/// Deliberately exhaustive: these are the only two values version 1 of the format has, and a store must
/// handle both; a new location would come with a new format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KekSlot {
    /// In the OS keyring, under an entry named after the key id.
    Keyring = 1,
    /// In `agent_keypair.key` beside the seed file.
    KeyFile = 2,
}

/// The 32-byte AES-256-GCM key that encrypts the seed: zeroized on drop, redacted in `Debug`, not `Clone`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Kek([u8; 32]);

impl Kek {
    /// Draws a fresh key from `rng`, which must be a cryptographically secure generator.
    pub fn generate<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut kek = Self([0; 32]);
        rng.fill_bytes(&mut kek.0);
        kek
    }

    /// Wraps key bytes read back from where the key is kept (the OS keyring).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key bytes, to hand to the OS keyring; the key file is written by [`encode_key_file`].
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

/// A parsed but not yet decrypted seed file.
#[derive(Debug)]
pub struct SealedSeed {
    slot: KekSlot,
    key_id: [u8; KEY_ID_LEN],
    header: [u8; HEADER_LEN],
    ciphertext: [u8; SEED_LEN + TAG_LEN],
}

/// Why a file's bytes are not a valid seed or key file; shown to the user after the file name.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Wrong magic: not our file at all.
    #[error("it does not start with the cmdop magic bytes")]
    Magic,
    /// A version this build does not know.
    #[error("format version {0} is not supported by this build; upgrade cmdop")]
    Version(u8),
    /// An unknown key-encryption-key location byte.
    #[error("unknown key-encryption-key location byte {0:#04x}")]
    Slot(u8),
    /// Truncated or with trailing bytes.
    #[error("it is {found} bytes long, expected {expected}")]
    Length {
        /// The length of this version of the file.
        expected: usize,
        /// The length found.
        found: usize,
    },
}

/// Encrypts `seed` under `kek` and lays out a complete seed file.
pub fn seal_seed(
    seed: &Seed,
    kek: &Kek,
    slot: KekSlot,
    key_id: &[u8; KEY_ID_LEN],
    nonce: &[u8; NONCE_LEN],
) -> [u8; SEED_FILE_LEN] {
    let mut out = [0u8; SEED_FILE_LEN];
    let (header, body) = out.split_at_mut(HEADER_LEN);
    let (magic, rest) = header.split_at_mut(8);
    magic.copy_from_slice(&SEED_MAGIC);
    let (fixed, rest) = rest.split_at_mut(2);
    fixed.copy_from_slice(&[VERSION, slot as u8]);
    let (id, nonce_out) = rest.split_at_mut(KEY_ID_LEN);
    id.copy_from_slice(key_id);
    nonce_out.copy_from_slice(nonce);

    let cipher = Aes256Gcm::new(&kek.0.into());
    let mut buffer = Zeroizing::new(*seed.expose());
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), header, buffer.as_mut_slice())
        .expect("AES-GCM fails only for messages over 64 GiB; the seed is 32 bytes");
    let (ciphertext, tag_out) = body.split_at_mut(SEED_LEN);
    ciphertext.copy_from_slice(buffer.as_slice());
    tag_out.copy_from_slice(&tag);
    out
}

/// Parses a seed file's layout; does not decrypt.
pub fn parse_seed_file(bytes: &[u8]) -> Result<SealedSeed, FormatError> {
    let (magic, rest) = bytes.split_first_chunk::<8>().ok_or(FormatError::Magic)?;
    if *magic != SEED_MAGIC {
        return Err(FormatError::Magic);
    }
    let (&[version, slot], _) = rest.split_first_chunk::<2>().ok_or(FormatError::Length {
        expected: SEED_FILE_LEN,
        found: bytes.len(),
    })?;
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let slot = match slot {
        1 => KekSlot::Keyring,
        2 => KekSlot::KeyFile,
        other => return Err(FormatError::Slot(other)),
    };
    let exact: &[u8; SEED_FILE_LEN] = bytes.try_into().map_err(|_| FormatError::Length {
        expected: SEED_FILE_LEN,
        found: bytes.len(),
    })?;
    let (header, ciphertext) = exact
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(FormatError::Magic)?;
    let key_id = header[10..10 + KEY_ID_LEN]
        .try_into()
        .map_err(|_| FormatError::Magic)?;
    Ok(SealedSeed {
        slot,
        key_id,
        header: *header,
        ciphertext: ciphertext.try_into().map_err(|_| FormatError::Magic)?,
    })
}

impl SealedSeed {
    /// Where the file says its key-encryption key is kept.
    pub fn slot(&self) -> KekSlot {
        self.slot
    }

    /// The key id that names the keyring entry and must match the key file.
    pub fn key_id(&self) -> &[u8; KEY_ID_LEN] {
        &self.key_id
    }

    /// Decrypts the seed; `None` means the key is wrong or the file was modified (GCM cannot tell which).
    pub fn open(&self, kek: &Kek) -> Option<Seed> {
        let nonce = &self.header[HEADER_LEN - NONCE_LEN..];
        let cipher = Aes256Gcm::new(&kek.0.into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: &self.ciphertext,
                        aad: &self.header,
                    },
                )
                .ok()?,
        );
        let bytes: &[u8; SEED_LEN] = plain.as_slice().try_into().ok()?;
        Some(Seed::from_bytes(*bytes))
    }
}

/// Lays out a key file.
pub fn encode_key_file(key_id: &[u8; KEY_ID_LEN], kek: &Kek) -> Zeroizing<[u8; KEY_FILE_LEN]> {
    let mut out = Zeroizing::new([0u8; KEY_FILE_LEN]);
    let (magic, rest) = out.split_at_mut(8);
    magic.copy_from_slice(&KEY_MAGIC);
    let (version, rest) = rest.split_at_mut(1);
    version.copy_from_slice(&[VERSION]);
    let (id, key) = rest.split_at_mut(KEY_ID_LEN);
    id.copy_from_slice(key_id);
    key.copy_from_slice(&kek.0);
    out
}

/// Parses a key file into its key id and key.
pub fn parse_key_file(bytes: &[u8]) -> Result<([u8; KEY_ID_LEN], Kek), FormatError> {
    let (magic, rest) = bytes.split_first_chunk::<8>().ok_or(FormatError::Magic)?;
    if *magic != KEY_MAGIC {
        return Err(FormatError::Magic);
    }
    let (&[version], rest) = rest.split_first_chunk::<1>().ok_or(FormatError::Length {
        expected: KEY_FILE_LEN,
        found: bytes.len(),
    })?;
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let length = FormatError::Length {
        expected: KEY_FILE_LEN,
        found: bytes.len(),
    };
    if bytes.len() != KEY_FILE_LEN {
        return Err(length);
    }
    let (key_id, key) = rest
        .split_first_chunk::<KEY_ID_LEN>()
        .ok_or(length.clone())?;
    let key: [u8; 32] = key.try_into().map_err(|_| length)?;
    Ok((*key_id, Kek(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example in docs/identity.md: seed 00..1f, KEK 20..3f, key id 40..4f, nonce 50..5b, KEK in
    /// the key file. Cross-checked with Python's `cryptography` AESGCM when it was written.
    const EXAMPLE_SEED_FILE_HEX: &str = "434d444f5049440a0102404142434445464748494a4b4c4d4e4f505152535455565758595a5b\
        b1a1aa11352a710a3c06001161048da0ccfd5d2c6ce36f17bae5c241ac173e26cf19d34368d6bce52d82db1aa7773f6d";
    const EXAMPLE_KEY_FILE_HEX: &str = "434d444f504b450a01404142434445464748494a4b4c4d4e4f\
        202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

    fn example() -> (Seed, Kek, [u8; KEY_ID_LEN], [u8; NONCE_LEN]) {
        let seq = |start: u8| move |i: usize| start.wrapping_add(i as u8);
        (
            Seed::from_bytes(std::array::from_fn(seq(0x00))),
            Kek(std::array::from_fn(seq(0x20))),
            std::array::from_fn(seq(0x40)),
            std::array::from_fn(seq(0x50)),
        )
    }

    #[test]
    fn seed_file_known_answer() {
        let (seed, kek, key_id, nonce) = example();
        let bytes = seal_seed(&seed, &kek, KekSlot::KeyFile, &key_id, &nonce);
        assert_eq!(
            hex::encode(bytes),
            EXAMPLE_SEED_FILE_HEX,
            "the seed file layout or encryption changed"
        );
        let sealed = parse_seed_file(&bytes).unwrap();
        assert_eq!(sealed.slot, KekSlot::KeyFile);
        assert_eq!(sealed.key_id, key_id);
        assert!(sealed.open(&kek).unwrap() == seed);
    }

    #[test]
    fn key_file_known_answer() {
        let (_, kek, key_id, _) = example();
        let bytes = encode_key_file(&key_id, &kek);
        assert_eq!(hex::encode(bytes.as_slice()), EXAMPLE_KEY_FILE_HEX);
        let (id, parsed) = parse_key_file(bytes.as_slice()).unwrap();
        assert_eq!((id, parsed.0), (key_id, kek.0));
    }

    /// The worked example in docs/identity.md must be the bytes this code writes, not a stale copy.
    #[test]
    fn docs_show_the_pinned_example() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/identity.md"
        ))
        .unwrap();
        let squashed: String = doc.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(
            squashed.contains(EXAMPLE_SEED_FILE_HEX),
            "docs/identity.md lacks the seed file example"
        );
        assert!(
            squashed.contains(EXAMPLE_KEY_FILE_HEX),
            "docs/identity.md lacks the key file example"
        );
    }

    #[test]
    fn keyring_slot_round_trips() {
        let (seed, kek, key_id, nonce) = example();
        let bytes = seal_seed(&seed, &kek, KekSlot::Keyring, &key_id, &nonce);
        assert_eq!(bytes[9], 1);
        assert_eq!(parse_seed_file(&bytes).unwrap().slot, KekSlot::Keyring);
    }

    #[test]
    fn every_single_byte_change_is_rejected() {
        let (seed, kek, key_id, nonce) = example();
        let bytes = seal_seed(&seed, &kek, KekSlot::KeyFile, &key_id, &nonce);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut tampered = bytes;
                tampered[i] ^= 1 << bit;
                let opened = parse_seed_file(&tampered)
                    .ok()
                    .and_then(|sealed| sealed.open(&kek));
                assert!(
                    opened.is_none(),
                    "flipping bit {bit} of byte {i} went unnoticed"
                );
            }
        }
        for len in 0..bytes.len() {
            assert!(
                parse_seed_file(&bytes[..len]).is_err(),
                "truncated to {len} bytes"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(
            parse_seed_file(&longer).unwrap_err(),
            FormatError::Length {
                expected: 86,
                found: 87
            }
        );
    }

    #[test]
    fn wrong_kek_does_not_open() {
        let (seed, kek, key_id, nonce) = example();
        let bytes = seal_seed(&seed, &kek, KekSlot::KeyFile, &key_id, &nonce);
        let mut other = Kek(kek.0);
        other.0[0] ^= 1;
        assert!(parse_seed_file(&bytes).unwrap().open(&other).is_none());
    }

    proptest::proptest! {
        #[test]
        fn seal_then_open_round_trips(
            seed in proptest::array::uniform32(0u8..),
            kek in proptest::array::uniform32(0u8..),
            key_id in proptest::array::uniform16(0u8..),
            nonce in proptest::array::uniform12(0u8..),
            keyring in proptest::bool::ANY,
        ) {
            let slot = if keyring { KekSlot::Keyring } else { KekSlot::KeyFile };
            let bytes = seal_seed(&Seed::from_bytes(seed), &Kek(kek), slot, &key_id, &nonce);
            let sealed = parse_seed_file(&bytes).unwrap();
            proptest::prop_assert_eq!(sealed.slot, slot);
            proptest::prop_assert_eq!(sealed.key_id, key_id);
            proptest::prop_assert!(sealed.open(&Kek(kek)).unwrap() == Seed::from_bytes(seed));
            let key_file = encode_key_file(&key_id, &Kek(kek));
            let (id, back) = parse_key_file(key_file.as_slice()).unwrap();
            proptest::prop_assert_eq!((id, back.0), (key_id, kek));
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(0u8.., 0..200)) {
            let _ = parse_seed_file(&bytes);
            let _ = parse_key_file(&bytes);
        }
    }
}
