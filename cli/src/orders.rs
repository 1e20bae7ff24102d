//! `orderflow orders`: finds orders through the tracker's `GET /orders` (by
//! state, the node they wait at, customer and age), walking its pages up to
//! `--limit`; prints one line per order, or the page as JSON.

use shared::order_search::{OrderPage, OrderSearch, MAX_LIMIT};
use shared::settings::Settings;
use shared::text::escaped as safe;
use shared::tracker_api::TrackerClient;

/// Lists up to `limit` orders matching `search` (its own limit is ignored:
/// pages are of at most [`MAX_LIMIT`]); says when more match.
pub async fn list(
    settings: &Settings,
    mut search: OrderSearch,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let client = TrackerClient::new(&settings.tracker_url());
    let mut found = OrderPage::default();
    loop {
        let wanted = limit - found.orders.len();
        search.limit = u32::try_from(wanted).unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
        let page = client.orders(&search).await?;
        found.orders.extend(page.orders);
        found.next = page.next;
        match &found.next {
            Some(next) if found.orders.len() < limit => search.after = Some(next.parse()?),
            _ => break,
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    let now = chrono::Utc::now();
    for order in &found.orders {
        let since = chrono::DateTime::parse_from_rfc3339(&order.since)
            .map(|at| format!("{} ago", age((now - at.with_timezone(&chrono::Utc)).num_seconds())))
            .unwrap_or_default();
        println!(
            "{}  {:<17} {:<28} {:<10} {}",
            order.order_id,
            safe(&order.state),
            safe(&order.since),
            since,
            safe(order.customer_id.as_deref().unwrap_or("-"))
        );
    }
    if let Some(next) = &found.next {
        eprintln!("more orders match: raise --limit, or go on with --after {next}");
    }
    Ok(())
}

/// A short age: `42s`, `5m`, `3h`, `2d`.
fn age(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_are_short() {
        assert_eq!(super::age(-3), "0s");
        assert_eq!(super::age(300), "5m");
        assert_eq!(super::age(3 * 3600), "3h");
        assert_eq!(super::age(200_000), "2d");
    }
}
