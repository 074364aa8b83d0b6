//! RFC 9457 problem details (`application/problem+json`) for the answers the layer and the
//! axum helpers give, and the status code of each [`Error`].

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::KeyError;
use crate::Error;

/// The draft's text, revision 07, whose section anchors the problem `type`s point at.
const DRAFT: &str =
    "https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-idempotency-key-header-07";

/// An RFC 9457 problem details object, sent as `application/problem+json`.
///
/// `type` is a link to the draft section the problem comes from (the draft, §2.7, asks for "a
/// link pointing to relevant documentation"), or `about:blank` for problems the draft does not
/// name; `title` is short and the same for every instance of a problem, `detail` says what this
/// request did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened to this request.
    pub detail: String,
    /// Sent as `Retry-After` (whole seconds, at least 1) when set; not part of the body.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl Problem {
    /// A problem with `status`, a type link to the draft's section `section` (`"2.7"`) or
    /// `about:blank` when `None`, and the given title and detail.
    pub fn new(
        status: StatusCode,
        section: Option<&str>,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            type_uri: match section {
                Some(s) => format!("{DRAFT}#section-{s}"),
                None => "about:blank".to_owned(),
            },
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Sets the `Retry-After` the response carries.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The problem for a [`KeyError`]: `400`, typed by the draft's §2.7 (missing) or §2.1
    /// (unusable key).
    pub fn from_key_error(e: &KeyError) -> Self {
        let (section, title) = match e {
            KeyError::Missing => ("2.7", "Idempotency-Key is missing"),
            _ => ("2.1", "Idempotency-Key is invalid"),
        };
        Problem::new(StatusCode::BAD_REQUEST, Some(section), title, e.to_string())
    }

    /// The problem for an [`Error`] of a strategy: its status is [`status_of`], its detail the
    /// error's text; `409`s and `503`s carry `Retry-After: 1`.
    pub fn from_error(e: &Error) -> Self {
        let status = status_of(e);
        let (section, title) = match e {
            Error::FingerprintMismatch => (Some("2.7"), "Idempotency-Key is already used"),
            Error::InProgress | Error::WaitTimeout(_) => (
                Some("2.7"),
                "A request is outstanding for this Idempotency-Key",
            ),
            Error::InvalidKey(_) => (Some("2.1"), "Idempotency-Key is invalid"),
            _ => (None, status.canonical_reason().unwrap_or("Error")),
        };
        let problem = Problem::new(status, section, title, e.to_string());
        if status == StatusCode::CONFLICT || status == StatusCode::SERVICE_UNAVAILABLE {
            problem.retry_after(Duration::from_secs(1))
        } else {
            problem
        }
    }

    /// The status code.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The response: the status, `Content-Type: application/problem+json`, `Retry-After` when
    /// set, and the JSON body.
    pub fn to_response(&self) -> Response<Bytes> {
        // A struct of strings and a number always serializes.
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut res = Response::new(Bytes::from(body));
        *res.status_mut() = self.status_code();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        res
    }
}

/// The HTTP status answering an [`Error`]:
///
/// - `409 Conflict`: [`Error::InProgress`], [`Error::WaitTimeout`] (the draft, §2.7),
///   [`Error::Duplicate`], [`Error::Conflict`];
/// - `422 Unprocessable Content`: [`Error::FingerprintMismatch`] (the draft, §2.7);
/// - `400 Bad Request`: [`Error::InvalidKey`] (the draft, §2.1), [`Error::TokenInvalid`];
/// - `404 Not Found`: [`Error::NotFound`];
/// - `503 Service Unavailable`: [`Error::Backend`], [`Error::Contention`],
///   [`Error::NotReplicated`] (nothing ran: retry later);
/// - `500 Internal Server Error`: everything else — among them [`Error::Unrecorded`] and
///   [`Error::LockLost`], where the operation may have run (the problem's detail says so).
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InProgress | Error::WaitTimeout(_) | Error::Duplicate | Error::Conflict(_) => {
            StatusCode::CONFLICT
        }
        Error::FingerprintMismatch => StatusCode::UNPROCESSABLE_ENTITY,
        Error::InvalidKey(_) | Error::TokenInvalid => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Backend(_) | Error::Contention { .. } | Error::NotReplicated { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::LockLost
        | Error::Unrecorded { .. }
        | Error::LeaseShorterThanAcquisition { .. }
        | Error::InvalidOption { .. }
        | Error::Unsupported(_)
        | Error::OperationNameCollision { .. }
        | Error::EvictionPolicy { .. }
        | Error::Serialization(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_the_draft_section_and_retry_after() {
        let p = Problem::from_error(&Error::InProgress);
        let res = p.to_response();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["status"], 409);
        assert_eq!(body["type"], format!("{DRAFT}#section-2.7"));
        let p = Problem::from_error(&Error::FingerprintMismatch);
        assert_eq!(p.status, 422);
        assert_eq!(p.retry_after, None);
        let p = Problem::from_key_error(&KeyError::Empty);
        assert_eq!(
            (p.status, p.type_uri.ends_with("#section-2.1")),
            (400, true)
        );
        assert_eq!(
            Problem::from_error(&Error::Serialization("x".into())).type_uri,
            "about:blank"
        );
    }
}
