//! payment: charges the card through the simulated processor (`charged`) or
//! declines it (`payment_declined`, terminal). The element brings a token:
//! the processor's, issued for this order at its door (the vault holds the
//! number, and pays for no other order), or the customer's card on file.
//! After this node the element carries only the masked card number.

use crate::catalog;
use crate::processor::{Processor, TokenCharge};
use chrono::{Datelike, NaiveDate, Utc};
use shared::order::{card_last4, mask_card, Order, PaymentCard, CARD_TOKEN_PREFIX, PROCESSOR_TOKEN_PREFIX};
use shared::{Node, OrderElement, OrderState, Outcome, Stage, StageError};

/// The card the simulated processor always declines.
pub const DECLINED_CARD: &str = "4000000000000002";

pub use shared::text::luhn_valid;

/// True when `MM/YY` is a month before `today`'s (or not a valid expiry at all).
pub fn expired(expiry: &str, today: NaiveDate) -> bool {
    let Some((mm, yy)) = expiry.split_once('/') else { return true };
    let (Ok(month), Ok(year)) = (mm.trim().parse::<u32>(), yy.trim().parse::<i32>()) else { return true };
    if !(1..=12).contains(&month) || !(0..=99).contains(&year) {
        return true;
    }
    (2000 + year, month) < (today.year(), today.month())
}

/// The processor's answer before any money moves: `Err` is the decline reason.
pub fn authorize(card: &PaymentCard, today: NaiveDate) -> Result<(), String> {
    // A card on file: the processor holds the card its token stands for.
    let on_file = card.card_number.starts_with(CARD_TOKEN_PREFIX);
    if on_file && expired(&card.expiry, today) {
        return Err(format!(
            "the card on file expired ({})",
            card.expiry.chars().take(8).collect::<String>()
        ));
    }
    if on_file {
        return Ok(());
    }
    if card.card_number == DECLINED_CARD {
        return Err("card declined by the processor".into());
    }
    if !luhn_valid(&card.card_number) {
        return Err("card number fails the Luhn check".into());
    }
    if expired(&card.expiry, today) {
        return Err(format!(
            "card expired or invalid expiry {:?}",
            card.expiry.chars().take(8).collect::<String>()
        ));
    }
    Ok(())
}

pub fn amount_cents(order: &Order) -> i64 {
    order.items.iter().map(|i| catalog::price_cents(&i.sku) * i.qty.max(0)).sum()
}

/// What the element costs: at the catalog prices intake copied into it
/// (an order placed by reference), else at the seeded prices.
pub fn element_amount_cents(element: &OrderElement) -> i64 {
    match &element.from_domains {
        Some(from) if from.items.len() == element.order.items.len() => element
            .order
            .items
            .iter()
            .zip(&from.items)
            .map(|(item, line)| line.price_cents * item.qty.max(0))
            .sum(),
        _ => amount_cents(&element.order),
    }
}

pub struct Payment {
    processor: Processor,
}

impl Payment {
    pub fn new(processor: Processor) -> Payment {
        Payment { processor }
    }
}

impl Payment {
    /// The processor's token: the card the vault keeps for it, if issued for
    /// this order, authorized and charged in one write.
    async fn charge_token(&self, mut element: OrderElement, token: &str) -> Result<Outcome, StageError> {
        let (amount, today) = (element_amount_cents(&element), Utc::now().date_naive());
        let charged = self
            .processor
            .charge_token(element.order_id, token, amount, move |card| authorize(card, today))
            .await?;
        Ok(match charged {
            TokenCharge::Charged { charge, masked } => {
                element.order.payment.card_number = masked;
                let detail = format!(
                    "charged {} cents to card ending {} (charge {})",
                    charge.amount_cents, charge.card_last4, charge.charge_id
                );
                element.charge = Some(charge);
                Outcome::new(element).step(OrderState::Charged, detail)
            }
            TokenCharge::Declined { reason, masked } => {
                element.order.payment.card_number = masked.unwrap_or_else(|| mask_card(token));
                Outcome::new(element).step(OrderState::PaymentDeclined, reason)
            }
        })
    }
}

impl Stage for Payment {
    const NODE: Node = Node::Payment;

