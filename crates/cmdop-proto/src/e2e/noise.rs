//! `Noise_NN_25519_AESGCM_SHA256`, built to the Noise specification revision 34 (sans-IO).
//!
//! Only what the NN pattern needs is here: `CipherState` (§5.1), `SymmetricState` (§5.2) and the two
//! handshake messages `-> e` and `<- e, ee` (§5.3, §7.4), plus `Rekey` (§11.3). It is proven byte for byte
//! against the cacophony vector in `tests/e2e_noise_vectors.rs`. The cmdop channel (`channel.rs`)
//! always uses empty handshake payloads; payload support exists so the vector can be checked.

use std::fmt;

use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey as DhPublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use super::ChannelError;

/// The full Noise protocol name; it is the initial handshake hash (§5.2 `InitializeSymmetric`).
pub const PROTOCOL_NAME: &[u8] = b"Noise_NN_25519_AESGCM_SHA256";

/// Length of an X25519 public key on the wire (`DHLEN`).
pub const DH_LEN: usize = 32;

/// Length of an AES-GCM authentication tag.
pub const TAG_LEN: usize = 16;

/// Largest Noise message (§3): also the largest frame body of the cmdop channel.
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// Noise reserves nonce 2^64-1 (§5.1): it is only ever used by `Rekey`.
const MAX_NONCE: u64 = u64::MAX;

/// An X25519 ephemeral private key for one handshake.
///
/// Created from a CSPRNG; fixed bytes exist only for known-answer tests. Zeroized on drop.
pub struct Ephemeral(StaticSecret);

impl Ephemeral {
    /// A fresh ephemeral key from a cryptographically secure RNG.
    pub fn generate<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Self(StaticSecret::from(*bytes))
    }

    /// An ephemeral key from fixed bytes, for known-answer tests only.
    ///
    /// Reusing an ephemeral across handshakes destroys forward secrecy and session uniqueness; production code
    /// must call [`Ephemeral::generate`].
    pub fn danger_from_bytes(bytes: [u8; 32]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    fn public(&self) -> [u8; 32] {
        DhPublicKey::from(&self.0).to_bytes()
    }

    /// `DH(e, re)`, refusing a result that the peer could have predicted (a low-order point gives all zeros).
    fn diffie_hellman(&self, peer: [u8; 32]) -> Result<Zeroizing<[u8; 32]>, ChannelError> {
        let shared = self.0.diffie_hellman(&DhPublicKey::from(peer));
        if !shared.was_contributory() {
            return Err(ChannelError::LowOrderKey);
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }
}

impl fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ephemeral(..)")
    }
}

/// A Noise `CipherState`: one AES-256-GCM key and its 64-bit nonce counter (§5.1).
///
/// The key is zeroized on drop and by [`CipherState::clear`].
pub struct CipherState {
    key: Option<Zeroizing<[u8; 32]>>,
    nonce: u64,
    // A cleared state must fail closed, never fall back to the keyless (identity) mode of the handshake.
    cleared: bool,
}

impl CipherState {
    fn empty() -> Self {
        Self {
            key: None,
            nonce: 0,
            cleared: false,
        }
    }

    fn with_key(key: [u8; 32]) -> Self {
        Self {
            key: Some(Zeroizing::new(key)),
            nonce: 0,
            cleared: false,
        }
    }

    /// The nonce the next message will use; equals the number of messages processed with this state.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// Forget the key (zeroizing it); every later operation fails.
    pub fn clear(&mut self) {
        self.key = None;
        self.cleared = true;
    }

    /// `EncryptWithAd`: encrypts `buffer` in place and returns the tag; the caller appends it.
    ///
    /// Without a key this is the identity (only possible during a handshake, §5.1).
    pub(crate) fn encrypt_in_place(
        &mut self,
        ad: &[u8],
        buffer: &mut [u8],
    ) -> Result<Option<[u8; TAG_LEN]>, ChannelError> {
        if self.cleared {
            return Err(ChannelError::Closed);
        }
        let Some(key) = &self.key else {
            return Ok(None);
        };
        if self.nonce == MAX_NONCE {
            return Err(ChannelError::NonceExhausted);
        }
        let tag = aead_key(key)?
            .seal_in_place_separate_tag(nonce(self.nonce), Aad::from(ad), buffer)
            .map_err(|_| ChannelError::MessageTooLarge { len: buffer.len() })?;
        self.nonce += 1;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(Some(out))
    }

