//! The event types page: the catalog a tenant sees, the built-in types and its own, grouped
//! by category, each with its description, the JSON Schema its `data` must match and the
//! sample a test sends (`service::event_types::list`, which any token of the tenant may
//! read). The tenant's own types come first; a search (a GET form) narrows the list by name.
//! Schemas and samples open in a `<details>`, so the page stays short.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::pages::{self, Frame, Section};
use super::session::Signed;
use super::{Refusal, html as page, paths};
use crate::catalog::EventType;
use crate::service::{Service, event_types};

#[derive(Deserialize)]
pub(super) struct Search {
    #[serde(default)]
    q: String,
}

/// `GET /tenants/{tenant}/event-types?q=...`
pub(super) async fn list(
    State(service): State<Service>,
    signed: Signed,
    Path(tenant): Path<String>,
    search: Result<Query<Search>, QueryRejection>,
) -> Result<Response, Refusal> {
    let Query(search) = search.map_err(|r| Refusal::BadForm(r.body_text()))?;
    let caller = signed.on_tenant(&service, &tenant).await?;
    let all = event_types::list(&service, &caller, None).await?;
    let q = search.q.trim().to_lowercase();
    let shown: Vec<EventType> = all
        .iter()
        .filter(|t| {
            q.is_empty()
                || t.name.to_lowercase().contains(&q)
                || t.category.to_lowercase().contains(&q)
        })
        .cloned()
        .collect();
    let frame = signed.frame(&service, &caller.tenant_id).await;
    Ok(page(
        StatusCode::OK,
        types_page(&frame, &all, &shown, search.q.trim()),
    ))
}

/// The types by category, categories in name order, types in name order within each.
fn by_category(types: &[EventType]) -> Vec<(&str, Vec<&EventType>)> {
    let mut groups: std::collections::BTreeMap<&str, Vec<&EventType>> = Default::default();
    for t in types {
        groups.entry(t.category.as_str()).or_default().push(t);
    }
    groups
        .into_iter()
        .map(|(category, mut types)| {
            types.sort_by(|a, b| a.name.cmp(&b.name));
            (category, types)
        })
        .collect()
}

fn json_text(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn types_page(frame: &Frame, all: &[EventType], shown: &[EventType], q: &str) -> Markup {
    let own_count = all.iter().filter(|t| t.custom).count();
    let own: Vec<&EventType> = shown.iter().filter(|t| t.custom).collect();
    let builtin: Vec<EventType> = shown.iter().filter(|t| !t.custom).cloned().collect();
    pages::layout(
        "Event types",
        frame,
        Section::EventTypes,
        html! {
            h1 { "Event types" }
            p {
                "The types this tenant's events may have: " (all.len() - own_count) " built in, "
                (own_count) " of its own. Define one with " code { "POST /v1/event-types" } "."
            }
            form.filters method="get" action=(paths::event_types(&frame.tenant_id)) {
                div.field {
                    label for="type-search" { "Search" }
                    input #type-search type="search" name="q" value=(q) placeholder="user.created";
                }
                button type="submit" { "Search" }
            }
            @if shown.is_empty() {
                p.empty { "No event type matches." }
            }
            @if !own.is_empty() {
                section aria-labelledby="own-types-heading" {
                    h2 #own-types-heading { "This tenant's own types" }
                    (type_list(&own))
                }
            }
            @for (category, types) in by_category(&builtin) {
                section aria-label=(category) {
                    h2 title=(category) { (category) }
                    (type_list(&types))
                }
            }
        },
    )
}

fn type_list(types: &[&EventType]) -> Markup {
    html! {
        ul.types {
            @for t in types {
                li {
                    p.type-name {
                        code title=(t.name) { (t.name) }
                        @if t.custom { " " span.badge.custom { (t.category) } }
                    }
                    @if !t.description.is_empty() {
                        p.description { (t.description) }
                    }
                    details {
                        summary { "Schema and sample of " (t.name) }
                        h3 { "Schema" }
                        @match &t.schema {
                            Some(schema) => { pre.data { code { (json_text(schema)) } } }
                            None => { p.muted { "None: any JSON is accepted as its data." } }
                        }
                        h3 { "Sample data" }
                        pre.data { code { (json_text(&t.sample_data)) } }
                    }
                }
            }
        }
    }
}
