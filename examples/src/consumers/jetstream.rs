//! The NATS JetStream side of the payment consumer, on `async-nats`' own API: settling a
//! delivery of a pull consumer (explicit acks) as [`Settle`] says.
//!
//! A consumer loop (the JetStream test in `examples/tests/consumers.rs` runs two):
//!
//! ```ignore
//! let mut messages = consumer.messages().await?;
//! while let Some(msg) = messages.next().await {
//!     let msg = msg?;
//!     let handled = process(&msg.payload, async |p| svc.apply(p).await, RETRY_AFTER).await;
//!     jetstream::settle(&msg, handled.settle, "payments.dead").await?;   // after the call
//! }
//! ```
//!
//! JetStream redelivers a message not acked within the consumer's `ack_wait` (30 s by
//! default), also while the first handler still runs, up to `max_deliver` times (unlimited by
//! default), and as soon as asked by a `-NAK`.

use async_nats::jetstream::{AckKind, Message};

use idempotent_runtime::consumer::Settle;

/// Settles `msg`: [`Settle::Ack`] → `+ACK`; [`Settle::Retry`] → `-NAK` with `{"delay": after}`
/// (the server redelivers it after `after`, to any consumer instance); [`Settle::DeadLetter`] →
/// publishes the payload to `dead_letter_subject` (which a stream of its own should capture),
/// waits for JetStream's publish acknowledgement, then `+TERM` (no more redeliveries). JetStream
/// has no dead-letter queue of its own; `+TERM` alone would only raise the
/// `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED` advisory.
///
/// Errors: async-nats' publish or ack error (an unsettled message is redelivered after
/// `ack_wait`).
pub async fn settle(
    msg: &Message,
    settle: Settle,
    dead_letter_subject: &str,
) -> Result<(), async_nats::Error> {
    match settle {
        Settle::Ack => msg.ack().await?,
        Settle::Retry { after } => msg.ack_with(AckKind::Nak(Some(after))).await?,
        Settle::DeadLetter => {
            msg.context
                .publish(dead_letter_subject.to_owned(), msg.payload.clone())
                .await?
                .await?;
            msg.ack_with(AckKind::Term).await?;
        }
    }
    Ok(())
}