    /// `DecryptWithAd`: `message` is ciphertext followed by the tag; returns the plaintext length, the
    /// plaintext being `message[..len]`. Nothing in `message` may be used if this fails.
    pub(crate) fn decrypt_in_place(
        &mut self,
        ad: &[u8],
        message: &mut [u8],
    ) -> Result<usize, ChannelError> {
        if self.cleared {
            return Err(ChannelError::Closed);
        }
        let Some(key) = &self.key else {
            return Ok(message.len());
        };
        if self.nonce == MAX_NONCE {
            return Err(ChannelError::NonceExhausted);
        }
        let Some(body_len) = message.len().checked_sub(TAG_LEN) else {
            return Err(ChannelError::Decrypt);
        };
        let opened = aead_key(key)?
            .open_in_place(nonce(self.nonce), Aad::from(ad), message)
            .map(|plain| plain.len());
        if opened != Ok(body_len) {
            // Nothing of a message that failed authentication may be used: wipe whatever is in the buffer.
            message.zeroize();
            return Err(ChannelError::Decrypt);
        }
        self.nonce += 1;
        Ok(body_len)
    }

    /// `EncryptWithAd(ad, plaintext)`: returns ciphertext ‖ tag (just the plaintext before the first key).
    pub fn encrypt_with_ad(
        &mut self,
        ad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, ChannelError> {
        let mut out = plaintext.to_vec();
        if let Some(tag) = self.encrypt_in_place(ad, &mut out)? {
            out.extend_from_slice(&tag);
        }
        Ok(out)
    }

    /// `DecryptWithAd(ad, ciphertext)`: returns the plaintext; nothing is returned if the tag fails.
    pub fn decrypt_with_ad(
        &mut self,
        ad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, ChannelError> {
        let mut buffer = ciphertext.to_vec();
        let len = self.decrypt_in_place(ad, &mut buffer)?;
        buffer.truncate(len);
        Ok(buffer)
    }

    /// `Rekey()` (§11.3): the new key is the first 32 bytes of `ENCRYPT(k, 2^64-1, zerolen, zeros)`.
    ///
    /// The nonce counter is not reset, as the specification requires.
    pub fn rekey(&mut self) -> Result<(), ChannelError> {
        let Some(key) = &mut self.key else {
            return Err(ChannelError::Closed);
        };
        let mut block = Zeroizing::new([0u8; 32]);
        // The new key is the ciphertext's first 32 bytes; the tag is not part of it (§11.3).
        let _tag = aead_key(key)?
            .seal_in_place_separate_tag(nonce(MAX_NONCE), Aad::empty(), block.as_mut())
            .map_err(|_| ChannelError::Closed)?;
        key.copy_from_slice(block.as_ref());
        Ok(())
    }
}

impl fmt::Debug for CipherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherState")
            .field("has_key", &self.key.is_some())
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

/// AESGCM nonce (§12.4): 32 zero bits followed by the 64-bit big-endian counter.
fn nonce_bytes(n: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    nonce
}

fn nonce(n: u64) -> Nonce {
    Nonce::assume_unique_for_key(nonce_bytes(n))
}

/// The AES-256-GCM key, through ring: its AES-NI/VAES and carry-less-multiply code seals several times faster
/// than the portable crates, and the end-to-end channel is on every byte's path. The key schedule is per call,
/// so no expanded key outlives the zeroized raw key.
fn aead_key(key: &[u8; 32]) -> Result<LessSafeKey, ChannelError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| ChannelError::Closed)
}

/// A Noise `SymmetricState` (§5.2): chaining key, handshake hash and the handshake `CipherState`.
struct SymmetricState {
    ck: Zeroizing<[u8; 32]>,
    h: [u8; 32],
    cipher: CipherState,
}

