//! Everything AMQP: connecting with backoff, confirmed publishing, the
//! consume loops that run a stage, message encoding and dead-lettering.
//! Stage logic never sees any of it.

pub mod batch_runner;
pub mod connect;
pub mod dead_letters;
pub mod message;
pub mod publisher;
pub mod runner;

pub use connect::connect;
pub use message::Outgoing;
pub use publisher::Publisher;