    async fn handle(&self, mut element: OrderElement) -> Result<Outcome, StageError> {
        let card = element.order.payment.clone();
        if card.card_number.starts_with(PROCESSOR_TOKEN_PREFIX) {
            return self.charge_token(element, &card.card_number).await;
        }
        // A card on file is charged by its token and shown by its masked number.
        let on_file = element.from_domains.as_ref().and_then(|from| from.card_on_file.clone());
        let shown = match on_file.filter(|_| card.card_number.starts_with(CARD_TOKEN_PREFIX)) {
            Some(masked) => masked,
            None => card.card_number.clone(),
        };
        element.order.payment.card_number = mask_card(&shown);
        let last4 = card_last4(&shown);
        if let Err(reason) = authorize(&card, Utc::now().date_naive()) {
            return Ok(Outcome::new(element).step(OrderState::PaymentDeclined, reason));
        }
        let amount = element_amount_cents(&element);
        let charge = self.processor.charge(element.order_id, amount, &last4).await?;
        let detail = format!(
            "charged {} cents to card ending {last4} (charge {})",
            charge.amount_cents, charge.charge_id
        );
        element.charge = Some(charge);
        Ok(Outcome::new(element).step(OrderState::Charged, detail))
    }
}

/// The process: the stage on the broker until `shutdown` (its binary's
/// run, boxed in this crate: see `workers::process`).
pub fn run(
    settings: shared::settings::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        let stage = Payment::new(crate::processor::Processor::open(&settings).await?);
        transport::runner::run_stage(stage, settings, shutdown).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(number: &str, expiry: &str) -> PaymentCard {
        PaymentCard { card_number: number.into(), expiry: expiry.into() }
    }

    /// Payment charges the card the vault keeps for the order's token, and
    /// declines a token issued for another order or never issued: a leaked
    /// token pays for no stranger's order.
    #[tokio::test]
    async fn a_processor_token_pays_for_its_own_order_only() {
        let scratch = shared::settings::ScratchRun::new("payment");
        let processor = Processor::open(&scratch.settings()).await.unwrap();
        let payment = Payment::new(processor.clone());
        let mut order = crate::stages::intake::tests::valid_order();
        let mut element = OrderElement::placed(order.clone());
        element.state = OrderState::Accepted;
        let token = processor.tokenize(element.order_id, &order.payment).await.unwrap().unwrap();
        element.order.payment.card_number = token.clone();
        let outcome = payment.handle(element.clone()).await.unwrap();
        assert_eq!(outcome.steps[0].state, OrderState::Charged, "{:?}", outcome.steps);
        assert!(outcome.steps[0].detail.contains("card ending 1111"), "{}", outcome.steps[0].detail);
        assert_eq!(outcome.element.order.payment.card_number, "************1111");

        let declined = PaymentCard { card_number: DECLINED_CARD.into(), expiry: "12/30".into() };
        order.payment = declined.clone();
        let mut declining = OrderElement::placed(order);
        declining.state = OrderState::Accepted;
        declining.order.payment.card_number =
            processor.tokenize(declining.order_id, &declined).await.unwrap().unwrap();
        let outcome = payment.handle(declining).await.unwrap();
        assert!(outcome.steps[0].detail.contains("declined by the processor"), "{}", outcome.steps[0].detail);

        let mut stranger = element.clone();
        stranger.order_id = uuid::Uuid::new_v4();
        let guessed = format!("{PROCESSOR_TOKEN_PREFIX}{}", uuid::Uuid::new_v4().simple());
        for (card, reason) in [(token, "issued for another order"), (guessed, "not one the processor issued")]
        {
            stranger.order.payment.card_number = card;
            let outcome = payment.handle(stranger.clone()).await.unwrap();
            assert_eq!(outcome.steps[0].state, OrderState::PaymentDeclined);
            assert!(outcome.steps[0].detail.contains(reason), "{}", outcome.steps[0].detail);
            assert!(outcome.element.charge.is_none());
        }
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("4000000000000002"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid(""));
    }

    #[test]
    fn decline_rules() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        assert!(authorize(&card("4111111111111111", "11/26"), today).is_ok());
        assert!(authorize(&card("4000000000000002", "12/30"), today).unwrap_err().contains("declined"));
        assert!(authorize(&card("4111111111111112", "12/30"), today).unwrap_err().contains("Luhn"));
        assert!(authorize(&card("4111111111111111", "10/26"), today).unwrap_err().contains("expired"));
        assert!(authorize(&card("4111111111111111", "13/30"), today).unwrap_err().contains("expired"));
        assert!(authorize(&card("4111111111111111", "garbage"), today).is_err());
        assert!(authorize(&card("tok_0123456789abcdef0123456789abcdef", "12/30"), today).is_ok());
        assert!(authorize(&card("tok_0123456789abcdef0123456789abcdef", "10/26"), today)
            .unwrap_err()
            .contains("on file"));
    }
}
