//! orderflow's model and runtime: the workflow element and its audit events,
//! changes and calls, routing, settings, stores, telemetry. What carries
//! them over RabbitMQ (publishing, consuming, settling, the runners) is the
//! `transport` crate, built on this one.

pub mod answer;
pub mod audit;
pub mod backorder;
pub mod batcher;
pub mod call_book;
pub mod change;
pub mod change_book;
pub mod domain_edits;
pub mod domains;
pub mod events;
pub mod generate;
pub mod group_commit;
pub mod headers;
pub mod help;
pub mod incident;
pub mod metrics;
pub mod order;
pub mod order_search;
pub mod otlp;
pub mod poll;
pub mod report;
pub mod routing;
pub mod service;
pub mod settings;
pub mod settlement;
pub mod shutdown;
pub mod stage;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod trace;
pub mod tracker_api;
pub mod trust;

pub use audit::AuditEvent;
pub use order::{Order, OrderElement, OrderState};
pub use settings::Settings;
pub use stage::{BatchStage, Outcome, Stage, StageError};
pub use topology::Node;
