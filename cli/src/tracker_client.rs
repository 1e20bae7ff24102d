//! A small client of the tracker's HTTP API, with errors a user can act on.

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shared::settings::Settings;
use std::collections::BTreeMap;
use uuid::Uuid;

pub struct TrackerClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Clone, Debug, serde::Deserialize)]
pub struct OrderStatus {
    pub state: String,
    pub terminal: bool,
}

impl TrackerClient {
    pub fn new(settings: &Settings) -> TrackerClient {
        TrackerClient { base: settings.tracker_url(), http: reqwest::Client::new() }
    }

    fn unreachable(&self) -> String {
        format!("the tracker is not reachable at {} (is it running? see ORDERFLOW_HTTP_ADDR)", self.base)
    }

    async fn parse<T: DeserializeOwned>(&self, response: reqwest::Response) -> anyhow::Result<T> {
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or_default();
            anyhow::bail!("{}", body["error"].as_str().unwrap_or(status.as_str()));
        }
        Ok(response.json().await?)
    }

    pub async fn order(&self, id: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}/orders/{id}", self.base))
            .send()
            .await
            .with_context(|| self.unreachable())?;
        self.parse(response).await
    }

    pub async fn statuses(&self, ids: &[Uuid]) -> anyhow::Result<BTreeMap<String, OrderStatus>> {
        let mut all = BTreeMap::new();
        for chunk in ids.chunks(5000) {
            let response = self
                .http
                .post(format!("{}/orders/status", self.base))
                .json(&serde_json::json!({ "ids": chunk }))
                .send()
                .await
                .with_context(|| self.unreachable())?;
            let found: BTreeMap<String, OrderStatus> = self.parse(response).await?;
            all.extend(found);
        }
        Ok(all)
    }

    pub async fn stats(&self) -> anyhow::Result<Value> {
        let response =
            self.http.get(format!("{}/stats", self.base)).send().await.with_context(|| self.unreachable())?;
        self.parse(response).await
    }
}
