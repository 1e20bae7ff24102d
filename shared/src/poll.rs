//! Polled results bound to their caller. A caller that leaves its result to
//! be kept by the tracker (a `poll` call) makes up a secret of its own, the
//! **poll token**, and sends with the call only its SHA-256, the **poll key**
//! (header `x-orderflow-poll-key`, 64 hex digits). The service copies the key
//! onto the result; the tracker keeps the result under (caller, request id,
//! key) and shows it on `GET /calls/{request_id}` only to a request bearing
//! the token (`Authorization: Bearer <token>`). The token never crosses the
//! broker: the service, and whoever reads its queue, see only its hash, and
//! a result with no key is not kept (nobody could read it).

use sha2::{Digest, Sha256};

/// Header on a poll call (copied onto its result): the SHA-256, in hex, of
/// the caller's poll token.
pub const POLL_KEY_HEADER: &str = "x-orderflow-poll-key";

/// A poll token's length: 16 to 200 visible ASCII characters.
pub const TOKEN_LEN: std::ops::RangeInclusive<usize> = 16..=200;

/// A new poll token: 32 random bytes, in hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

/// The poll key of `token`: its SHA-256, in lowercase hex.
pub fn key_of(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// A poll key as a call carries it: 64 hex digits (returned in lowercase).
pub fn check_key(key: &str) -> Result<String, String> {
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(key.to_ascii_lowercase());
    }
    Err(format!("{POLL_KEY_HEADER} must be the SHA-256 of the caller's poll token, 64 hex digits"))
}

/// A poll token as `GET /calls/{id}` takes it: 16 to 200 visible ASCII characters.
pub fn check_token(token: &str) -> Result<(), String> {
    if TOKEN_LEN.contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    Err(format!("a poll token is {} to {} visible ASCII characters", TOKEN_LEN.start(), TOKEN_LEN.end()))
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|token| !token.is_empty())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_tokens_sha256_and_reveals_nothing_of_it() {
        // SHA-256 of "abc", the standard test vector.
        assert_eq!(key_of("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let token = new_token();
        assert_eq!(token.len(), 64);
        assert!(check_token(&token).is_ok());
        assert_ne!(new_token(), token, "a new token each time");
        let key = key_of(&token);
        assert_eq!(check_key(&key), Ok(key.clone()));
        assert!(!key.contains(&token));
    }

    #[test]
    fn keys_and_tokens_are_checked() {
        let upper = key_of("some token of mine").to_ascii_uppercase();
        assert_eq!(check_key(&upper), Ok(upper.to_ascii_lowercase()));
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"a".repeat(65)] {
            assert!(check_key(bad).unwrap_err().contains(POLL_KEY_HEADER), "{bad}");
        }
        assert!(check_token("short").is_err());
        assert!(check_token("sixteen chars ok").is_err(), "no spaces");
        assert!(check_token("sixteen-chars-ok").is_ok());
        assert!(check_token(&"x".repeat(201)).is_err());
        assert!(check_token("token\nwith-a-newline").is_err());
    }

    #[test]
    fn the_bearer_token_is_read_from_the_authorization_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer   abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
