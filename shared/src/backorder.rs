//! What a backordered order waits for, written once by inventory as its
//! `backordered` step's detail and read back by the tracker's dashboard
//! (orders and units waiting per SKU):
//! `backordered: waiting for SKU-0001 x3 from D-1, SKU-0002 x1 from D-2`.
//! An order whose purchase orders were sent before waits for "the received
//! items" and names no line.

/// How every backordered step's detail begins.
const PREFIX: &str = "backordered: waiting for ";
/// The detail of an order waiting on purchase orders sent before.
const RECEIVED_ITEMS: &str = "the received items";

/// One purchase order an order waits for: `qty` units of `sku` from `distributor_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingLine {
    pub sku: String,
    pub qty: i64,
    pub distributor_id: String,
}

/// The `backordered` step's detail for an order waiting for `lines`.
pub fn describe(lines: &[WaitingLine]) -> String {
    if lines.is_empty() {
        return format!("{PREFIX}{RECEIVED_ITEMS}");
    }
    let asked: Vec<String> =
        lines.iter().map(|l| format!("{} x{} from {}", l.sku, l.qty, l.distributor_id)).collect();
    format!("{PREFIX}{}", asked.join(", "))
}

/// The lines a `backordered` detail names (none for "the received items"),
/// or `None` when `detail` is no backorder's. A part it cannot read is left
/// out, never guessed.
pub fn parse(detail: &str) -> Option<Vec<WaitingLine>> {
    let rest = detail.strip_prefix(PREFIX)?;
    if rest == RECEIVED_ITEMS {
        return Some(Vec::new());
    }
    let line = |part: &str| {
        let (sku_qty, distributor_id) = part.rsplit_once(" from ")?;
        let (sku, qty) = sku_qty.rsplit_once(" x")?;
        let qty: i64 = qty.parse().ok().filter(|q| *q > 0)?;
        (!sku.is_empty() && !distributor_id.is_empty()).then(|| WaitingLine {
            sku: sku.to_string(),
            qty,
            distributor_id: distributor_id.to_string(),
        })
    };
    Some(rest.split(", ").filter_map(line).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, qty: i64, from: &str) -> WaitingLine {
        WaitingLine { sku: sku.into(), qty, distributor_id: from.into() }
    }

    #[test]
    fn a_detail_reads_back_as_the_lines_it_was_written_from() {
        let lines = vec![line("SKU-0001", 3, "D-1"), line("SKU-0002", 12, "D-2")];
        let detail = describe(&lines);
        assert_eq!(detail, "backordered: waiting for SKU-0001 x3 from D-1, SKU-0002 x12 from D-2");
        assert_eq!(parse(&detail), Some(lines));
        assert_eq!(parse(&describe(&[])), Some(vec![]));
    }

    #[test]
    fn what_is_not_a_backorder_or_cannot_be_read_is_never_guessed() {
        assert_eq!(parse("reserved 3 units"), None);
        assert_eq!(parse(""), None);
        let odd = "backordered: waiting for SKU-1 xNaN from D-1, SKU-2 x-4 from D-2, x3 from D-3, \
                   SKU-4 x2 from , SKU-5 x99999999999999999999 from D-5, SKU-6 x1 from D-6";
        assert_eq!(parse(odd), Some(vec![line("SKU-6", 1, "D-6")]));
    }
}
