//! The orders demo service: order placement and payment-message consumption made idempotent
//! with `#[idempotent]`, plus the storm driver that hammers them with duplicates and the report
//! it prints. The binary is `src/bin/orders.rs`;
//! [`http`] is the HTTP orders API of `src/bin/http.rs`. [`consumers`] holds the RabbitMQ and
//! NATS JetStream payment consumers whose handler is an idempotent service function.

pub mod connect;
pub mod consumers;
pub mod http;
pub mod report;
pub mod service;
pub mod signal;
pub mod storm;
