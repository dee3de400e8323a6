//! The event types page: the catalog a tenant sees, the built-in types and its own, grouped
//! by category, each with its description, the JSON Schema its `data` must match and the
//! sample a test sends (`service::event_types::list`, which any token of the tenant may
//! read). Schemas and samples open in a `<details>`, so the page stays short.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::pages::{self, Frame, Section};
use super::session::Signed;
use super::{Refusal, html as page};
use crate::catalog::EventType;
use crate::service::{Service, event_types};

/// `GET /tenants/{tenant}/event-types`
pub(super) async fn list(
    State(service): State<Service>,
    signed: Signed,
    Path(tenant): Path<String>,
) -> Result<Response, Refusal> {
    let caller = signed.on_tenant(&service, &tenant).await?;
    let types = event_types::list(&service, &caller, None).await?;
    let frame = signed.frame(&service, &caller.tenant_id).await;
    Ok(page(StatusCode::OK, types_page(&frame, &types)))
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

fn types_page(frame: &Frame, types: &[EventType]) -> Markup {
    let own = types.iter().filter(|t| t.custom).count();
    pages::layout(
        "Event types",
        frame,
        Section::EventTypes,
        html! {
            h1 { "Event types" }
            p {
                "The types this tenant's events may have: " (types.len() - own) " built in, "
                (own) " of its own. Define one with " code { "POST /v1/event-types" } "."
            }
            @for (category, types) in by_category(types) {
                section aria-label=(category) {
                    h2 title=(category) { (category) }
                    ul.types {
                        @for t in types {
                            li {
                                p.type-name {
                                    code title=(t.name) { (t.name) }
                                    @if t.custom { " " span.badge.custom { "own" } }
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
        },
    )
}
