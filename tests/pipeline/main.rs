//! One integration-test binary for orderflow, against the real local broker
//! and real worker processes; each test has its own vhost and run directory.
//!
//! - `paths`: end to end, every path through the workflow and the audit trail.
//! - `picklist`: the aggregation queue's grouping, batch size and flush.
//! - `scaling`: competing consumers share a node's work.
//! - `poison`: undecodable messages are dead-lettered and the rest flows.
//! - `directed`: the coordinator drives orders through the services: the same ends as autonomous mode,
//!   changes decided before its next call, kill -9 of it and every service (issue 9).
//! - `dashboard`: the tracker's live dashboard in headless Chromium: counts move, the slowest node is
//!   marked, a search opens an order's timeline (issue 11).
//! - `domains`: the data domains (issue 10): customer replicas fed by the change stream, killed and
//!   caught up; the CLI with the seed files; pika at a replica; refused writes and forged changes.
//! - `domain_edits`: a customer's address edited while orders that copied it travel reaches them
//!   as the customer domain's change request, once, through a kill -9 of the primary (issue 28);
//!   forged copies, careless edits and a cancel from the domain's user are refused.
//! - `domain_reads`: the customer primary killed, orders by reference are read at its replicas
//!   (each names the copy); past the staleness bound they wait, then read at the primary (issue 28).
//! - `backorders`: short stock waits for the distributors (issue 10): a receipt releases exactly the
//!   orders it covers, oldest first; changes and cancels of waiting orders; the wait limit; SIGKILLs.
//! - `dlq`: replay on a snapshot without loops, listing loses nothing, discard, counts per reason.
//! - `retry`: transient failures retry, then dead-letter; `dlq replay` sends them back once.
//! - `faults`: SIGKILLed nodes, a stopped tracker, cut connections: nothing lost or doubled.
//! - `bad_input`: refused files, rejected orders, hostile text, audit garbage.
//! - `changes`: in-flight changes, cut-offs, cancels, sync mode.
//! - `cli`: the command line and the tracker's HTTP API (also its header-read timeout).
//! - `compose`: the docker-compose file: the compose-spec schema, its services, pinned images, one secret each.
//! - `bench_smoke`: the benchmark's smoke run finishes and prints every figure.
//! - `search`: finding orders by state, node, customer and age, a page at a time.
//! - `privilege`: per-node users with least privilege; strays are refused.
//! - `postgres`: the stores on PostgreSQL instead of SQLite.
//! - `postgres_races`: races between instances on one PostgreSQL database, forced at the store level.
//! - `postgres_scale`: two instances of every node and tracker, each its own run directory
//!   (as on hosts of their own), sharing one PostgreSQL database: paths, change storms, SIGKILLs.
//! - `insight`: the report (slowest node, stuck orders, incidents) and the warehouse move (issue 11).
//! - `metrics`: Prometheus metrics of every process, consistent with the tracker (issue 11).
//! - `outside`: plain orders from clients no one here wrote (pika, the management API), careless cards among them.
//! - `workflows`: each element carries its workflow's name and version from intake on; unknown names
//!   rejected, unknown versions (forged by a node's user) dead-lettered with the reason (issue 29).
//! - `outcomes`: each order's outcome to whoever placed it (direct reply-to or a callback key), once,
//!   in both modes through a kill -9 of payment; careless addresses refused; `publish --wait` (issue 29).
//! - `traces`: W3C traceparent on every hop, change and call; trace and order ids on log lines (issue 11).
//! - `trust`: forgeries by the stack's own users (issue 14) are refused; the orders go on.
//! - `token_trust`: a card token is shown to intake alone and pays only for its own customer (issue 30).
//! - `transport_faults`: refused publishes, retries out of the consumer (issue 15).
//! - `services`: every node is a service: sync, polled and callback calls, idempotent by request id,
//!   least privilege, bad requests, a pika caller (issue 9).
//! - `log_hygiene`: no log holds a token, email, address or card digits; an idle stack's logs stay small.
//! - `service_trust`: the service half's attacks (issue 30): forged answers to the coordinator, each
//!   role's grants as an attacker uses them.
//! - `result_trust`: polled results bound to their caller (issue 30): a token reads them, a card never.
//! - `audit_batches`: nodes batch their audit events; a batch is checked event by event (issue 12).
//! - `receipt_trust`: receipts bound to an existing supplier and an open purchase order, counted once per shipment (issue 30).
//! - `operations`: the scripts as a user runs them (issue 31): up.sh waits for every process and
//!   names one that cannot start, refuses taken ports, `down.sh --purge` removes a stack.
//! - `settlement`: authorize, capture in batches through the settlement aggregation queue, void on
//!   cancel; kill -9 of payment mid-batch; forged and careless captures (issue 27).
//! - `usage`: every binary's `--help` and `--version`, the CLI's argument checks, the log format.

mod audit_batches;
mod backorders;
mod bad_input;
mod bench_smoke;
mod card_changes;
mod changes;
mod cli;
mod compose;
mod dashboard;
mod directed;
mod dlq;
mod domain_edits;
mod domain_reads;
mod domains;
mod faults;
mod insight;
mod log_hygiene;
mod metrics;
mod named_workflows;
mod operations;
mod outcomes;
mod outside;
mod paths;
mod picklist;
mod poison;
mod postgres;
mod postgres_races;
mod postgres_scale;
mod privilege;
mod promotion;
mod receipt_trust;
mod result_trust;
mod retry;
mod scaling;
mod search;
mod service_trust;
mod services;
mod settlement;
mod token_trust;
mod traces;
mod transport_faults;
mod trust;
mod usage;
mod workflows;
