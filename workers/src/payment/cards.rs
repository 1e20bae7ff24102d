//! Payment's cards service (the `cards` domain, answered by the payment
//! process): whoever may change an order (its placer, support, the
//! operator) hands it a card for that order and gets the processor's token
//! back, with the masked number; a card change carries only that. The
//! number goes from the request straight into the processor's vault and
//! is in no answer, reason or log. A card the processor would refuse on
//! sight (not 13 to 19 digits, a failed Luhn check, expired) is refused
//! here with the reason; one it declines when charged (as the simulated
//! processor does `4000000000000002`) is tokenized, and declined then.
//!
//! Its tick also runs the payment desk ([`super::desk`]), as the stock
//! domain's runs inventory's; its feed is the settlement aggregation queue
//! ([`super::settlement`]), whose batches it settles when full or due.

use super::desk::PaymentDesk;
use super::settlement::Settlement;
use super::stage::{authorize, DECLINED_CARD};
use crate::processor::Processor;
use shared::domains::{CardsRequest, CopyStatus, TokenizedCard};
use shared::order::{is_card_number, mask_card};
use topology::DomainCopy;
use transport::domain::{parse, DomainError, DomainService, Request};
use transport::{NodeContext, Publisher};

pub struct CardsService {
    pub processor: Processor,
    pub desk: PaymentDesk,
    pub settlement: Settlement,
}

impl DomainService for CardsService {
    fn copy(&self) -> DomainCopy {
        DomainCopy::primary("cards")
    }

    async fn answer(&self, request: Request<'_>) -> Result<serde_json::Value, DomainError> {
        let unavailable = |e: sqlx::Error| DomainError::Unavailable(e.into());
        match parse::<CardsRequest>(request.body)? {
            CardsRequest::Tokenize { order_id, card } => {
                use topology::permissions::Role;
                let may = request.is_from(Role::Publisher)
                    || request.is_from(Role::Support)
                    || (!request.caller.is_empty() && request.caller == request.trust.operator());
                if !may {
                    return Err(DomainError::Refused(
                        "only an order's placer, support or the operator may hand payment a card".into(),
                    ));
                }
                // The simulated processor's declining card is declined when charged, as a real one.
                if is_card_number(&card.card_number) && card.card_number != DECLINED_CARD {
                    authorize(&card, chrono::Utc::now().date_naive())
                        .map_err(|reason| DomainError::Refused(format!("{reason}: the card was not kept")))?;
                }
                let token = self
                    .processor
                    .tokenize(order_id, &card)
                    .await
                    .map_err(unavailable)?
                    .map_err(|reason| DomainError::Refused(format!("{reason}: the card was not kept")))?;
                let answer = TokenizedCard { token, masked: mask_card(&card.card_number) };
                Ok(serde_json::to_value(answer).expect("an answer serializes"))
            }
            CardsRequest::TokenizeOnFile { order_id, card } => {
                use topology::permissions::Role;
                let editors = DomainCopy::all().into_iter().filter(|copy| copy.may_forward_edits());
                if !editors.into_iter().any(|copy| request.is_from(Role::Domain(copy))) {
                    return Err(DomainError::Refused(
                        "only the customer domain may hand payment a card on file for an order".into(),
                    ));
                }
                let token = self
                    .processor
                    .tokenize_on_file(order_id, &card)
                    .await
                    .map_err(unavailable)?
                    .map_err(|reason| DomainError::Refused(format!("{reason}: the card was not kept")))?;
                let answer = TokenizedCard { token, masked: card.masked.clone() };
                Ok(serde_json::to_value(answer).expect("an answer serializes"))
            }
            CardsRequest::Status {} => {
                let waiting = self.desk.waiting_count().await.map_err(unavailable)?;
                let status = CopyStatus {
                    copy: "cards".into(),
                    role: "primary".into(),
                    records: waiting,
                    ..Default::default()
                };
                Ok(serde_json::to_value(status).expect("a status serializes"))
            }
        }
    }

    async fn prepare(&self, _publisher: &Publisher) -> anyhow::Result<()> {
        self.settlement.forget_held().await;
        Ok(())
    }

    /// A capture to settle, from the aggregation queue.
    async fn apply(&self, ctx: &NodeContext, publisher: &Publisher, delivery: lapin::message::Delivery) {
        self.settlement.take(ctx, publisher, delivery).await
    }

    async fn tick(&self, ctx: &NodeContext, publisher: &Publisher) {
        self.settlement.settle_if_due(ctx, publisher).await;
        self.desk.round(publisher).await;
    }
}
