//! payment: charges the card through the simulated processor (`charged`);
//! a declined card keeps the order waiting here for another card
//! (`awaiting_payment`, see [`super::waiting`]; with no wait set, or on a
//! directed call, it ends `payment_declined`). The element brings a token:
//! the processor's, issued for this order at its door (the vault holds the
//! number, and pays for no other order), or the customer's card on file.
//! After this node the element carries only the masked card number.

use super::waiting::Waiting;
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
    /// Where declined orders wait for another card, and for how long (none: they end at once).
    waiting: Option<(Waiting, std::time::Duration)>,
}

/// The outcome of a charge: the element shows the card masked and carries the charge.
pub fn charged(mut element: OrderElement, charge: shared::order::Charge, masked: String) -> Outcome {
    element.order.payment.card_number = masked;
    let detail = format!(
        "charged {} cents to card ending {} (charge {})",
        charge.amount_cents, charge.card_last4, charge.charge_id
    );
    element.charge = Some(charge);
    Outcome::new(element).step(OrderState::Charged, detail)
}

/// Who keeps an order waiting for another card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keeper {
    /// Payment, in its waiting table (the autonomous workflow).
    Payment,
    /// The caller: the coordinator keeps a directed order.
    Caller,
}

/// A waiting order whose new card was declined too: it waits on.
pub fn still_waiting(element: OrderElement, reason: &str) -> Outcome {
    Outcome::new(element)
        .step(OrderState::AwaitingPayment, format!("{reason}; still waiting for another card"))
}

/// What charging an element's card came to.
pub enum Paid {
    /// Charged: the outcome (`charged`), the element showing the masked card.
    Charged(Outcome),
    /// Declined for `reason`; the element shows the masked card.
    Declined { element: OrderElement, reason: String },
}

impl Payment {
    /// Payment whose declined orders end at once (`payment_declined`).
    pub fn new(processor: Processor) -> Payment {
        Payment { processor, waiting: None }
    }

    /// Payment whose declined orders wait up to `wait` for another card.
    pub fn waiting_for_cards(processor: Processor, waiting: Waiting, wait: std::time::Duration) -> Payment {
        Payment { processor, waiting: Some((waiting, wait)).filter(|_| !wait.is_zero()) }
    }

    /// The charge the processor recorded for the order, if it was charged.
    pub async fn charge_for(
        &self,
        order_id: uuid::Uuid,
    ) -> Result<Option<shared::order::Charge>, StageError> {
        Ok(self.processor.charge_for(order_id).await?)
    }

    /// Charges the element's card once (a card change's token too), or says why not.
    pub async fn pay(&self, element: OrderElement) -> Result<Paid, StageError> {
        let card = element.order.payment.clone();
        if card.card_number.starts_with(PROCESSOR_TOKEN_PREFIX) {
            return self.charge_token(element, &card.card_number).await;
        }
        self.charge_card(element).await
    }

    /// The outcome of a declined card: the order waits for another, kept
    /// by `keeper`; with no wait set it ends `payment_declined`.
    async fn declined(
        &self,
        element: OrderElement,
        reason: String,
        keeper: Keeper,
    ) -> Result<Outcome, StageError> {
        let Some((waiting, limit)) = self.waiting.as_ref() else {
            return Ok(Outcome::new(element).step(OrderState::PaymentDeclined, reason));
        };
        if keeper == Keeper::Payment {
            let waits =
                OrderElement { seq: element.seq + 1, state: OrderState::AwaitingPayment, ..element.clone() };
            waiting.keep(&waits, &reason).await?;
        }
        let detail =
            format!("{reason}; waiting up to {} s for another card (a card change)", limit.as_secs());
        Ok(Outcome::new(element).step(OrderState::AwaitingPayment, detail))
    }

    async fn decide(&self, element: OrderElement, keeper: Keeper) -> Result<Outcome, StageError> {
        match self.pay(element).await? {
            Paid::Charged(outcome) => Ok(outcome),
            Paid::Declined { element, reason } => self.declined(element, reason, keeper).await,
        }
    }

