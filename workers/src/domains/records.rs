//! A domain of plain records by key: the catalog (items by SKU; a primary
//! and replicas in `uk` and `de`, by the generic [`CopyStore`]) and the
//! distributors (by id, with the SKUs each supplies and their lead times).
//! Reads from anyone in the stack, marked with the copy that answered;
//! `put` (seeding, maintenance) at the primary, from the back office or the
//! operator, once per request; a replica refuses it naming the primary.

use super::copy_store::CopyStore;
use lapin::message::Delivery;
use shared::domains::{
    check_distributor, check_id, check_item, page_size, CatalogItem, CopyRequest, Distributor, RecordRequest,
};
use shared::settings::Settings;
use topology::DomainCopy;
use transport::domain::{parse, Access, DomainError, DomainService, Request};
use transport::{NodeContext, Publisher};

/// What distinguishes one domain of records from another.
pub struct RecordKind {
    pub domain: &'static str,
    /// The field of a record that is its key.
    pub key: &'static str,
    /// Reads a record's key (a snapshot page names each record by it).
    pub key_of: fn(&serde_json::Value) -> String,
    /// Checks a record to put and says what is wrong.
    pub check: fn(&serde_json::Value) -> Result<(), String>,
}

pub const CATALOG: RecordKind =
    RecordKind { domain: "catalog", key: "sku", key_of: |r| text_field(r, "sku"), check: check_catalog_item };
pub const DISTRIBUTOR: RecordKind = RecordKind {
    domain: "distributor",
    key: "distributor_id",
    key_of: |r| text_field(r, "distributor_id"),
    check: check_distributor_record,
};

fn text_field(record: &serde_json::Value, field: &str) -> String {
    record[field].as_str().unwrap_or_default().to_string()
}

fn check_catalog_item(record: &serde_json::Value) -> Result<(), String> {
    let item: CatalogItem =
        serde_json::from_value(record.clone()).map_err(|e| format!("not a catalog item: {e}"))?;
    check_item(&item)
}

fn check_distributor_record(record: &serde_json::Value) -> Result<(), String> {
    let distributor: Distributor =
        serde_json::from_value(record.clone()).map_err(|e| format!("not a distributor: {e}"))?;
    check_distributor(&distributor)
}

pub struct RecordDomain {
    kind: RecordKind,
    store: CopyStore,
}

impl RecordDomain {
    /// The copy of `kind`'s domain in `region` (`None`: the primary).
    pub async fn open(
        settings: &Settings,
        kind: RecordKind,
        region: Option<&str>,
    ) -> anyhow::Result<RecordDomain> {
        let store = CopyStore::open(settings, kind.domain, region).await?;
        Ok(RecordDomain { kind, store })
    }
}

impl DomainService for RecordDomain {
    fn copy(&self) -> DomainCopy {
        self.store.copy
    }

    async fn answer(&self, request: Request<'_>) -> Result<serde_json::Value, DomainError> {
        let unavailable = |e: sqlx::Error| DomainError::Unavailable(e.into());
        let domain = self.kind.domain;
        if let Ok(asked) = serde_json::from_slice::<CopyRequest>(request.body) {
            return self.store.answer(&request, asked, self.kind.key_of).await;
        }
        match parse::<RecordRequest>(request.body)? {
            RecordRequest::Get { id } => {
                check_id(self.kind.key, &id).map_err(DomainError::Refused)?;
                self.store.get_marked(&id).await?.ok_or_else(|| {
                    DomainError::Refused(format!("no {domain} record {id} at {}", self.store.copy.label()))
                })
            }
            RecordRequest::List { after, limit } => {
                let page =
                    self.store.docs.list(after.as_deref(), page_size(limit)).await.map_err(unavailable)?;
                Ok(serde_json::json!({ "records": page }))
            }
            RecordRequest::Put { record } => {
                if self.store.is_replica() {
                    return Err(self.store.refuse_write());
                }
                if request.access != Access::Write {
                    return Err(DomainError::Refused(format!(
                        "refused: {} may not change the {domain} domain (only the back office or the operator may)",
                        shared::text::escaped(request.caller)
                    )));
                }
                (self.kind.check)(&record).map_err(DomainError::Refused)?;
                let key = (self.kind.key_of)(&record);
                self.store.write(&request, &key, |_| Ok(record)).await
            }
        }
    }

    async fn prepare(&self, publisher: &Publisher) -> anyhow::Result<()> {
        self.store.prepare(publisher).await
    }

    async fn apply(&self, ctx: &NodeContext, publisher: &Publisher, delivery: Delivery) {
        self.store.apply(ctx, publisher, delivery).await
    }

    async fn tick(&self, _ctx: &NodeContext, publisher: &Publisher) {
        self.store.tick(publisher).await
    }

    fn feed_queue(&self) -> Option<String> {
        self.store.feed_queue()
    }

    fn part_changed(&self) -> bool {
        self.store.part_changed()
    }
}

/// The catalog's process, on the broker until `shutdown` (its binary's
/// run, boxed in this crate: see `workers::process`).
pub fn run_catalog(
    settings: Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    run_records(settings, shutdown, CATALOG)
}

/// The distributor domain's process, as [`run_catalog`].
pub fn run_distributor(
    settings: Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    run_records(settings, shutdown, DISTRIBUTOR)
}

fn run_records(
    settings: Settings,
    shutdown: tokio_util::sync::CancellationToken,
    kind: RecordKind,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        let domain =
            std::sync::Arc::new(RecordDomain::open(&settings, kind, settings.region.as_deref()).await?);
        transport::domain::run_domain(settings, domain, shutdown).await
    })
}