impl SymmetricState {
    fn initialize(prologue: &[u8]) -> Self {
        // The protocol name is at most HASHLEN bytes, so it is zero-padded rather than hashed.
        let mut h = [0u8; 32];
        h[..PROTOCOL_NAME.len()].copy_from_slice(PROTOCOL_NAME);
        let mut state = Self {
            ck: Zeroizing::new(h),
            h,
            cipher: CipherState::empty(),
        };
        state.mix_hash(prologue);
        state
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = Sha256::new()
            .chain_update(self.h)
            .chain_update(data)
            .finalize()
            .into();
    }

    /// `MixKey`: `ck, temp_k = HKDF(ck, ikm, 2)`.
    fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = noise_hkdf(&self.ck, ikm);
        self.ck = ck;
        self.cipher = CipherState::with_key(*k);
    }

    fn encrypt_and_hash(
        &mut self,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ChannelError> {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let h = self.h;
        match self.cipher.encrypt_in_place(&h, &mut out[start..]) {
            Ok(Some(tag)) => out.extend_from_slice(&tag),
            Ok(None) => {}
            Err(error) => {
                out.truncate(start);
                return Err(error);
            }
        }
        self.mix_hash(&out[start..]);
        Ok(())
    }

    fn decrypt_and_hash(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let h = self.h;
        let plaintext = self.cipher.decrypt_with_ad(&h, ciphertext)?;
        self.mix_hash(ciphertext);
        Ok(plaintext)
    }

    /// `Split()`: the initiator's sending and the responder's sending `CipherState`, in that order.
    fn split(self) -> (CipherState, CipherState, [u8; 32]) {
        let (k1, k2) = noise_hkdf(&self.ck, &[]);
        (
            CipherState::with_key(*k1),
            CipherState::with_key(*k2),
            self.h,
        )
    }
}

/// The Noise `HKDF(chaining_key, input_key_material, 2)` (§4.3).
///
/// Noise defines it as `temp = HMAC(ck, ikm); out1 = HMAC(temp, 0x01); out2 = HMAC(temp, out1 ‖ 0x02)`, which
/// is exactly RFC 5869 extract (salt = ck) followed by expand with empty info for 64 bytes.
fn noise_hkdf(ck: &[u8; 32], ikm: &[u8]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let mut okm = Zeroizing::new([0u8; 64]);
    // 64 bytes is far below the 255 * HASHLEN limit, so expand cannot fail; map it anyway rather than panic.
    let _ = Hkdf::<Sha256>::new(Some(ck), ikm).expand(&[], okm.as_mut());
    let mut first = Zeroizing::new([0u8; 32]);
    let mut second = Zeroizing::new([0u8; 32]);
    first.copy_from_slice(&okm[..32]);
    second.copy_from_slice(&okm[32..]);
    (first, second)
}

/// The two transport `CipherState`s and the handshake hash after `Split()`.
#[derive(Debug)]
pub struct TransportState {
    /// Encrypts what this side sends.
    pub send: CipherState,
    /// Decrypts what this side receives.
    pub recv: CipherState,
    /// `GetHandshakeHash()`: unique to this session; the value both sides sign.
    pub handshake_hash: [u8; 32],
}

/// The NN initiator after writing `-> e`; waits for `<- e, ee`.
pub struct NnInitiator {
    state: SymmetricState,
    ephemeral: Ephemeral,
}

