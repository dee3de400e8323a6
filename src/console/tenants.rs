//! The platform's pages: every tenant, the forms that create and rename one, and the picker
//! that switches the tenant the pages are about. A tenant token is refused them all
//! (`service::tenants` needs a platform token).

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::pages::TenantForms;
use super::session::{Signed, bad_form};
use super::{Refusal, html, pages, paths, see_other};
use crate::api::ApiError;
use crate::service::{self, Service, tenants};

/// `GET /tenants`
pub(super) async fn list(
    State(service): State<Service>,
    signed: Signed,
) -> Result<Response, Refusal> {
    tenants_page(&service, &signed, TenantForms::default(), StatusCode::OK).await
}

async fn tenants_page(
    service: &Service,
    signed: &Signed,
    forms: TenantForms,
    status: StatusCode,
) -> Result<Response, Refusal> {
    let tenants = tenants::list(service, &signed.caller).await?;
    let frame = signed.frame(service, &signed.caller.tenant_id).await;
    Ok(html(status, pages::tenants(&frame, &tenants, &forms)))
}

#[derive(Deserialize)]
pub(super) struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    id: String,
}

/// `POST /tenants`: creates a tenant, then shows its (empty) streams; a refusal shows the
/// form again with what was typed and the reason beside the field it concerns.
pub(super) async fn create(
    State(service): State<Service>,
    signed: Signed,
    form: Result<Form<CreateForm>, FormRejection>,
) -> Result<Response, Refusal> {
    let Form(form) = form.map_err(bad_form)?;
    signed.check_csrf(&form.csrf)?;
    let id = form.id.trim();
    let new = tenants::NewTenant {
        name: form.name.trim().to_string(),
        id: (!id.is_empty()).then(|| id.to_string()),
    };
    match tenants::create(&service, &signed.caller, new).await {
        Ok(tenant) => Ok(see_other(&paths::streams(&tenant.id))),
        Err(e) if !refused_input(&e) => Err(e.into()),
        Err(e) => {
            let message = e.to_string();
            let status = ApiError::from(e).status;
            let mut forms = TenantForms {
                new_name: form.name,
                new_id: form.id,
                ..TenantForms::default()
            };
            if message.starts_with("`name`") {
                forms.new_name_error = Some(message);
            } else {
                forms.new_id_error = Some(message);
            }
            tenants_page(&service, &signed, forms, status).await
        }
    }
}

#[derive(Deserialize)]
pub(super) struct RenameForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

/// `POST /tenants/{tenant}/rename`
pub(super) async fn rename(
    State(service): State<Service>,
    signed: Signed,
    Path(tenant): Path<String>,
    form: Result<Form<RenameForm>, FormRejection>,
) -> Result<Response, Refusal> {
    let Form(form) = form.map_err(bad_form)?;
    signed.check_csrf(&form.csrf)?;
    match tenants::rename(&service, &signed.caller, &tenant, form.name.trim()).await {
        Ok(_) => Ok(see_other("/tenants")),
        Err(e) if !refused_input(&e) => Err(e.into()),
        Err(e) => {
            let message = e.to_string();
            let status = ApiError::from(e).status;
            let forms = TenantForms {
                rename: Some((tenant, form.name, message)),
                ..TenantForms::default()
            };
            tenants_page(&service, &signed, forms, status).await
        }
    }
}

/// A refusal of what was typed, to show beside the form; any other is a page of its own.
fn refused_input(e: &service::Error) -> bool {
    matches!(e, service::Error::Invalid(_) | service::Error::Conflict(_))
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
