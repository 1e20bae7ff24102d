//! Waiting on a condition: poll it until it holds or a deadline passes,
//! never a fixed sleep. The last "not yet" says why the wait failed.

use std::future::Future;
use std::time::{Duration, Instant};

/// What one poll of a condition found.
pub enum Check<T> {
    /// The condition holds, with what the waiter wanted.
    Done(T),
    /// Not yet, and why: what the error says if the deadline passes now.
    Waiting(String),
}

/// Polls `probe` every `every` until it is [`Check::Done`]; fails with the
/// last [`Check::Waiting`] reason once `timeout` has passed, or at once with
/// the probe's own error (something that waiting will not mend).
pub async fn until<T, F, Fut>(timeout: Duration, every: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Check<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await? {
            Check::Done(value) => return Ok(value),
            Check::Waiting(why) if Instant::now() >= deadline => {
                anyhow::bail!("not within {timeout:?}: {why}")
            }
            Check::Waiting(_) => tokio::time::sleep(every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn waits_until_done_and_fails_with_the_last_reason() {
        let polls = AtomicUsize::new(0);
        let got = until(Duration::from_secs(5), Duration::from_millis(1), || async {
            let n = polls.fetch_add(1, Ordering::Relaxed);
            Ok(if n == 3 { Check::Done(n) } else { Check::Waiting(format!("poll {n}")) })
        })
        .await
        .unwrap();
        assert_eq!(got, 3);

        let error = until(Duration::from_millis(20), Duration::from_millis(5), || async {
            Ok(Check::<()>::Waiting("still nothing".into()))
        })
        .await
        .unwrap_err();
        assert!(error.to_string().contains("still nothing"), "{error}");

        let error = until(Duration::from_secs(5), Duration::from_millis(5), || async {
            Err::<Check<()>, _>(anyhow::anyhow!("broken"))
        })
        .await
        .unwrap_err();
        assert_eq!(error.to_string(), "broken");
    }
}
