//! The platform's pages: every tenant, and the picker that switches the tenant the pages
//! are about. A tenant token is refused both (`service::tenants` needs a platform token).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::session::Signed;
use super::{Refusal, html, pages, paths, see_other};
use crate::service::{Service, tenants};

/// `GET /tenants`
pub(super) async fn list(
    State(service): State<Service>,
    signed: Signed,
) -> Result<Response, Refusal> {
    let tenants = tenants::list(&service, &signed.caller).await?;
    let frame = signed.frame(&service, &signed.caller.tenant_id).await;
    Ok(html(StatusCode::OK, pages::tenants(&frame, &tenants)))
}

#[derive(Deserialize)]
pub(super) struct Switch {
    #[serde(default)]
    tenant: String,
}

/// `GET /switch-tenant?tenant=...`: the picker's answer, the chosen tenant's streams. Only
/// navigation: the page it leads to checks that the caller may see it.
pub(super) async fn switch(_signed: Signed, Query(switch): Query<Switch>) -> Response {
    let tenant = switch.tenant.trim();
    if tenant.is_empty() {
        return see_other("/tenants");
    }
    see_other(&paths::streams(tenant))
}
