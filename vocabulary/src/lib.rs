//! orderflow's vocabulary, as data and below everything else: the workflow
//! definition ([`WORKFLOW`]: nodes, states, routes, cut-offs), the data
//! domains and their copies ([`domains::DOMAINS`]), and every process of a
//! stack ([`processes`]). It knows nothing of RabbitMQ: `topology` turns
//! these words into exchanges, queues and users, the workers into processes.

pub mod domains;
pub mod processes;
pub mod reads;
pub mod workflow;

pub use domains::{DomainCopy, DISTRIBUTOR_SIM};
pub use processes::{Process, ServiceKind};
pub use reads::Reads;
pub use workflow::{Node, OrderState, WORKFLOW};
