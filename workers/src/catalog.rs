//! The seeded product catalog: which SKUs exist, their price, and the stock
//! inventory starts with (SKU-0001..SKU-0500 with 1,000,000 units each;
//! SKU-0901..SKU-0905 with 10 each, for backorders: the seeded distributors
//! supply them; SKU-0999 with none, and nobody supplies it).

pub const STOCKED_SKUS: std::ops::RangeInclusive<u32> = 1..=500;
/// Items with little stock, which a distributor supplies: the demo's and
/// the tests' backorders.
pub const LOW_STOCK_SKUS: std::ops::RangeInclusive<u32> = 901..=905;
pub const UNSTOCKED_SKU: &str = "SKU-0999";
pub const INITIAL_UNITS: i64 = 1_000_000;
pub const LOW_STOCK_UNITS: i64 = 10;

pub fn sku_name(number: u32) -> String {
    format!("SKU-{number:04}")
}

fn sku_number(sku: &str) -> Option<u32> {
    let digits = sku.strip_prefix("SKU-")?;
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn in_catalog(sku: &str) -> bool {
    sku == UNSTOCKED_SKU
        || sku_number(sku).is_some_and(|n| STOCKED_SKUS.contains(&n) || LOW_STOCK_SKUS.contains(&n))
}

/// Unit price in cents: a fixed, made-up price per SKU.
pub fn price_cents(sku: &str) -> i64 {
    499 + i64::from(sku_number(sku).unwrap_or(0) % 50) * 100
}

/// Where a SKU's stock is kept in the distribution center: one bin per SKU,
/// `<aisle>-<rack>-<shelf>` (SKU-0042 is in `A-04-2`).
pub fn bin_of(sku: &str) -> String {
    let n = sku_number(sku).unwrap_or(0);
    let aisle = char::from(b'A' + u8::try_from((n / 100).min(25)).unwrap_or(25));
    format!("{aisle}-{:02}-{}", (n / 10) % 10, n % 10)
}

/// The stock inventory seeds its `bin_items` with.
pub fn seeded_stock() -> Vec<(String, i64)> {
    let mut stock: Vec<(String, i64)> = STOCKED_SKUS.map(|n| (sku_name(n), INITIAL_UNITS)).collect();
    stock.extend(LOW_STOCK_SKUS.map(|n| (sku_name(n), LOW_STOCK_UNITS)));
    stock.push((UNSTOCKED_SKU.to_string(), 0));
    stock
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_bounds() {
        assert!(in_catalog("SKU-0001") && in_catalog("SKU-0500") && in_catalog("SKU-0999"));
        assert!(!in_catalog("SKU-0501") && !in_catalog("SKU-0000") && !in_catalog("sku-0001"));
        assert!(!in_catalog("SKU-00001") && !in_catalog("SKU-0900") && !in_catalog("SKU-0906"));
        assert!(in_catalog("SKU-0901") && in_catalog("SKU-0905"));
        assert_eq!(seeded_stock().len(), 506);
        assert_eq!((bin_of("SKU-0042").as_str(), bin_of("SKU-0500").as_str()), ("A-04-2", "F-00-0"));
        assert_eq!(bin_of("SKU-0901"), "J-00-1");
    }
}
