//! Who may act: the keys of `gateway.api_keys`, checked on a request's `Authorization` header,
//! as `Bearer <key>` or as HTTP Basic with the key for password (what Schema Registry clients
//! send, e.g. confluent-kafka's `basic.auth.user.info = "quark:<key>"`).
//!
//! Keys are compared as SHA-256 digests in constant time (subtle), against every known key:
//! how long a refusal takes tells nothing of how much of a guess was right, of how long a key
//! is, or of which key matched.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

/// Why a request may not act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It carried no key.
    Missing,
    /// It carried a key that is not one of ours.
    Invalid,
}

impl Refusal {
    /// What to tell the caller: how to present a key, or that the one given is wrong.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "this needs an API key: Authorization: Bearer <key>",
            Refusal::Invalid => "invalid API key",
        }
    }
}

impl ApiKeys {
    pub fn new<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> ApiKeys {
        let digests = keys.into_iter().map(|k| digest(k.as_ref())).collect();
        ApiKeys { digests }
    }

    /// Whether `key` is one of ours.
    pub fn admits(&self, key: &str) -> bool {
        let presented = digest(key);
        let found = self.digests.iter().fold(Choice::from(0), |found, known| {
            found | known.ct_eq(&presented)
        });
        found.into()
    }

    /// Whether the request with `headers` may act.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let header = headers.get(AUTHORIZATION).ok_or(Refusal::Missing)?;
        match key_in(header) {
            Some(key) if self.admits(&key) => Ok(()),
            _ => Err(Refusal::Invalid),
        }
    }
}

impl std::fmt::Debug for ApiKeys {
    // Never the digests: a debug print is how keys reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The key in an `Authorization` header: a bearer token, or a Basic password.
fn key_in(header: &HeaderValue) -> Option<String> {
    let value = header.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (_user, password) = decoded.split_once(':')?;
    Some(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    #[test]
    fn bearer_and_basic_keys_are_admitted_and_others_refused() {
        let keys = ApiKeys::new(["alpha-key", "beta-key"]);
        assert_eq!(keys.check(&headers("Bearer alpha-key")), Ok(()));
        assert_eq!(keys.check(&headers("Bearer beta-key")), Ok(()));
        let basic = format!("Basic {}", STANDARD.encode("quark:beta-key"));
        assert_eq!(keys.check(&headers(&basic)), Ok(()));
        for wrong in [
            "Bearer alpha-ke",
            "Bearer alpha-key2",
            "Bearer ",
            "alpha-key",
            "Basic not base64!",
            &format!("Basic {}", STANDARD.encode("alpha-key")),
            &format!("Basic {}", STANDARD.encode("alpha-key:quark")),
        ] {
            assert_eq!(
                keys.check(&headers(wrong)),
                Err(Refusal::Invalid),
                "{wrong}"
            );
        }
        assert_eq!(keys.check(&HeaderMap::new()), Err(Refusal::Missing));
    }

    #[test]
    fn no_keys_admit_nobody_and_debug_shows_none() {
        let none = ApiKeys::new(Vec::<String>::new());
        assert!(!none.admits(""));
        assert!(!none.admits("anything"));
        let keys = ApiKeys::new(["secret-key"]);
        assert_eq!(format!("{keys:?}"), "ApiKeys(1 keys)");
    }
}
