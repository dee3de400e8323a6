//! The tokens pages: a tenant's API tokens (`/tenants/{tenant}/tokens`, for a platform admin
//! or a token of that tenant with `manage:tokens`) and the platform's own (`/tokens`,
//! platform tokens only), through `service::tokens`, the API's own operations. A token made
//! here has its secret on the answer to the form that made it, once: Herald keeps only its
//! hash, and no later page can show it.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::pages::{self, Frame, Section};
use super::session::Signed;
use super::{Refusal, html as page, paths, see_other};
use crate::api::ApiError;
use crate::service::tokens::{self, CreatedToken, NewToken};
use crate::service::{self, Caller, Scope, Service};
use crate::store::Token;

/// Whose tokens a page is about.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Tenant(&'a str),
    Platform,
}

impl Owner<'_> {
    fn platform(self) -> bool {
        matches!(self, Owner::Platform)
    }

    fn list_path(self) -> String {
        match self {
            Owner::Tenant(tenant) => paths::tokens(tenant),
            Owner::Platform => paths::PLATFORM_TOKENS.to_string(),
        }
    }

    fn revoke_path(self, id: &str) -> String {
        match self {
            Owner::Tenant(tenant) => paths::token_revoke(tenant, id),
            Owner::Platform => paths::platform_token_revoke(id),
        }
    }
}

/// The create form as submitted, and what was wrong with it, beside each field.
#[derive(Default)]
struct TokenForm {
    name: String,
    scopes: Vec<String>,
    name_error: Option<String>,
    scopes_error: Option<String>,
    error: Option<String>,
}

/// `GET /tenants/{tenant}/tokens`
pub(super) async fn list(
    State(service): State<Service>,
    signed: Signed,
    Path(tenant): Path<String>,
) -> Result<Response, Refusal> {
    let caller = signed.on_tenant(&service, &tenant).await?;
    let owner = Owner::Tenant(&caller.tenant_id);
    tokens_page(
        &service,
        &signed,
        &caller,
        owner,
        TokenForm::default(),
        StatusCode::OK,
    )
    .await
}

/// `GET /tokens`: the platform's tokens.
pub(super) async fn platform(
    State(service): State<Service>,
    signed: Signed,
) -> Result<Response, Refusal> {
    let caller = &signed.caller;
    tokens_page(
        &service,
        &signed,
        caller,
        Owner::Platform,
        TokenForm::default(),
        StatusCode::OK,
    )
    .await
}

/// `POST /tenants/{tenant}/tokens`
pub(super) async fn create(
    State(service): State<Service>,
    signed: Signed,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (csrf, form) = read_form(&body);
    signed.check_csrf(&csrf)?;
    let caller = signed.on_tenant(&service, &tenant).await?;
    let owner = Owner::Tenant(&caller.tenant_id);
    create_in(&service, &signed, &caller, owner, form).await
}

/// `POST /tokens`: a platform token.
pub(super) async fn create_platform(
    State(service): State<Service>,
    signed: Signed,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (csrf, form) = read_form(&body);
    signed.check_csrf(&csrf)?;
    create_in(&service, &signed, &signed.caller, Owner::Platform, form).await
}

/// `POST /tenants/{tenant}/tokens/{id}/revoke`
pub(super) async fn revoke(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (csrf, _) = read_form(&body);
    signed.check_csrf(&csrf)?;
    let caller = signed.on_tenant(&service, &tenant).await?;
    tokens::revoke(&service, &caller, &id, false).await?;
    Ok(see_other(&paths::tokens(&caller.tenant_id)))
}

/// `POST /tokens/{id}/revoke`
pub(super) async fn revoke_platform(
    State(service): State<Service>,
    signed: Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (csrf, _) = read_form(&body);
    signed.check_csrf(&csrf)?;
    tokens::revoke(&service, &signed.caller, &id, true).await?;
    Ok(see_other(paths::PLATFORM_TOKENS))
}

/// The CSRF token and the create form's fields. Read by hand: the scopes are a checkbox
/// each, one `scope` field per ticked box.
fn read_form(body: &[u8]) -> (String, TokenForm) {
    let mut csrf = String::new();
    let mut form = TokenForm::default();
    for (key, value) in url::form_urlencoded::parse(body) {
        match &*key {
            "csrf" => csrf = value.into_owned(),
            "name" => form.name = value.into_owned(),
            "scope" => form.scopes.push(value.into_owned()),
            _ => {}
        }
    }
    (csrf, form)
}

async fn create_in(
    service: &Service,
    signed: &Signed,
    caller: &Caller,
    owner: Owner<'_>,
    mut form: TokenForm,
) -> Result<Response, Refusal> {
    let new = NewToken {
        name: form.name.trim().to_string(),
        scopes: form.scopes.clone(),
        platform: owner.platform(),
    };
    match tokens::create(service, caller, new).await {
        Ok(created) => {
            let frame = signed.frame(service, &caller.tenant_id).await;
            Ok(page(StatusCode::OK, created_page(&frame, owner, &created)))
        }
        Err(e @ (service::Error::Store(_) | service::Error::MissingScope(_))) => Err(e.into()),
        Err(e) => {
            let message = e.to_string();
            let status = ApiError::from(e).status;
            if message.starts_with("`name`") {
                form.name_error = Some(message);
            } else if message.contains("scope") {
                form.scopes_error = Some(message);
            } else {
                form.error = Some(message);
            }
            tokens_page(service, signed, caller, owner, form, status).await
        }
    }
}