impl NnInitiator {
    /// Starts a handshake: appends message 1 (`e` ‖ payload) to `out`.
    pub fn start(
        prologue: &[u8],
        ephemeral: Ephemeral,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Self, ChannelError> {
        let mut state = SymmetricState::initialize(prologue);
        let e = ephemeral.public();
        if DH_LEN + payload.len() > MAX_MESSAGE_LEN {
            return Err(ChannelError::MessageTooLarge {
                len: DH_LEN + payload.len(),
            });
        }
        out.extend_from_slice(&e);
        state.mix_hash(&e);
        state.encrypt_and_hash(payload, out)?;
        Ok(Self { state, ephemeral })
    }

    /// Reads message 2 (`re`, `ee`, encrypted payload): returns the payload and the transport keys.
    ///
    /// Fails if the tag does not verify, which is what happens when the two sides used different prologues.
    pub fn finish(mut self, message: &[u8]) -> Result<(Vec<u8>, TransportState), ChannelError> {
        if message.len() < DH_LEN + TAG_LEN {
            return Err(ChannelError::HandshakeFailed);
        }
        let (re, rest) = message.split_at(DH_LEN);
        let mut peer = [0u8; 32];
        peer.copy_from_slice(re);
        self.state.mix_hash(&peer);
        let dh = self.ephemeral.diffie_hellman(peer)?;
        self.state.mix_key(dh.as_ref());
        let payload = self
            .state
            .decrypt_and_hash(rest)
            .map_err(|_| ChannelError::HandshakeFailed)?;
        let (initiator_send, responder_send, handshake_hash) = self.state.split();
        Ok((
            payload,
            TransportState {
                send: initiator_send,
                recv: responder_send,
                handshake_hash,
            },
        ))
    }
}

impl fmt::Debug for NnInitiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NnInitiator").finish_non_exhaustive()
    }
}

/// The NN responder after reading `-> e`; answers with `<- e, ee`.
pub struct NnResponder {
    state: SymmetricState,
    peer: [u8; 32],
}

impl NnResponder {
    /// Reads message 1: returns the responder and the initiator's (cleartext) payload.
    pub fn read(prologue: &[u8], message: &[u8]) -> Result<(Self, Vec<u8>), ChannelError> {
        if message.len() < DH_LEN {
            return Err(ChannelError::HandshakeFailed);
        }
        let mut state = SymmetricState::initialize(prologue);
        let (re, rest) = message.split_at(DH_LEN);
        let mut peer = [0u8; 32];
        peer.copy_from_slice(re);
        state.mix_hash(&peer);
        let payload = state.decrypt_and_hash(rest)?;
        Ok((Self { state, peer }, payload))
    }

