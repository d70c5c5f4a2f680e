//! Token strings: `th_<id>_<secret>`, where the id (16 hex digits) names
//! the token in lists and the audit log and the secret is 256 random bits
//! (base64url). Only the SHA-256 of the secret is stored; a presented
//! token is checked by comparing hashes in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2_digest::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

const PREFIX: &str = "th_";

/// A token's parts, as presented.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Presented<'a> {
    pub(crate) id: &'a str,
    pub(crate) secret: &'a str,
}

/// A newly made token: its id, the whole string (shown once) and the hash
/// to store.
pub(crate) struct Minted {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) secret_hash: [u8; 32],
}

/// Makes a token from the operating system's random source.
pub(crate) fn mint() -> Result<Minted, getrandom::Error> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let secret_hash = hash(&secret);
    Ok(Minted { token: format!("{PREFIX}{id}_{secret}"), id, secret_hash })
}

/// Splits a token into id and secret; `None` when it is not one.
pub(crate) fn parse(token: &str) -> Option<Presented<'_>> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let id_ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && !secret.is_empty()).then_some(Presented { id, secret })
}

/// SHA-256 of a secret.
pub(crate) fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` hashes to `stored`, compared in constant time.
pub(crate) fn matches(secret: &str, stored: &[u8; 32]) -> bool {
    hash(secret).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_parses_back_and_matches_only_its_hash() {
        let minted = mint().unwrap();
        let presented = parse(&minted.token).unwrap();
        assert_eq!(presented.id, minted.id);
        assert!(matches(presented.secret, &minted.secret_hash));
        let other = mint().unwrap();
        assert_ne!(other.token, minted.token);
        assert!(!matches(presented.secret, &other.secret_hash));
        // 256 bits of secret, base64url: 43 characters.
        assert_eq!(presented.secret.len(), 43);
    }

    #[test]
    fn strings_that_are_not_tokens_do_not_parse() {
        for text in ["", "th_", "th_abc_def", "xx_0123456789abcdef_s", "th_0123456789abcdeg_s", "th_0123456789abcdef_"]
        {
            assert_eq!(parse(text), None, "{text}");
        }
        // The secret may itself hold `_` (base64url).
        assert_eq!(parse("th_0123456789abcdef_a_b"), Some(Presented { id: "0123456789abcdef", secret: "a_b" }));
    }
}
