//! The `orderflow` command's exit codes, one meaning each (documented in
//! `orderflow --help` and the README).

use std::process::ExitCode;

/// 1: the command could not do what was asked (broker or tracker
/// unreachable or refusing, an unreadable or bad file, an unknown order).
pub const ERROR: u8 = 1;

/// How a command that ran to its end went.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 0: published, applied, every order terminal, sent back.
    Done,
    /// 3: no answer in time: orders not yet terminal when `wait` gave up, a
    /// change (`--wait`, `--sync`) without an outcome by its timeout.
    TimedOut,
    /// 4: answered no: a change rejected (by a node, or by the tracker for an
    /// order it has never seen); `dlq replay` found nothing it could send back.
    Declined,
}

impl Outcome {
    pub fn code(&self) -> ExitCode {
        ExitCode::from(match self {
            Outcome::Done => 0,
            Outcome::TimedOut => 3,
            Outcome::Declined => 4,
        })
    }
}

/// The exit codes as `--help` and the README list them (2 is clap's).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  done (published, applied, every order terminal, sent back)
  1  error: the broker or the tracker unreachable or refusing, a file that cannot be read or holds a
     bad line, an unknown order
  2  usage: a missing or invalid argument; nothing was done
  3  timed out: `wait` gave up with orders not yet terminal; a change (--wait, --sync) had no
     outcome within --timeout
  4  declined: a change was rejected (by a node, or by the tracker: no such order); `dlq replay`
     sent nothing back";