    /// Appends message 2 (`e` ‖ encrypted payload) to `out` and returns the transport keys.
    ///
    /// A low-order initiator ephemeral is refused here, before anything is written.
    pub fn respond(
        mut self,
        ephemeral: Ephemeral,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<TransportState, ChannelError> {
        if DH_LEN + payload.len() + TAG_LEN > MAX_MESSAGE_LEN {
            return Err(ChannelError::MessageTooLarge {
                len: DH_LEN + payload.len() + TAG_LEN,
            });
        }
        let dh = ephemeral.diffie_hellman(self.peer)?;
        let start = out.len();
        let e = ephemeral.public();
        out.extend_from_slice(&e);
        self.state.mix_hash(&e);
        self.state.mix_key(dh.as_ref());
        if let Err(error) = self.state.encrypt_and_hash(payload, out) {
            out.truncate(start);
            return Err(error);
        }
        let (initiator_send, responder_send, handshake_hash) = self.state.split();
        Ok(TransportState {
            send: responder_send,
            recv: initiator_send,
            handshake_hash,
        })
    }
}

impl fmt::Debug for NnResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NnResponder").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(byte: u8) -> CipherState {
        CipherState::with_key([byte; 32])
    }

    #[test]
    fn noise_hkdf_matches_the_hmac_definition() {
        use hmac_by_hand::hmac;
        let ck = [7u8; 32];
        let ikm = b"input key material";
        let temp = hmac(&ck, ikm);
        let out1 = hmac(&temp, &[1]);
        let mut second_input = out1.to_vec();
        second_input.push(2);
        let out2 = hmac(&temp, &second_input);
        let (a, b) = noise_hkdf(&ck, ikm);
        assert_eq!(*a, out1);
        assert_eq!(*b, out2);
    }

    /// HMAC-SHA256 written out from RFC 2104, so the HKDF check does not trust the hkdf crate.
    mod hmac_by_hand {
        use sha2::{Digest, Sha256};

        pub(super) fn hmac(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
            let mut ipad = [0x36u8; 64];
            let mut opad = [0x5cu8; 64];
            for (i, k) in key.iter().enumerate() {
                ipad[i] ^= k;
                opad[i] ^= k;
            }
            let inner: [u8; 32] = Sha256::new()
                .chain_update(ipad)
                .chain_update(data)
                .finalize()
                .into();
            Sha256::new()
                .chain_update(opad)
                .chain_update(inner)
                .finalize()
                .into()
        }
    }

    #[test]
    fn nonce_is_four_zero_bytes_then_big_endian_counter() {
        let nonce = nonce_bytes(0x0102_0304_0506_0708);
        assert_eq!(nonce.as_slice(), &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn rekey_matches_the_specification_and_old_key_stops_working() {
        let mut sender = keyed(9);
        let mut receiver = keyed(9);
        let mut stale = keyed(9);

        // REKEY(k) computed independently from its definition.
        // An independent AES-GCM implementation (RustCrypto's) as the reference for ring's.
        use aes_gcm::aead::AeadInPlace as _;
        use aes_gcm::{Aes256Gcm, KeyInit as _};
        let cipher = Aes256Gcm::new(&[9u8; 32].into());
        let mut block = [0u8; 32];
        let _tag = cipher
            .encrypt_in_place_detached(&nonce_bytes(u64::MAX).into(), &[], &mut block)
            .unwrap();

        sender.rekey().unwrap();
        receiver.rekey().unwrap();
        assert_eq!(sender.key.as_deref(), Some(&block));
        assert_eq!(sender.nonce(), 0, "rekey must not reset the nonce");

        let ciphertext = sender.encrypt_with_ad(b"", b"after rekey").unwrap();
        assert!(stale.decrypt_with_ad(b"", &ciphertext).is_err());
        assert_eq!(
            receiver.decrypt_with_ad(b"", &ciphertext).unwrap(),
            b"after rekey"
        );

        // And the other way: what the old key encrypts at the same nonce is refused by the new one.
        let mut old = keyed(9);
        let _ = old.encrypt_with_ad(b"", b"x").unwrap();
        let old_ciphertext = old.encrypt_with_ad(b"", b"before").unwrap();
        let mut fresh = keyed(9);
        let _ = fresh.encrypt_with_ad(b"", b"x").unwrap();
        fresh.rekey().unwrap();
        assert!(fresh.decrypt_with_ad(b"", &old_ciphertext).is_err());
    }

    #[test]
    fn reserved_nonce_is_an_error_not_a_wrap() {
        let mut cipher = keyed(1);
        cipher.nonce = u64::MAX - 1;
        assert!(cipher.encrypt_with_ad(b"", b"last").is_ok());
        assert!(matches!(
            cipher.encrypt_with_ad(b"", b"one too many"),
            Err(ChannelError::NonceExhausted)
        ));
        let mut receiver = keyed(1);
        receiver.nonce = u64::MAX;
        assert!(matches!(
            receiver.decrypt_with_ad(b"", &[0u8; 20]),
            Err(ChannelError::NonceExhausted)
        ));
    }

    #[test]
    fn failed_decrypt_does_not_advance_the_nonce_and_short_input_is_refused() {
        let mut cipher = keyed(3);
        assert!(matches!(
            cipher.decrypt_with_ad(b"", &[0u8; 15]),
            Err(ChannelError::Decrypt)
        ));
        assert!(matches!(
            cipher.decrypt_with_ad(b"", &[0u8; 40]),
            Err(ChannelError::Decrypt)
        ));
        assert_eq!(cipher.nonce(), 0);
    }

    #[test]
    fn cleared_state_fails_closed() {
        let mut cipher = keyed(3);
        cipher.clear();
        assert!(cipher.rekey().is_err());
        assert!(matches!(
            cipher.encrypt_with_ad(b"", b"x"),
            Err(ChannelError::Closed)
        ));
        assert!(matches!(
            cipher.decrypt_with_ad(b"", &[0u8; 20]),
            Err(ChannelError::Closed)
        ));
    }

    #[test]
    fn debug_output_redacts_keys() {
        let text = format!(
            "{:?} {:?}",
            keyed(0xAB),
            Ephemeral::danger_from_bytes([0xAB; 32])
        );
        assert!(!text.contains("171"), "{text}");
        assert!(!text.to_lowercase().contains("ab, "), "{text}");
    }
}
