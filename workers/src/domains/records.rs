//! A domain of plain records by key, with no replicas: the catalog (items
//! by SKU) and the distributors (by id, with the SKUs each supplies and
//! their lead times). Reads from anyone in the stack; `put` (seeding,
//! maintenance) from the back office or the operator, once per request.

use super::documents::Documents;
use shared::domains::{
    check_distributor, check_id, check_item, page_size, CatalogItem, CopyStatus, Distributor, RecordRequest,
};
use shared::settings::Settings;
use topology::DomainCopy;
use transport::domain::{parse, Access, DomainError, DomainService, Request};

/// What distinguishes one domain of records from another.
pub struct RecordKind {
    pub domain: &'static str,
    /// The field of a record that is its key.
    pub key: &'static str,
    /// Checks a record to put and says what is wrong.
    pub check: fn(&serde_json::Value) -> Result<(), String>,
}

pub const CATALOG: RecordKind = RecordKind { domain: "catalog", key: "sku", check: check_catalog_item };
pub const DISTRIBUTOR: RecordKind =
    RecordKind { domain: "distributor", key: "distributor_id", check: check_distributor_record };

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
    docs: Documents,
}

impl RecordDomain {
    pub async fn open(settings: &Settings, kind: RecordKind) -> anyhow::Result<RecordDomain> {
        let docs = Documents::open(settings, kind.domain).await?;
        Ok(RecordDomain { kind, docs })
    }
}

impl DomainService for RecordDomain {
    fn copy(&self) -> DomainCopy {
        DomainCopy::primary(self.kind.domain)
    }

    async fn answer(&self, request: Request<'_>) -> Result<serde_json::Value, DomainError> {
        let unavailable = |e: sqlx::Error| DomainError::Unavailable(e.into());
        let domain = self.kind.domain;
        match parse::<RecordRequest>(request.body)? {
            RecordRequest::Get { id } => {
                check_id(self.kind.key, &id).map_err(DomainError::Refused)?;
                self.docs
                    .get(&id)
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| DomainError::Refused(format!("no {domain} record {id}")))
            }
            RecordRequest::List { after, limit } => {
                let page = self.docs.list(after.as_deref(), page_size(limit)).await.map_err(unavailable)?;
                Ok(serde_json::json!({ "records": page }))
            }
            RecordRequest::Put { record } => {
                if request.access != Access::Write {
                    return Err(DomainError::Refused(format!(
                        "refused: {} may not change the {domain} domain (only the back office or the operator may)",
                        shared::text::escaped(request.caller)
                    )));
                }
                (self.kind.check)(&record).map_err(DomainError::Refused)?;
                let key = record[self.kind.key].as_str().unwrap_or_default().to_string();
                let written = self
                    .docs
                    .write(&request.request_key, &key, |_| Ok::<_, String>(record))
                    .await
                    .map_err(DomainError::Unavailable)?
                    .map_err(DomainError::Refused)?;
                Ok(written.record)
            }
            RecordRequest::Status {} => {
                let records = self.docs.count().await.map_err(unavailable)?;
                let (seq, seq_at_ms) = self.docs.head().await.map_err(unavailable)?;
                let status = CopyStatus {
                    copy: domain.into(),
                    role: "primary".into(),
                    records,
                    seq,
                    seq_at_ms,
                    ..Default::default()
                };
                Ok(serde_json::to_value(status).expect("a status serializes"))
            }
        }
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
        let domain = std::sync::Arc::new(RecordDomain::open(&settings, kind).await?);
        transport::domain::run_domain(settings, domain, shutdown).await
    })
}
