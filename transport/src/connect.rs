//! Opening a connection to the broker, retried with growing delays until it
//! works or shutdown is requested. With several broker URLs (the nodes of a
//! cluster), each attempt tries them in turn, starting one further on than
//! the last attempt, so a process that lost its node moves to another; the
//! first choice is spread by the connection's name, so a stack's processes
//! do not all crowd onto one node.
//!
//! Every connection asks for frames of at most [`FRAME_MAX`] bytes (unless
//! the URL says otherwise): lapin keeps a receive and a send buffer of 32
//! frames per connection, filled with zeros when the connection is tuned, so
//! at RabbitMQ's default `frame_max` of 128 KiB each connection held 8 MiB
//! resident, most of a worker's memory (heaptrack: 8.4 of 8.8 MiB of
//! payment's peak heap).

use lapin::{Connection, ConnectionProperties};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The largest AMQP frame a connection asks for, bytes. orderflow's messages
/// are a few KiB (an audit batch up to a few hundred): a larger message goes
/// as several body frames, which costs nothing measurable; the buffers shrink
/// from 8 MiB to 1 MiB per connection.
pub const FRAME_MAX: u32 = 16 * 1024;

/// Moves each connection attempt of this process one URL further on.
static ROTATION: AtomicUsize = AtomicUsize::new(0);

/// Connects once (to the first of the URLs that answers, for a list),
/// naming the connection so it is recognisable in the management UI.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let urls = topology::management::amqp_urls(url);
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    if urls.len() < 2 {
        return connect_to(url, properties).await;
    }
    let spread = name.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    let start = spread.wrapping_add(ROTATION.fetch_add(1, Ordering::Relaxed)) % urls.len();
    let mut last_error = None;
    for i in 0..urls.len() {
        let url = urls[(start + i) % urls.len()];
        match connect_to(url, properties.clone()).await {
            Ok(connection) => {
                tracing::info!(broker = shared::settings::redact_url(url), "connected to this broker node");
                return Ok(connection);
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.expect("at least two URLs were tried"))
}

/// Connects to one broker URL with frames of at most [`FRAME_MAX`] bytes
/// (a `frame_max` in the URL stands; a URL that does not parse is left to
/// lapin, which says what is wrong with it).
async fn connect_to(url: &str, properties: ConnectionProperties) -> lapin::Result<Connection> {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(mut uri) => {
            uri.query.frame_max.get_or_insert(FRAME_MAX);
            Connection::connect_uri(uri, properties).await
        }
        Err(_) => Connection::connect(url, properties).await,
    }
}

/// Growing delays between reconnection attempts: 100 ms doubling up to 5 s, with jitter.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Duration::from_millis(100) }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        delay + Duration::from_millis(rand::random::<u64>() % 100)
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// Whether the broker answered but refused the user or its password (a
/// wrong or changed password, a deleted user), as opposed to not answering.
pub fn is_login_refused(error: &lapin::Error) -> bool {
    let text = format!("{error:?} {error}");
    ["ACCESS_REFUSED", "ACCESSREFUSED", "AccessRefused", "Login was refused", "authentication"]
        .iter()
        .any(|sign| text.contains(sign))
}

/// Connects, retrying with backoff; `None` when shutdown came first.
pub async fn connect_with_retry(url: &str, name: &str, shutdown: &CancellationToken) -> Option<Connection> {
    let mut backoff = Backoff::default();
    loop {
        match connect(url, name).await {
            Ok(connection) => return Some(connection),
            Err(error) => {
                let delay = backoff.next_delay();
                let retry_in_ms = delay.as_millis() as u64;
                if is_login_refused(&error) {
                    let user =
                        topology::management::amqp_url_parts(url).map(|(u, _, _)| u).unwrap_or_default();
                    let message = format!("the broker refused the credentials of {user}");
                    tracing::error!(%error, retry_in_ms, "{message}");
                } else {
                    tracing::warn!(%error, retry_in_ms, "cannot reach the broker");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
