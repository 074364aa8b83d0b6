//! The RabbitMQ (AMQP 0-9-1) side of the payment consumer, on `lapin`'s own API: declaring the
//! queue with its dead-letter queue, and settling a delivery as [`Settle`] says.
//!
//! A consumer loop (the test worker `examples/src/bin/consumer_worker.rs` is one):
//!
//! ```ignore
//! channel.basic_qos(1, BasicQosOptions::default()).await?;
//! let mut deliveries = channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
//! while let Some(delivery) = deliveries.next().await {
//!     let delivery = delivery?;
//!     let handled = process(&delivery.data, async |p| svc.apply(p).await, RETRY_AFTER).await;
//!     amqp::settle(&delivery, handled.settle).await?;   // after the call, never before
//! }
//! ```
//!
//! RabbitMQ redelivers an unacked message when the consumer's channel or connection closes (a
//! crash, a `kill -9`, a network partition noticed by heartbeats) and, from 3.8 on, when a
//! quorum queue's consumer exceeds `consumer_timeout` (30 min by default).

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, message::Delivery};

use idempotent_runtime::consumer::Settle;

/// The name of `queue`'s dead-letter queue: `{queue}.dead`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Declares `queue` and its dead-letter queue ([`dead_letter_queue`]), both durable: `queue`
/// has `x-dead-letter-exchange = ""` (the default exchange) and `x-dead-letter-routing-key =`
/// the dead-letter queue, so a delivery rejected without requeue ([`Settle::DeadLetter`]) is
/// moved there by the broker. Idempotent (a second declaration with the same arguments is a
/// no-op); lapin's error when the queue exists with other arguments.
pub async fn declare(channel: &Channel, queue: &str) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let dead = dead_letter_queue(queue);
    channel
        .queue_declare(dead.as_str().into(), durable, FieldTable::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    channel.queue_declare(queue.into(), durable, args).await?;
    Ok(())
}

/// Settles `delivery` on its channel: [`Settle::Ack`] → `basic.ack`; [`Settle::Retry`] →
/// waits `after`, then `basic.nack` with `requeue = true` (the broker delivers it again, to
/// this consumer or another; the wait holds one of this consumer's prefetch slots — a delay
/// queue with a per-message TTL dead-lettering back is the alternative that does not);
/// [`Settle::DeadLetter`] → `basic.reject` with `requeue = false`, which the queue's
/// dead-letter exchange routes to the dead-letter queue ([`declare`]). lapin's error when the
/// channel is closed (the broker then redelivers the message anyway).
pub async fn settle(delivery: &Delivery, settle: Settle) -> lapin::Result<()> {
    match settle {
        Settle::Ack => {
            delivery.ack(BasicAckOptions::default()).await?;
        }
        Settle::Retry { after } => {
            tokio::time::sleep(after).await;
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
        }
        Settle::DeadLetter => {
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await?;
        }
    }
    Ok(())
}
