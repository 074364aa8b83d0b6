//! The `Idempotency-Key` HTTP header (IETF draft
//! [draft-ietf-httpapi-idempotency-key-header](https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/),
//! cited as "the draft" below, section numbers of its revision 07) for any tower service over
//! `http` types: [`IdempotencyLayer`] (feature `tower`), and for axum handlers that call
//! `#[idempotent]` functions themselves the [`IdempotencyKey`] extractor and `IntoResponse`
//! for [`Error`](crate::Error) (feature `axum`).
//!
//! The layer is `dedup_table` claim mode ([`dedup_table::run`](crate::strategy::dedup_table::run))
//! with the request as the call: the same claim, lease, renewal, replay and fingerprint rules
//! as the attribute, on any [`ClaimStore`](crate::ClaimStore). What it answers, with the
//! draft's section for each:
//!
//! | answer | when | draft |
//! |---|---|---|
//! | the handler's response | first request with a key (stored: below 400 always, 4xx by default; not stored, the claim released: 5xx by default; see [`IdempotencyLayer::terminal`]) | §2.6 "First time request" |
//! | the stored response + `Idempotent-Replayed: true` | the same key and payload again, after the first completed | §2.6 "Retry" |
//! | `400` problem+json | key missing on a [`required`](IdempotencyLayer::required) route | §2.7 |
//! | `400` problem+json | key empty, longer than [`max_key_len`](IdempotencyLayer::max_key_len), not an sf-string, or sent twice | §2.1 |
//! | `409` problem+json + `Retry-After` | the same key while the first request is in progress | §2.6 "Concurrent Request", §2.7 |
//! | `422` problem+json | the same key with another payload (method, path, body, fingerprinted headers) | §2.2, §2.4, §2.7 |
//! | `413` problem+json | request body over [`max_request_bytes`](IdempotencyLayer::max_request_bytes) ([`LargeRequest::Reject`]) | — (RFC 9110 §15.5.14) |
//! | `500`/`503` problem+json | the store failed, or the call ran but could not be recorded ([`status_of`]) | §2.7 last paragraph ("other 4xx/5xx") |
//!
//! Problem bodies are RFC 9457 `application/problem+json` ([`Problem`]).

use http::{HeaderMap, HeaderName};

mod layer;
mod problem;

#[cfg(feature = "axum")]
mod axum;

#[cfg(feature = "axum")]
pub use self::axum::IdempotencyKey;
pub use layer::{Body, BoxError, IdempotencyLayer, IdempotencyService, LargeRequest};
pub use problem::{Problem, status_of};

/// The request header carrying the idempotency key (the draft, §2).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header set to `true` on a replayed response (as Stripe and most middleware
/// libraries do; the draft names none).
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The longest idempotency key accepted by default, in characters (Stripe's limit). An
/// sf-string is ASCII, so characters are bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 255;

/// Why a request's `Idempotency-Key` header cannot be used. Each is answered `400`
/// ([`Problem::from_key_error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No `Idempotency-Key` header on a route that requires one (the draft, §2.7).
    #[error("the Idempotency-Key header is missing; this operation requires one")]
    Missing,
    /// More than one `Idempotency-Key` header (the draft, §2.1: "Clients MUST NOT include more
    /// than one").
    #[error("the Idempotency-Key header was sent more than once")]
    Repeated,
    /// The key is the empty string `""`.
    #[error("the Idempotency-Key is empty")]
    Empty,
    /// The key is longer than the limit.
    #[error("the Idempotency-Key is {len} characters long; the limit is {max}")]
    TooLong {
        /// The key's length in characters (at least; a very long header is not parsed).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header's value is not a structured-field string (RFC 8941 §3.3.3, `sf-string`: a
    /// double-quoted string of printable ASCII, e.g. `"8e03978e-40d5-43e8-bc93-6894a57f9324"`).
    #[error(
        "the Idempotency-Key must be a structured-field string (RFC 8941 sf-string), e.g. \"8e03978e-40d5-43e8-bc93-6894a57f9324\" with the quotes: {0}"
    )]
    NotSfString(String),
}

/// Reads the idempotency key from `headers`: `Ok(None)` when there is no `Idempotency-Key`
/// header, `Ok(Some(key))` with the sf-string's content (quotes and escapes removed) when there
/// is one valid header, else the [`KeyError`]. Parameters after the string (`"k";a=1`) are
/// allowed by RFC 8941 and ignored. `max_len` bounds the key in characters.
pub fn idempotency_key(headers: &HeaderMap, max_len: usize) -> Result<Option<String>, KeyError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    let raw = value.as_bytes();
    // A string of `max_len` characters takes at most 2 * max_len + 2 bytes (escapes, quotes):
    // anything longer is refused without parsing it.
    let bound = max_len.saturating_mul(2).saturating_add(2);
    if raw.len() > bound {
        return Err(KeyError::TooLong {
            len: raw.len().saturating_sub(2) / 2,
            max: max_len,
        });
    }
    let item = sfv::Parser::new(raw)
        .parse_item::<sfv::Item>()
        .map_err(|e| KeyError::NotSfString(e.to_string()))?;
    let Some(key) = item.bare_item.as_string() else {
        return Err(KeyError::NotSfString(format!(
            "{:?} is another structured-field type",
            String::from_utf8_lossy(raw)
        )));
    };
    let key = key.as_str();
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > max_len {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: max_len,
        });
    }
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(raw: &[&str]) -> Result<Option<String>, KeyError> {
        let mut h = HeaderMap::new();
        for r in raw {
            h.append(IDEMPOTENCY_KEY, HeaderValue::from_str(r).unwrap());
        }
        idempotency_key(&h, 8)
    }

    #[test]
    fn keys_are_sf_strings() {
        assert_eq!(key(&[]), Ok(None));
        assert_eq!(key(&[r#""abc-1""#]), Ok(Some("abc-1".into())));
        assert_eq!(key(&[r#""a\"b""#]), Ok(Some("a\"b".into())));
        assert_eq!(key(&[r#""k";v=1"#]), Ok(Some("k".into())));
        assert_eq!(key(&[r#""12345678""#]), Ok(Some("12345678".into())));
        assert_eq!(key(&[r#""""#]), Err(KeyError::Empty));
        assert_eq!(
            key(&[r#""123456789""#]),
            Err(KeyError::TooLong { len: 9, max: 8 })
        );
        assert!(matches!(
            key(&[&format!("\"{}\"", "x".repeat(40))]),
            Err(KeyError::TooLong { max: 8, .. })
        ));
        assert!(matches!(key(&["abc"]), Err(KeyError::NotSfString(_))));
        assert!(matches!(key(&["12"]), Err(KeyError::NotSfString(_))));
        assert!(matches!(key(&[r#""ab"#]), Err(KeyError::NotSfString(_))));
        assert_eq!(key(&[r#""a""#, r#""b""#]), Err(KeyError::Repeated));
    }
}
