//! A live status line on stderr during long phases: redrawn in place on a
//! terminal, printed every few seconds otherwise (logs, tests).

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Progress {
    phase: String,
    text: Arc<Mutex<String>>,
    ticker: tokio::task::JoinHandle<()>,
    tty: bool,
}

impl Progress {
    /// Starts showing `phase: <text>` until [`Progress::finish`].
    pub fn start(phase: &str) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let text = Arc::new(Mutex::new(String::from("starting")));
        let (shown, label) = (text.clone(), phase.to_string());
        let started = Instant::now();
        let ticker = tokio::spawn(async move {
            let period = if tty { Duration::from_millis(250) } else { Duration::from_secs(5) };
            let mut interval = tokio::time::interval(period);
            interval.tick().await;
            loop {
                interval.tick().await;
                let now = shown.lock().map(|t| t.clone()).unwrap_or_default();
                let secs = started.elapsed().as_secs_f64();
                let mut err = std::io::stderr().lock();
                if tty {
                    let _ = write!(err, "\r\x1b[2K{label}: {now} [{secs:.0} s]");
                } else {
                    let _ = writeln!(err, "  {label}: {now} [{secs:.0} s]");
                }
                let _ = err.flush();
            }
        });
        Progress { phase: phase.to_string(), text, ticker, tty }
    }

    pub fn set(&self, text: impl Into<String>) {
        if let Ok(mut shown) = self.text.lock() {
            *shown = text.into();
        }
    }

    /// Ends the live line with a final one.
    pub fn finish(self, summary: &str) {
        self.ticker.abort();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{}: {summary}", self.phase);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// A one-line note on stderr.
pub fn note(text: &str) {
    eprintln!("{text}");
}
