//! The processor's card vault: the one place orderflow's cards are kept.
//! A door of orderflow (intake; the coordinator for a directed order)
//! hands the processor an order's card and carries the token it returns;
//! payment asks the vault for the card behind a token when it charges. A
//! token is bound to the order it was issued for and pays for that order
//! only. The same card tokenized again for the same order (a redelivered
//! order) gets the same token, so a redone step makes the same element.

use super::{insert_charge, Processor};
use shared::group_commit::Written;
use shared::order::{card_last4, is_card_number, mask_card, Charge, PaymentCard, MAX_EXPIRY_CHARS};
use shared::store::stored_uuid;
use uuid::Uuid;

use shared::order::PROCESSOR_TOKEN_PREFIX;

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS processor_cards (token TEXT PRIMARY KEY, order_id TEXT NOT NULL, \
     number TEXT NOT NULL, expiry TEXT NOT NULL, masked TEXT NOT NULL, issued_at TEXT NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS processor_cards_by_card ON processor_cards (order_id, number, expiry)",
];

/// What charging a token came to.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenCharge {
    /// Charged (or charged before: the first charge), on the card shown as `masked`.
    Charged { charge: Charge, masked: String },
    /// Nothing charged, for this reason; the card as shown, when the token
    /// was this order's.
    Declined { reason: String, masked: Option<String> },
}

/// A card in the vault, as payment charges it.
#[derive(Clone, Debug, PartialEq)]
pub struct VaultCard {
    /// The order the token was issued for: the only one it pays for.
    pub order_id: Uuid,
    pub card: PaymentCard,
    /// The number as anyone may see it: `************1111`.
    pub masked: String,
}

impl Processor {
    /// The token standing for `card` in payment for `order_id`; the same
    /// token when the same card was tokenized for that order before.
    /// `Ok(Err(reason))`: not a card the vault keeps (13 to 19 digits, a
    /// short expiry).
    pub async fn tokenize(&self, order_id: Uuid, card: &PaymentCard) -> sqlx::Result<Result<String, String>> {
        if !is_card_number(&card.card_number) {
            return Ok(Err("card number is not 13 to 19 digits".into()));
        }
        let masked = mask_card(&card.card_number);
        self.keep(order_id, &card.card_number, &card.expiry, &masked).await
    }

    /// The token standing for a customer's card on file (its `tok_` token,
    /// which the processor holds the card for) in payment for `order_id`:
    /// how the customer domain hands a new card on file to an order waiting
    /// for payment, never seeing a number.
    pub async fn tokenize_on_file(
        &self,
        order_id: Uuid,
        card: &shared::domains::CardOnFile,
    ) -> sqlx::Result<Result<String, String>> {
        let on_file =
            card.token.starts_with(shared::order::CARD_TOKEN_PREFIX) && shared::order::is_token(&card.token);
        if !on_file {
            return Ok(Err("not a card on file's token (tok_ and 32 hex digits)".into()));
        }
        if !shared::change::is_masked_card(&card.masked) {
            return Ok(Err("the card on file's masked number is not stars and four digits".into()));
        }
        self.keep(order_id, &card.token, &card.expiry, &card.masked).await
    }

    /// Keeps a card (a number, or a card on file's token) for an order: its token.
    async fn keep(
        &self,
        order_id: Uuid,
        number: &str,
        expiry: &str,
        masked: &str,
    ) -> sqlx::Result<Result<String, String>> {
        if expiry.chars().count() > MAX_EXPIRY_CHARS {
            return Ok(Err(format!("card expiry is longer than {MAX_EXPIRY_CHARS} characters")));
        }
        let row = (
            format!("{PROCESSOR_TOKEN_PREFIX}{}", Uuid::new_v4().simple()),
            order_id.to_string(),
            number.to_string(),
            expiry.to_string(),
            masked.to_string(),
            chrono::Utc::now().to_rfc3339(),
        );
        let token: String = self
            .store
            .write(move |connection| {
                let (token, order_id, number, expiry, masked, issued_at) = row.clone();
                Box::pin(async move {
                    // One statement: the same card for the same order returns its first token.
                    let token = sqlx::query_scalar(
                        "INSERT INTO processor_cards (token, order_id, number, expiry, masked, issued_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id, number, expiry) \
                         DO UPDATE SET order_id = excluded.order_id RETURNING token",
                    )
                    .bind(token)
                    .bind(order_id)
                    .bind(number)
                    .bind(expiry)
                    .bind(masked)
                    .bind(issued_at)
                    .fetch_one(&mut *connection)
                    .await?;
                    Ok(Written::Keep(token))
                })
            })
            .await?;
        Ok(Ok(token))
    }

