//! `GET /1.0/instances`: standalone, straight from the database and liblxc; in a cluster,
//! each member is asked for the state of the instances it runs (`local_only=1`), in
//! parallel, and an unreachable member's instances are shown with status `Error`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::{Query, State};
use serde::Deserialize;

use super::response::{sync_body, sync_raw};
use super::{ApiError, ApiResult, AppState};
use crate::cluster::member_api;
use crate::db::records::InstanceRecord;
use crate::instance;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    recursion: Option<String>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(rename = "all-projects", default)]
    _all_projects: Option<String>,
    #[serde(default)]
    _project: Option<String>,
    /// Member to member: only the instances on the member asked.
    #[serde(default)]
    local_only: Option<String>,
}

impl ListQuery {
    pub fn level(&self) -> u8 {
        super::recursion_level(self.recursion.as_deref())
    }
}

const MEMBER_LIST_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn list(State(d): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let level = super::recursion_level(q.recursion.as_deref());
    let filter = q
        .filter
        .as_deref()
        .filter(|f| !f.trim().is_empty())
        .map(crate::api::filter::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let here = d.cluster().map(|c| c.name());
    let local_only = q.local_only.is_some();
    let mut remote: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut unreachable: BTreeSet<String> = BTreeSet::new();
    if let (Some(rt), false) = (d.cluster(), local_only) {
        if level > 0 || filter.is_some() {
            let here = rt.name();
            let members: BTreeSet<String> =
                d.db.instances()?
                    .into_iter()
                    .map(|r| r.location)
                    .filter(|l| !l.is_empty() && *l != here)
                    .collect();
            let asks = members.into_iter().map(|m| {
                let rt = rt.clone();
                async move {
                    let got = match rt.member_address(&m) {
                        Some(addr) => member_views(&rt, &addr, level.max(1)).await,
                        None => Err(format!("member {m} has no address")),
                    };
                    (m, got)
                }
            });
            for (member, got) in futures::future::join_all(asks).await {
                match got {
                    Ok(views) => remote.extend(views),
                    Err(e) => {
                        tracing::warn!("listing the instances of member {member}: {e}");
                        unreachable.insert(member);
                    }
                }
            }
        }
    }
    let d2 = d.clone();
    // Views are serialized straight into the response bytes, on the blocking thread; a
    // `serde_json::Value` is made only when a filter or another member needs one.
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let is_here = |r: &InstanceRecord| {
            r.location.is_empty() || here.as_deref().is_none_or(|h| h == r.location)
        };
        let recs: Vec<InstanceRecord> = d2
            .db
            .instances()?
            .into_iter()
            .filter(|r| !local_only || is_here(r))
            .collect();
        if level == 0 && filter.is_none() {
            return sync_body(
                recs.iter()
                    .map(|r| instance::url(&r.name))
                    .collect::<Vec<_>>(),
            );
        }
        let profiles = instance::all_profiles(&d2)?;
        let mixed = !remote.is_empty() || !unreachable.is_empty();
        let (mut urls, mut views, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for rec in &recs {
            let value = if is_here(rec) {
                let v = instance::view_with(&d2, rec, level >= 2, &profiles)?;
                if filter.is_none() && !mixed {
                    if level == 0 {
                        urls.push(instance::url(&rec.name));
                    } else {
                        views.push(v);
                    }
                    continue;
                }
                serde_json::to_value(&v).map_err(ApiError::internal)?
            } else if let Some(v) = remote.get(&rec.name) {
                v.clone()
            } else {
                // Its member did not answer: what the database knows, marked as an error.
                let v = instance::view_with(&d2, rec, false, &profiles)?;
                let mut v = serde_json::to_value(&v).map_err(ApiError::internal)?;
                v["status"] = "Error".into();
                v["status_code"] = 400.into();
                v
            };
            if let Some(f) = &filter {
                if !f.matches(&value) {
                    continue;
                }
            }
            if level == 0 {
                urls.push(instance::url(&rec.name));
            } else {
                values.push(value);
            }
        }
        if level == 0 {
            sync_body(urls)
        } else if !values.is_empty() || mixed || filter.is_some() {
            sync_body(values)
        } else {
            sync_body(views)
        }
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(sync_raw(body))
}

/// Asks the member at `addr` for the views of the instances it runs.
async fn member_views(
    rt: &crate::cluster::member::Member,
    addr: &str,
    level: u8,
) -> Result<BTreeMap<String, serde_json::Value>, String> {
    let path = format!("/1.0/instances?recursion={level}&local_only=1");
    let v = member_api::call_json(
        rt,
        addr,
        axum::http::Method::GET,
        &path,
        None,
        MEMBER_LIST_TIMEOUT,
    )
    .await?;
    let list = v["metadata"].as_array().cloned().unwrap_or_default();
    Ok(list
        .into_iter()
        .filter_map(|i| Some((i["name"].as_str()?.to_string(), i)))
        .collect())
}
