//! What no log may hold (issue 30): card tokens, the seed data's emails and
//! addresses, card numbers, a returned message's dump. [`leaks`] judges one
//! line; [`scan_run_dir`] reads every log of a stack before its run
//! directory is removed and, when `ORDERFLOW_LOG_SCAN_FILE` names a file
//! (`scripts/test.sh` sets it), appends each leaking line there, so the
//! whole suite's logs are scanned and the suite fails on any.

use std::io::Write as _;
use std::path::Path;

/// The environment variable naming the file leaking lines are appended to.
pub const SCAN_FILE_VAR: &str = "ORDERFLOW_LOG_SCAN_FILE";

/// What `line` leaks, by name; empty when nothing.
pub fn leaks(line: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    if line.contains("tok_") {
        found.push("a card token");
    }
    if line.contains("@example.com") {
        found.push("an email");
    }
    if line.contains("Market Sq") || line.contains("Hauptstrasse") {
        found.push("an address");
    }
    if card_numbers(line) > 0 {
        found.push("card digits");
    }
    if line.contains("returned us a message") {
        found.push("a returned message's dump");
    }
    found
}

/// Card-like numbers in `line`: whole words of 13 to 19 digits that start
/// as the card networks' numbers do (2 to 6) and pass the Luhn check; not
/// the decimals of a fraction (`2.6631057399999998`), not a Unix time in
/// milliseconds or nanoseconds (they start with 1).
fn card_numbers(line: &str) -> usize {
    let mut count = 0;
    let mut rest = line;
    let mut before = ' ';
    while !rest.is_empty() {
        let end = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
        let word = &rest[..end];
        let card_like = (13..=19).contains(&word.len())
            && word.chars().all(|c| c.is_ascii_digit())
            && matches!(word.as_bytes()[0], b'2'..=b'6')
            && before != '.'
            && shared::text::luhn_valid(word);
        count += usize::from(card_like);
        let Some(separator) = rest[end..].chars().next() else { break };
        before = separator;
        rest = &rest[end + separator.len_utf8()..];
    }
    count
}

/// Every leaking line of the `.log` files under `dir` (a process's own run
/// directory included), as `file: what: line` (the line cut at 300 chars).
pub fn leaking_lines(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(leaking_lines(&path));
            continue;
        }
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            for leak in leaks(line) {
                let cut: String = line.chars().take(300).collect();
                found.push(format!("{}: {leak}: {cut}", path.display()));
            }
        }
    }
    found
}

/// Appends the leaking lines of `dir`'s logs to the scan file, when one is named.
pub fn scan_run_dir(dir: &Path) {
    let Some(file) = std::env::var_os(SCAN_FILE_VAR) else { return };
    let found = leaking_lines(dir);
    if found.is_empty() {
        return;
    }
    if let Ok(mut out) = std::fs::OpenOptions::new().create(true).append(true).open(file) {
        for line in found {
            let _ = writeln!(out, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_what_it_looks_for() {
        assert_eq!(leaks(r#"card="tok_3f9a""#), ["a card token"]);
        assert_eq!(leaks("ada.1@example.com"), ["an email"]);
        assert_eq!(leaks("4111111111111111"), ["card digits"]);
        assert_eq!(leaks("number=4000000000000002,"), ["card digits"]);
        assert!(leaks("due_at=1733480000123").is_empty(), "a timestamp is not a card");
        assert!(leaks("aquired_after_secs=2.6631057399999998 x").is_empty(), "nor a fraction's digits");
        assert_eq!(leaks("card 4111111111111111."), ["card digits"], "a card at a sentence's end");
        assert!(leaks("order 3f2a-11 took 120 ms; ************1111").is_empty());
    }

    #[test]
    fn every_log_of_a_run_directory_is_read_with_its_processes_own_folders() {
        let dir = std::env::temp_dir().join(format!("log-scan-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("payment-1")).unwrap();
        std::fs::write(dir.join("intake-1.log"), "fine\nWARN card=4111111111111111\n").unwrap();
        std::fs::write(dir.join("payment-1/payment-1.log"), "token tok_ab12\n").unwrap();
        std::fs::write(dir.join("orders.jsonl"), "tok_ab12 in a file that is not a log\n").unwrap();
        let found = leaking_lines(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().any(|l| l.contains("intake-1.log: card digits")), "{found:?}");
        assert!(found.iter().any(|l| l.contains("payment-1.log: a card token")), "{found:?}");
    }
}