    /// A directed order the coordinator kept waiting, brought back: with a
    /// new card (a processor's token) it is charged, or declined and waits
    /// on; with none, its wait ran out and it ends `payment_declined`.
    async fn resume(&self, element: OrderElement) -> Result<Outcome, StageError> {
        if !element.order.payment.card_number.starts_with(PROCESSOR_TOKEN_PREFIX) {
            let wait = self.waiting.as_ref().map_or(0, |(_, limit)| limit.as_secs());
            let reason = format!("no card paid within the {wait} s wait for another card");
            return Ok(Outcome::new(element).step(OrderState::PaymentDeclined, reason));
        }
        Ok(match self.pay(element).await? {
            Paid::Charged(outcome) => outcome,
            Paid::Declined { element, reason } => still_waiting(element, &reason),
        })
    }

    /// The processor's token: the card the vault keeps for it, if issued for
    /// this order, authorized and charged in one write.
    async fn charge_token(&self, mut element: OrderElement, token: &str) -> Result<Paid, StageError> {
        let (amount, today) = (element_amount_cents(&element), Utc::now().date_naive());
        let answer = self
            .processor
            .charge_token(element.order_id, token, amount, move |card| authorize(card, today))
            .await?;
        Ok(match answer {
            TokenCharge::Charged { charge, masked } => Paid::Charged(charged(element, charge, masked)),
            TokenCharge::Declined { reason, masked } => {
                element.order.payment.card_number = masked.unwrap_or_else(|| mask_card(token));
                Paid::Declined { element, reason }
            }
        })
    }

    /// A card on file (or, in an element from before the vault, a number).
    async fn charge_card(&self, mut element: OrderElement) -> Result<Paid, StageError> {
        let card = element.order.payment.clone();
        // A card on file is charged by its token and shown by its masked number.
        let on_file = element.from_domains.as_ref().and_then(|from| from.card_on_file.clone());
        let shown = match on_file.filter(|_| card.card_number.starts_with(CARD_TOKEN_PREFIX)) {
            Some(masked) => masked,
            None => card.card_number.clone(),
        };
        element.order.payment.card_number = mask_card(&shown);
        let last4 = card_last4(&shown);
        if let Err(reason) = authorize(&card, Utc::now().date_naive()) {
            return Ok(Paid::Declined { element, reason });
        }
        let amount = element_amount_cents(&element);
        let charge = self.processor.charge(element.order_id, amount, &last4).await?;
        let detail = format!(
            "charged {} cents to card ending {last4} (charge {})",
            charge.amount_cents, charge.charge_id
        );
        element.charge = Some(charge);
        Ok(Paid::Charged(Outcome::new(element).step(OrderState::Charged, detail)))
    }
}

impl Stage for Payment {
    const NODE: Node = Node::Payment;
    const KEEPS_ELEMENTS_WAITING: bool = true;

    async fn handle(&self, element: OrderElement) -> Result<Outcome, StageError> {
        self.decide(element, Keeper::Payment).await
    }

    /// A directed order's coordinator keeps it waiting (payment keeps no
    /// row), and brings it back with a new card or when its wait ran out.
    async fn handle_call(&self, element: OrderElement) -> Result<Outcome, StageError> {
        if element.state == OrderState::AwaitingPayment {
            return self.resume(element).await;
        }
        self.decide(element, Keeper::Caller).await
    }

    /// An accepted element of an order that waited here before (its first
    /// delivery decided, then the node stopped before acknowledging it; or
    /// the broker redelivered it) gets its first decline again: what became
    /// of the order since is the desk's, and a card change applied there
    /// is not applied to this copy.
    async fn prior_outcome(&self, element: &OrderElement) -> Result<Option<Outcome>, StageError> {
        match &self.waiting {
            // Arrived from its queue (accepted; screened, on standard v2).
            Some((waiting, _)) if element.state != OrderState::AwaitingPayment => {
                Ok(waiting.first_outcome(element).await?)
            }
            _ => Ok(None),
        }
    }

    fn change_vetter(&self) -> Option<std::sync::Arc<dyn shared::change_book::VetChange>> {
        Some(std::sync::Arc::new(self.processor.clone()))
    }
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
