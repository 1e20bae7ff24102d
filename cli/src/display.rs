//! Text that comes from orders and messages (names, customer ids, reasons,
//! details) printed to a terminal: control characters escaped, never raw.

use std::borrow::Cow;

/// `text` with every control character written as an escape (`\n`, `\u{1b}`).
pub fn safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::safe;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(safe("Zoë 東京 'quoted'"), "Zoë 東京 'quoted'");
        assert_eq!(safe("red\x1b[31m\r\nbell\x07\u{9b}"), "red\\u{1b}[31m\\r\\nbell\\u{7}\\u{9b}");
    }
}