    /// Charges the card the vault keeps for `token` once, in one write
    /// (the card read in the charge's own transaction, not a read before
    /// it): `authorize` decides on the card first. A token that is not the
    /// vault's, or was issued for another order, is declined.
    pub async fn charge_token<A>(
        &self,
        order_id: Uuid,
        token: &str,
        amount_cents: i64,
        authorize: A,
    ) -> sqlx::Result<TokenCharge>
    where
        A: Fn(&PaymentCard) -> Result<(), String> + Send + Sync + 'static,
    {
        let (token, authorize) = (token.to_string(), std::sync::Arc::new(authorize));
        let order = order_id.to_string();
        let charged = self
            .store
            .write(move |connection| {
                let (token, order, authorize) = (token.clone(), order.clone(), authorize.clone());
                Box::pin(async move {
                    let kept: Option<(String, String, String, String)> = sqlx::query_as(
                        "SELECT order_id, number, expiry, masked FROM processor_cards WHERE token = $1",
                    )
                    .bind(&token)
                    .fetch_optional(&mut *connection)
                    .await?;
                    let declined = |reason: &str| Ok(Written::Keep(Err((reason.to_string(), None))));
                    let Some((issued_for, card_number, expiry, masked)) = kept else {
                        return declined("the card token is not one the processor issued");
                    };
                    if issued_for != order {
                        return declined("the card token was issued for another order");
                    }
                    if let Err(reason) = authorize(&PaymentCard { card_number, expiry }) {
                        return Ok(Written::Keep(Err((format!("{reason} (card {masked})"), Some(masked)))));
                    }
                    let row = Processor::charge_row(order_id, amount_cents, &card_last4(&masked));
                    Ok(Written::Keep(Ok((insert_charge(connection, row).await?, masked))))
                })
            })
            .await?;
        Ok(match charged {
            Err((reason, masked)) => TokenCharge::Declined { reason, masked },
            Ok(((charge_id, amount_cents, card_last4), masked)) => TokenCharge::Charged {
                charge: Charge { charge_id: stored_uuid(&charge_id, "charge_id")?, amount_cents, card_last4 },
                masked,
            },
        })
    }

    /// The card behind a token the vault issued, if it did.
    pub async fn card(&self, token: &str) -> sqlx::Result<Option<VaultCard>> {
        let row: Option<(String, String, String, String)> =
            sqlx::query_as("SELECT order_id, number, expiry, masked FROM processor_cards WHERE token = $1")
                .bind(token)
                .fetch_optional(&self.store.pool)
                .await?;
        let Some((order_id, card_number, expiry, masked)) = row else { return Ok(None) };
        Ok(Some(VaultCard {
            order_id: stored_uuid(&order_id, "order_id")?,
            card: PaymentCard { card_number, expiry },
            masked,
        }))
    }
}

