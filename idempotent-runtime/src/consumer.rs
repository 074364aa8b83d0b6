//! Settling a broker message after its `#[idempotent]` handler returned: which errors are
//! acked, retried (negatively acknowledged and redelivered later) or dead-lettered.
//!
//! A message consumer (RabbitMQ, NATS JetStream, Kafka, SQS, …) calls an idempotent handler
//! keyed by the message id or a business key in the message, then tells the broker what
//! became of the delivery. [`Settle`] names the three answers without depending on any
//! broker crate; the consumer maps them onto its broker's own calls:
//!
//! | [`Settle`] | AMQP 0-9-1 (RabbitMQ) | NATS JetStream |
//! |---|---|---|
//! | [`Settle::Ack`] | `basic.ack` | `+ACK` |
//! | [`Settle::Retry`] | `basic.nack` with `requeue = true`, after `after` (or a delay queue) | `-NAK` with delay `after` |
//! | [`Settle::DeadLetter`] | `basic.reject` with `requeue = false` (the queue's `x-dead-letter-exchange` takes it) | publish to a dead-letter subject, then `+TERM` |
//!
//! The rules ([`Settle::for_error`] holds them for this crate's [`Error`]):
//! - Ack only after the handler returned `Ok` — a fresh execution or a replay, both mean the
//!   effect is recorded — or [`Error::Duplicate`] (a strategy that stores no response saw the
//!   effect already applied). Never ack before the call: a crash between the ack and the
//!   effect loses the message.
//! - [`Error::InProgress`]: another delivery of the same key is running (the broker
//!   redelivered while the first handler still runs, or two consumers got duplicates). Retry
//!   after a delay; the redelivery then gets the stored response replayed.
//! - [`Error::FingerprintMismatch`]: the key was used before with a different payload. No
//!   retry will ever succeed: dead-letter it for a person to look at.
//! - Backend failures, lost claims, contention: retry.
//!
//! A retried message comes back for as long as the broker keeps it; the idempotency record
//! must outlive that, so `ttl` must be longer than the broker's redelivery window (see the
//! README's "Consumers" section).

use std::time::Duration;

use crate::Error;

/// What a consumer tells its broker about one delivery after calling its handler.
///
/// Build it with [`Settle::for_error`] for this crate's errors, [`Settle::Ack`] for `Ok`,
/// and your own choice for your handler's other errors (a database error is usually
/// [`Settle::Retry`], an undecodable message [`Settle::DeadLetter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The message is handled: acknowledge it (AMQP `basic.ack`, JetStream `+ACK`). The
    /// effect is recorded, so a redelivery of it — the ack lost, the consumer killed after the
    /// call and before the ack — is replayed, not run again, for the record's `ttl`.
    Ack,
    /// Not handled now, may succeed later: have the broker deliver it again after `after`
    /// (AMQP `basic.nack` with `requeue = true` once `after` has passed, or a delay queue;
    /// JetStream `-NAK` with `{"delay": after}`).
    Retry {
        /// How long to wait before the message is delivered again.
        after: Duration,
    },
    /// Can never succeed: move it aside for inspection (AMQP `basic.reject` with
    /// `requeue = false` into the queue's dead-letter exchange; JetStream: publish it to a
    /// dead-letter subject, then `+TERM`).
    DeadLetter,
}

impl Settle {
    /// How to settle a delivery whose handler returned `e`; `retry_after` is the delay of a
    /// [`Settle::Retry`].
    ///
    /// - [`Settle::Ack`]: [`Error::Duplicate`] (the effect was already applied; strategies
    ///   that store no response answer a redelivery this way).
    /// - [`Settle::Retry`]: [`Error::InProgress`] (another delivery of the key is running; the
    ///   retry gets its response replayed), [`Error::WaitTimeout`], [`Error::LockLost`],
    ///   [`Error::LeaseShorterThanAcquisition`], [`Error::Contention`],
    ///   [`Error::NotReplicated`], [`Error::Backend`], [`Error::EvictionPolicy`], and
    ///   [`Error::Unrecorded`] (the effect happened but its record did not: the key stays in
    ///   progress until its lease ends, so a retry within the lease gets `InProgress`, and one
    ///   after it may run the body again — see that variant).
    /// - [`Settle::DeadLetter`]: [`Error::FingerprintMismatch`] (same key, different payload),
    ///   [`Error::Conflict`], [`Error::NotFound`], [`Error::InvalidKey`],
    ///   [`Error::TokenInvalid`], [`Error::Serialization`] and the configuration errors
    ///   ([`Error::InvalidOption`], [`Error::Unsupported`],
    ///   [`Error::OperationNameCollision`]): retrying the same message cannot change them.
    pub fn for_error(e: &Error, retry_after: Duration) -> Settle {
        let retry = Settle::Retry { after: retry_after };
        match e {
            Error::Duplicate => Settle::Ack,
            Error::InProgress
            | Error::WaitTimeout(_)
            | Error::LockLost
            | Error::LeaseShorterThanAcquisition { .. }
            | Error::Contention { .. }
            | Error::NotReplicated { .. }
            | Error::Backend(_)
            | Error::EvictionPolicy { .. }
            | Error::Unrecorded { .. } => retry,
            Error::FingerprintMismatch
            | Error::Conflict(_)
            | Error::NotFound(_)
            | Error::InvalidKey(_)
            | Error::TokenInvalid
            | Error::Serialization(_)
            | Error::InvalidOption { .. }
            | Error::Unsupported(_)
            | Error::OperationNameCollision { .. } => Settle::DeadLetter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_documented_settlement() {
        let d = Duration::from_millis(250);
        let retry = Settle::Retry { after: d };
        let ack = [Error::Duplicate];
        let retried = [
            Error::InProgress,
            Error::WaitTimeout(d),
            Error::LockLost,
            Error::LeaseShorterThanAcquisition { lease: d, took: d },
            Error::Contention {
                attempts: 3,
                last: "deadlock".into(),
            },
            Error::NotReplicated {
                acknowledged: 0,
                required: 1,
                timeout: d,
            },
            Error::backend(std::io::Error::other("down")),
            Error::Unrecorded {
                retried_for: d,
                last: Box::new(Error::backend(std::io::Error::other("down"))),
            },
        ];
        let dead = [
            Error::FingerprintMismatch,
            Error::Conflict("PENDING".into()),
            Error::NotFound("order".into()),
            Error::InvalidKey("empty".into()),
            Error::TokenInvalid,
            Error::Serialization("bad".into()),
            Error::Unsupported("constraint".into()),
        ];
        for e in &ack {
            assert_eq!(Settle::for_error(e, d), Settle::Ack, "{e:?}");
        }
        for e in &retried {
            assert_eq!(Settle::for_error(e, d), retry, "{e:?}");
        }
        for e in &dead {
            assert_eq!(Settle::for_error(e, d), Settle::DeadLetter, "{e:?}");
        }
    }
}
