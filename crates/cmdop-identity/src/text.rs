//! The shared parsing of prefixed text forms (`ed25519:…` public keys, `SHA256:…` fingerprints), with error
//! messages that say what is wrong with a pasted value.

use crate::error::IdentityError;

/// Strips `tag` from `text`, or says what was found instead.
pub(crate) fn strip_tag<'a>(
    text: &'a str,
    what: &'static str,
    tag: &'static str,
) -> Result<&'a str, IdentityError> {
    text.strip_prefix(tag)
        .ok_or_else(|| IdentityError::WrongPrefix {
            what,
            expected: tag,
            found: text.chars().take(tag.len() + 4).collect(),
        })
}

/// Decodes exactly `N` bytes from `body`, mapping the encoder's complaints to our error messages.
pub(crate) fn decode_fixed<const N: usize>(
    body: &str,
    what: &'static str,
    text_len: usize,
    encoding: &data_encoding::Encoding,
    alphabet: &'static str,
) -> Result<[u8; N], IdentityError> {
    if body.len() != text_len {
        return Err(IdentityError::BadLength {
            what,
            expected: text_len,
            found: body.chars().count(),
        });
    }
    let decoded = encoding.decode(body.as_bytes()).map_err(|e| match e.kind {
        data_encoding::DecodeKind::Trailing => IdentityError::NonCanonicalText { what },
        _ => IdentityError::BadCharacter {
            what,
            position: e.position,
            alphabet,
        },
    })?;
    decoded.try_into().map_err(|_| IdentityError::BadLength {
        what,
        expected: text_len,
        found: body.len(),
    })
}