/// A card change is applied only with a token the vault issued for that
/// very order (and, when it shows a masked number, that card's): a token
/// leaked from another order, or made up, is refused with the reason.
impl shared::change_book::VetChange for Processor {
    fn vet<'a>(
        &'a self,
        element: &'a shared::OrderElement,
        request: &'a shared::change::ChangeRequest,
    ) -> futures::future::BoxFuture<'a, sqlx::Result<Option<String>>> {
        Box::pin(async move {
            let shared::change::Change::Card { token, masked } = &request.change else { return Ok(None) };
            Ok(match self.card(token).await? {
                None => Some("the card token is not one the processor issued".into()),
                Some(kept) if kept.order_id != element.order_id => {
                    Some("the card token was issued for another order".into())
                }
                Some(kept) if !masked.is_empty() && *masked != kept.masked => {
                    Some(format!("the masked number {masked} is not the card's behind the token"))
                }
                Some(_) => None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::order::is_token;

    fn card(number: &str, expiry: &str) -> PaymentCard {
        PaymentCard { card_number: number.into(), expiry: expiry.into() }
    }

    /// A token stands for one order's card: the same card for the same
    /// order keeps its token, another order or another card gets another;
    /// the vault answers only for tokens it issued, and keeps nothing that
    /// is not a card.
    #[tokio::test]
    async fn a_token_stands_for_one_orders_card_and_only_the_vault_knows_the_number() {
        let scratch = shared::settings::ScratchRun::new("vault");
        let processor = Processor::open(&scratch.settings()).await.unwrap();
        let (order, other_order) = (Uuid::new_v4(), Uuid::new_v4());
        let visa = card("4111111111111111", "12/30");
        let token = processor.tokenize(order, &visa).await.unwrap().unwrap();
        assert!(token.starts_with(PROCESSOR_TOKEN_PREFIX) && is_token(&token), "{token}");
        assert!(!token.contains("4111111111111111") && !token.contains("1111"));
        assert_eq!(processor.tokenize(order, &visa).await.unwrap().unwrap(), token, "a redelivered order");
        assert_ne!(processor.tokenize(other_order, &visa).await.unwrap().unwrap(), token);
        let new_card = card("5555555555554444", "01/31");
        assert_ne!(processor.tokenize(order, &new_card).await.unwrap().unwrap(), token);

        let kept = processor.card(&token).await.unwrap().expect("the vault knows its token");
        assert_eq!(
            kept,
            VaultCard { order_id: order, card: visa.clone(), masked: "************1111".into() }
        );
        let guessed = format!("{PROCESSOR_TOKEN_PREFIX}{}", Uuid::new_v4().simple());
        assert_eq!(processor.card(&guessed).await.unwrap(), None);

        for (number, expiry, reason) in [
            ("4111-1111-1111-1111", "12/30", "13 to 19 digits"),
            ("41111111111111a1", "12/30", "13 to 19 digits"),
            (&"4".repeat(10_000), "12/30", "13 to 19 digits"),
            ("", "12/30", "13 to 19 digits"),
            ("4111111111111111", &"1".repeat(100), "expiry"),
        ] {
            let refused = processor.tokenize(order, &card(number, expiry)).await.unwrap().unwrap_err();
            assert!(refused.contains(reason), "{refused}");
        }
    }

    /// An order is charged once: asked again with another card that pays
    /// (a card change decided again after a crash), the processor answers
    /// the first charge; `charge_for` finds it (the payment desk asks).
    /// A decline never reads the ledger (declines go on while it is away).
    #[tokio::test]
    async fn a_charged_order_is_never_charged_again() {
        let scratch = shared::settings::ScratchRun::new("vault-once");
        let processor = Processor::open(&scratch.settings()).await.unwrap();
        let order = Uuid::new_v4();
        let first = processor.tokenize(order, &card("5555555555554444", "12/30")).await.unwrap().unwrap();
        let second = processor.tokenize(order, &card("4111111111111111", "12/30")).await.unwrap().unwrap();
        let pays = |_: &PaymentCard| Ok(());
        let TokenCharge::Charged { charge, .. } =
            processor.charge_token(order, &first, 100, pays).await.unwrap()
        else {
            panic!("the first card pays")
        };
        let again = processor.charge_token(order, &second, 999, pays).await.unwrap();
        assert!(matches!(&again, TokenCharge::Charged { charge: c, .. } if *c == charge), "{again:?}");
        assert_eq!(processor.charge_for(order).await.unwrap(), Some(charge));
        assert_eq!(processor.charge_for(Uuid::new_v4()).await.unwrap(), None);
    }
}
