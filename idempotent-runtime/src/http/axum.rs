//! axum helpers for handlers that call `#[idempotent]` functions themselves: the
//! [`IdempotencyKey`] extractor, and `IntoResponse` for [`Error`] and [`Problem`].

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use super::{DEFAULT_MAX_KEY_LEN, KeyError, Problem, idempotency_key};
use crate::Error;

/// The request's idempotency key: the content of its `Idempotency-Key` header, an RFC 8941
/// sf-string of 1 to [`DEFAULT_MAX_KEY_LEN`] characters (the draft, §2.1).
///
/// As an extractor it rejects a request without the header, or with an unusable one, with
/// `400` problem+json ([`KeyError`]); `Option<IdempotencyKey>` is `None` without the header and
/// still rejects an unusable one.
///
/// ```ignore
/// async fn refund(State(app): State<App>, IdempotencyKey(key): IdempotencyKey, Json(req): Json<Refund>)
///     -> Result<Json<Receipt>, idempotent_runtime::Error> { todo!() }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub String);

fn read(parts: &Parts) -> Result<Option<IdempotencyKey>, Problem> {
    idempotency_key(&parts.headers, DEFAULT_MAX_KEY_LEN)
        .map(|key| key.map(IdempotencyKey))
        .map_err(|e| Problem::from_key_error(&e))
}

/// Rejects with the `400` [`Problem`] of the [`KeyError`].
impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        read(parts)?.ok_or_else(|| Problem::from_key_error(&KeyError::Missing))
    }
}

/// `None` without the header; rejects an unusable one with the `400` [`Problem`].
impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        read(parts)
    }
}

/// An RFC 9457 problem+json response ([`Problem::to_response`]).
impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        self.to_response().map(axum_core::body::Body::from)
    }
}

/// The error as a problem+json response with the status of [`status_of`](super::status_of):
/// `409` (in progress, with `Retry-After`), `422` (fingerprint mismatch), `400`, `404`, `503`,
/// `500` ([`Problem::from_error`]).
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        Problem::from_error(&self).into_response()
    }
}
