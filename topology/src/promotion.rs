//! Which copy of a replicated domain is its primary, as the broker carries
//! it. The domains table names each domain's first primary; when an
//! operator promotes a replica (`orderflow domains promote`), the
//! domain's routing key (`domain.<domain>`) moves to the promoted copy's
//! queue, the promoted copy's feed leaves the change stream, and every
//! copy's user gets the rights of its new part (only the primary may send
//! on the stream: the broker fences the others). The promotion is kept in
//! a global runtime parameter of the broker (`orderflow-primaries:<vhost>`),
//! so `topology apply` run again keeps it instead of undoing it.
//!
//! The copies themselves keep their epochs (`workers::domains::epochs`).

use crate::management::Management;
use crate::permissions::{acting_grant, Role};
use crate::{DomainCopy, DOMAINS_EXCHANGE, DOMAIN_CHANGES_EXCHANGE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A promoted copy of a domain and the epoch it was promoted at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    /// The copy's label (`catalog@uk`).
    pub copy: String,
    pub epoch: i64,
}

/// The broker's global parameter that keeps a stack's promotions.
pub fn parameter_name(vhost: &str) -> String {
    crate::management::promotions_parameter(vhost)
}

/// The copy of `domain` labelled `label`.
pub fn copy_labelled(domain: &str, label: &str) -> Option<DomainCopy> {
    DomainCopy::all().into_iter().find(|copy| copy.domain == domain && copy.label() == label)
}

/// The promotions of the stack on `vhost`, by domain.
pub async fn promoted(management: &Management, vhost: &str) -> anyhow::Result<BTreeMap<String, Promoted>> {
    match management.global_parameter(&parameter_name(vhost)).await? {
        Some(value) => Ok(serde_json::from_value(value)?),
        None => Ok(BTreeMap::new()),
    }
}

/// Keeps `primary` as its domain's promoted primary at `epoch`.
pub async fn record(
    management: &Management,
    vhost: &str,
    primary: DomainCopy,
    epoch: i64,
) -> anyhow::Result<()> {
    let mut all = promoted(management, vhost).await?;
    all.insert(primary.domain.to_string(), Promoted { copy: primary.label(), epoch });
    management.set_global_parameter(&parameter_name(vhost), &serde_json::to_value(all)?).await
}

/// Points `primary`'s domain at it: the domain's routing key reaches its
/// queue alone (taken from the others first: a write finds no queue for a
/// moment rather than two primaries), its feed leaves the stream and the
/// other replicas' feeds are on it, and each copy's user (those that exist:
/// a stack of one user has none) gets the rights of its part.
pub async fn route_to(
    management: &Management,
    vhost: &str,
    user_prefix: &str,
    primary: DomainCopy,
) -> anyhow::Result<()> {
    let domain = primary.domain;
    let copies: Vec<DomainCopy> =
        DomainCopy::all().into_iter().filter(|copy| copy.domain == domain).collect();
    let key = DomainCopy::primary(domain).routing_key();
    for copy in copies.iter().filter(|copy| **copy != primary) {
        management.unbind(vhost, DOMAINS_EXCHANGE, &copy.queue(), &key).await?;
    }
    management.bind(vhost, DOMAINS_EXCHANGE, &primary.queue(), &key).await?;
    for copy in copies.iter().filter(|copy| copy.region.is_some()) {
        let feed = copy.feed_queue().expect("a replica has a feed");
        match *copy == primary {
            true => management.unbind(vhost, DOMAIN_CHANGES_EXCHANGE, &feed, domain).await?,
            false => management.bind(vhost, DOMAIN_CHANGES_EXCHANGE, &feed, domain).await?,
        }
    }
    for copy in &copies {
        let user = Role::Domain(*copy).user(user_prefix, vhost);
        if management.user_exists(&user).await? {
            management.set_grant(vhost, &user, &acting_grant(*copy, primary)).await?;
        }
    }
    Ok(())
}

/// `topology apply` run again: every recorded promotion routed as before.
pub async fn reapply(management: &Management, vhost: &str, user_prefix: &str) -> anyhow::Result<usize> {
    let all = promoted(management, vhost).await?;
    for (domain, promoted) in &all {
        let primary = copy_labelled(domain, &promoted.copy).ok_or_else(|| {
            anyhow::anyhow!("the recorded primary {} of {domain} is no copy of it", promoted.copy)
        })?;
        route_to(management, vhost, user_prefix, primary).await?;
    }
    Ok(all.len())
}