async fn tokens_page(
    service: &Service,
    signed: &Signed,
    caller: &Caller,
    owner: Owner<'_>,
    form: TokenForm,
    status: StatusCode,
) -> Result<Response, Refusal> {
    let list = tokens::list(service, caller, owner.platform()).await?;
    let frame = signed.frame(service, &caller.tenant_id).await;
    Ok(page(
        status,
        tokens_markup(&frame, caller, owner, &list, &form),
    ))
}

/// The scopes a token made by `caller` for `owner` may hold: those the caller holds, and
/// for a tenant's token none of the platform's.
fn grantable(caller: &Caller, owner: Owner<'_>) -> Vec<Scope> {
    caller
        .scopes
        .iter()
        .copied()
        .filter(|scope| owner.platform() || !scope.platform_only())
        .collect()
}

fn heading(owner: Owner<'_>) -> &'static str {
    match owner {
        Owner::Tenant(_) => "API tokens",
        Owner::Platform => "Platform tokens",
    }
}

fn tokens_markup(
    frame: &Frame,
    caller: &Caller,
    owner: Owner<'_>,
    tokens: &[Token],
    form: &TokenForm,
) -> Markup {
    let title = heading(owner);
    pages::layout(
        title,
        frame,
        Section::Tokens,
        html! {
            h1 { (title) }
            @match owner {
                Owner::Tenant(tenant) => {
                    p {
                        "Tokens of the tenant " code { (tenant) } " call the API on its behalf. "
                        @if caller.is_platform() {
                            a href=(paths::PLATFORM_TOKENS) { "Platform tokens" }
                            " act on every tenant."
                        }
                    }
                }
                Owner::Platform => {
                    p { "Platform tokens act on every tenant." }
                }
            }
            @if tokens.is_empty() {
                p.empty { "No tokens yet." }
            } @else {
                div.scroll {
                    table.tokens {
                        thead {
                            tr {
                                th scope="col" { "Name" }
                                th.wide scope="col" { "ID" }
                                th.wide scope="col" { "Scopes" }
                                th.wide scope="col" { "Created" }
                                th scope="col" { span.visually-hidden { "Actions" } }
                            }
                        }
                        tbody {
                            @for token in tokens {
                                tr {
                                    td.name title=(token.name) { (token.name) }
                                    td.wide { code.id { (token.id) } }
                                    td.wide {
                                        @for (i, scope) in token.scopes.iter().enumerate() {
                                            @if i > 0 { " " }
                                            code { (scope) }
                                        }
                                    }
                                    td.wide { (pages::time(token.created_at)) }
                                    td { (revoke_control(frame, caller, owner, token)) }
                                }
                            }
                        }
                    }
                }
            }
            (create_form(frame, caller, owner, form))
        },
    )
}

/// Revoking asks first: a `<details>` holds the form.
fn revoke_control(frame: &Frame, caller: &Caller, owner: Owner<'_>, token: &Token) -> Markup {
    let own = token.id == caller.token.id;
    html! {
        details.confirm {
            summary { "Revoke" }
            form method="post" action=(owner.revoke_path(&token.id)) {
                input type="hidden" name="csrf" value=(frame.csrf);
                p {
                    "Requests with this token fail from now on, and its console sessions end."
                    @if own { " It is the token of this session: you will be signed out." }
                }
                button.danger type="submit" { "Revoke " (token.name) }
            }
        }
    }
}

fn create_form(frame: &Frame, caller: &Caller, owner: Owner<'_>, form: &TokenForm) -> Markup {
    let scopes = grantable(caller, owner);
    html! {
        section aria-labelledby="new-token-heading" {
            h2 #new-token-heading { "New token" }
            form.stack method="post" action=(owner.list_path()) {
                input type="hidden" name="csrf" value=(frame.csrf);
                @if let Some(error) = &form.error {
                    p #token-error .error role="alert" { (error) }
                }
                label for="token-name" { "Name" }
                input #token-name type="text" name="name" value=(form.name) maxlength="128"
                    required aria-describedby=[form.name_error.as_ref().map(|_| "token-name-error")];
                @if let Some(error) = &form.name_error {
                    p #token-name-error .error role="alert" { (error) }
                }
                fieldset aria-describedby=[form.scopes_error.as_ref().map(|_| "token-scopes-error")] {
                    legend { "Scopes" }
                    @for scope in &scopes {
                        label.check {
                            input type="checkbox" name="scope" value=(scope.as_str())
                                checked[form.scopes.iter().any(|s| s == scope.as_str())];
                            " " (scope.as_str())
                        }
                    }
                    @if let Some(error) = &form.scopes_error {
                        p #token-scopes-error .error role="alert" { (error) }
                    }
                }
                button type="submit" { "Create token" }
            }
        }
    }
}

fn created_page(frame: &Frame, owner: Owner<'_>, created: &CreatedToken) -> Markup {
    pages::layout(
        "Token created",
        frame,
        Section::Tokens,
        html! {
            p.crumbs { a href=(owner.list_path()) { (heading(owner)) } }
            h1 { "Token created" }
            p {
                "Copy the token now: Herald keeps only its hash and cannot show it again. "
                "Send it as " code { "Authorization: Bearer <token>" } "."
            }
            div.card {
                label for="new-token" { "Token" }
                input #new-token .secret type="text" readonly value=(created.secret)
                    spellcheck="false" autocomplete="off";
            }
            dl.settings {
                dt { "Name" } dd.name title=(created.token.name) { (created.token.name) }
                dt { "ID" } dd { code { (created.token.id) } }
                dt { "Scopes" }
                dd {
                    @for (i, scope) in created.token.scopes.iter().enumerate() {
                        @if i > 0 { " " }
                        code { (scope) }
                    }
                }
            }
            p { a href=(owner.list_path()) { "Back to the tokens" } }
        },
    )
}
