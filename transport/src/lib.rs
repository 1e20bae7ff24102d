//! Everything AMQP: connecting with backoff, confirmed publishing, message
//! encoding and dead-lettering, and the runners that put a stage on the
//! broker. Each runner is built from the same pieces: the session (connect,
//! supervise, shut down), the broker-free step (element in, messages and
//! settle decision out), settling a delivery, and the change consumer.
//! Stage logic never sees any of it.

pub mod arrival;
pub mod audit_batch;
pub mod batch_runner;
pub mod change_consumer;
pub mod connect;
pub mod context;
pub mod dead_letters;
pub mod domain;
pub mod domain_client;
pub mod message;
pub mod publish_error;
pub mod publisher;
pub mod runner;
pub mod service;
pub mod session;
pub mod settle;
pub mod step;

pub use connect::connect;
pub use context::NodeContext;
pub use message::Outgoing;
pub use publisher::Publisher;
