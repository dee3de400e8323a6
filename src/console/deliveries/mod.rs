//! A stream's deliveries in the console: the list with its filters (status, event type, a
//! time range) and the service's cursor for paging, one delivery with each attempt's
//! request (rebuilt from the event, credentials masked) and answer, and redelivery of one
//! delivery or, after a dry-run count, of every delivery the filters match. Each calls the
//! API's own operation in `service::deliveries`; this module reads the forms, says what is
//! wrong with them beside the field concerned, and shows the pages (`pages`).

mod pages;

pub(super) use pages::table;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::session::{Signed, bad_form};
use super::{Bound, Refusal, html, paths, see_other, typed_time};
use crate::api::ApiError;
use crate::service::deliveries::{self, SentRequests};
use crate::service::{self, Caller, Service, streams};
use crate::store::{DeliveryStatus, DeliveryView, Page};
use pages::{DeliveryPage, FieldErrors, ListPage, Redelivery};

/// Deliveries one page of the list shows.
const PAGE_SIZE: usize = 50;

/// The statuses a delivery can have, in the order the filter offers them.
const STATUSES: [DeliveryStatus; 4] = [
    DeliveryStatus::Pending,
    DeliveryStatus::Succeeded,
    DeliveryStatus::Failed,
    DeliveryStatus::Cancelled,
];

/// The list's filters as a person typed them, kept to show them again as they were.
#[derive(Debug, Default, Clone)]
struct Filters {
    statuses: Vec<String>,
    event_type: String,
    from: String,
    to: String,
}

impl Filters {
    /// Reads the filter fields of a query string or form; other fields are the caller's.
    fn read(pairs: &[(String, String)]) -> Filters {
        let mut filters = Filters::default();
        for (name, value) in pairs {
            match name.as_str() {
                "status" if !value.is_empty() => filters.statuses.push(value.clone()),
                "event_type" => filters.event_type = value.clone(),
                "from" => filters.from = value.clone(),
                "to" => filters.to = value.clone(),
                _ => {}
            }
        }
        filters
    }

    fn is_empty(&self) -> bool {
        self.statuses.is_empty()
            && self.event_type.trim().is_empty()
            && self.from.trim().is_empty()
            && self.to.trim().is_empty()
    }

    /// The filters as query parameters, to carry them over in links and forms.
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut pairs: Vec<(&'static str, &str)> = self
            .statuses
            .iter()
            .map(|s| ("status", s.as_str()))
            .collect();
        for (name, value) in [
            ("event_type", &self.event_type),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if !value.trim().is_empty() {
                pairs.push((name, value));
            }
        }
        pairs
    }

    /// The service's filter, or what is wrong with each field in words a person reads.
    /// Times may leave out their offset (UTC, as the page says) and their seconds.
    fn check(&self) -> Result<deliveries::Filter, FieldErrors> {
        let mut errors = FieldErrors::default();
        if let Some(bad) = self
            .statuses
            .iter()
            .find(|s| DeliveryStatus::parse(s).is_none())
        {
            errors.status = Some(format!(
                "“{bad}” is not a delivery status: choose among pending, succeeded, failed and \
                 cancelled."
            ));
        }
        let time = |value: &str, bound: Bound| -> Result<Option<String>, String> {
            let value = value.trim();
            if value.is_empty() {
                return Ok(None);
            }
            match typed_time(value, bound) {
                Some(time) => Ok(Some(time)),
                None => Err(format!(
                    "Herald cannot read “{value}” as a time: write it like \
                     2026-11-30T15:00:00Z or 2026-11-30 15:00 (both UTC), or with an offset \
                     such as 2026-11-30T16:00:00+01:00."
                )),
            }
        };
        let from = time(&self.from, Bound::Start).unwrap_or_else(|e| {
            errors.from = Some(e);
            None
        });
        let to = time(&self.to, Bound::End).unwrap_or_else(|e| {
            errors.to = Some(e);
            None
        });
        if let (Some(from), Some(to)) = (&from, &to)
            && crate::event::parse_time(from) > crate::event::parse_time(to)
        {
            errors.to = Some("This is before the “From” time, so nothing could match.".into());
        }
        if errors.any() {
            return Err(errors);
        }
        Ok(deliveries::Filter {
            statuses: self.statuses.clone(),
            event_types: self
                .event_type
                .split([',', ' '])
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            date_from: from,
            date_to: to,
        })
    }
}

/// Where a service refusal about a filter belongs: beside the field it names. The console
/// checks times and statuses itself; what reaches here are the service's own limits (how
/// many event types one filter may name).
fn place_filter_error(err: &service::Error, errors: &mut FieldErrors) -> bool {
    let service::Error::Invalid(message) = err else {
        return false;
    };
    let field = if message.contains("event_types") {
        &mut errors.event_type
    } else if message.contains("date_from") {
        &mut errors.from
    } else if message.contains("date_to") {
        &mut errors.to
    } else if message.contains("status") {
        &mut errors.status
    } else {
        return false;
    };
    *field = Some(upper_first(message));
    true
}

fn upper_first(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The `before` of a link to an older page: a page's `next`, as the service gave it.
fn cursor(pairs: &[(String, String)]) -> Result<Option<i64>, Refusal> {
    let Some(cursor) = field(pairs, "before").filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    match cursor.parse::<i64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(Refusal::BadForm(
            "The link to this page of deliveries is not valid: its `before` is not a place in \
             the list."
                .into(),
        )),
    }
}

/// `GET /tenants/{tenant}/streams/{id}/deliveries?status=…&event_type=…&from=…&to=…&before=…`
pub(super) async fn list(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, stream_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Refusal> {
    let caller = signed.on_tenant(&service, &tenant).await?;
    let pairs = query_pairs(query.as_deref());
    let before = cursor(&pairs)?;
    let queued = field(&pairs, "queued").and_then(|n| n.parse().ok());
    let state = ListState {
        filters: Filters::read(&pairs),
        before,
        redelivery: queued.map(Redelivery::Queued),
        ..ListState::default()
    };
    list_page(&service, &signed, &caller, &stream_id, state).await
}

/// `POST /tenants/{tenant}/streams/{id}/deliveries/redeliver`: with the list's filters,
/// counts the deliveries they match (a dry run, changing nothing) and asks to confirm; with
/// `confirm`, queues them again and goes back to the list.
pub(super) async fn redeliver(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, stream_id)): Path<(String, String)>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, Refusal> {
    let Form(pairs) = form.map_err(bad_form)?;
    signed.check_csrf(field(&pairs, "csrf").unwrap_or_default())?;
    let caller = signed.on_tenant(&service, &tenant).await?;
    let filters = Filters::read(&pairs);
    let confirm = field(&pairs, "confirm") == Some("yes");
    let mut state = ListState {
        filters: filters.clone(),
        ..ListState::default()
    };
    let mut filter = match filters.check() {
        Ok(filter) => filter,
        Err(errors) => {
            state.errors = errors;
            return list_page(&service, &signed, &caller, &stream_id, state).await;
        }
    };
    let now = service.clock.now_ms();
    if confirm {
        // Only what the dry run counted: not a delivery made since, which the button's count
        // did not include.
        filter.date_to = counted_before(filter.date_to.take(), field(&pairs, "counted_before"));
    }
    match deliveries::redeliver(&service, &caller, &stream_id, filter, !confirm).await {
        Ok(done) if done.dry_run => {
            state.redelivery = Some(Redelivery::Matched(
                done.matched,
                crate::event::format_time(now + 1),
            ));
            list_page(&service, &signed, &caller, &stream_id, state).await
        }
        Ok(done) => {
            let mut pairs = filters.pairs();
            let queued = done.queued.to_string();
            pairs.push(("queued", &queued));
            let path = with_query(
                &paths::stream_deliveries(&caller.tenant_id, &stream_id),
                &pairs,
            );
            Ok(see_other(&path))
        }
        Err(e @ (service::Error::NotFound { .. } | service::Error::Store(_))) => Err(e.into()),
        Err(e) => {
            if place_filter_error(&e, &mut state.errors) {
                state.status = StatusCode::BAD_REQUEST;
            } else {
                state.redeliver_error = Some(upper_first(&e.to_string()));
                state.status = ApiError::from(e).status;
            }
            list_page(&service, &signed, &caller, &stream_id, state).await
        }
    }
}

/// The earlier of the filters' end and the dry run's time (each RFC 3339, the end
/// exclusive); a time that does not parse is left for the service to refuse.
fn counted_before(date_to: Option<String>, counted: Option<&str>) -> Option<String> {
    let parse = |t: &str| crate::service::parse_time("date_to", t).ok();
    match (date_to, counted) {
        (None, counted) => counted.map(String::from),
        (Some(to), Some(counted)) => match (parse(&to), parse(counted)) {
            (Some(a), Some(b)) if b < a => Some(counted.to_string()),
            _ => Some(to),
        },
        (to, None) => to,
    }
}

/// `path` with the query `pairs`.
fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return path.to_string();
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{path}?{query}")
}

/// What the list page shows beside the deliveries.
#[derive(Default)]
struct ListState {
    filters: Filters,
    before: Option<i64>,
    errors: FieldErrors,
    redelivery: Option<Redelivery>,
    redeliver_error: Option<String>,
    /// The answer's status when not 200 (a refused form).
    status: StatusCode,
}

async fn list_page(
    service: &Service,
    signed: &Signed,
    caller: &Caller,
    stream_id: &str,
    mut state: ListState,
) -> Result<Response, Refusal> {
    let stream_name = stream_name(service, caller, stream_id).await?;
    let mut list_error = None;
    let mut deliveries = None;
    if !state.errors.any() {
        match state.filters.check() {
            Err(errors) => state.errors = errors,
            Ok(filter) => {
                match deliveries::list(service, caller, stream_id, filter, PAGE_SIZE, state.before)
                    .await
                {
                    Ok(page) => deliveries = Some(page),
                    Err(e @ service::Error::MissingScope(_)) => {
                        state.status = StatusCode::FORBIDDEN;
                        list_error = Some(upper_first(&e.to_string()));
                    }
                    Err(e) => {
                        if !place_filter_error(&e, &mut state.errors) {
                            return Err(e.into());
                        }
                    }
                }
            }
        }
    }
    if state.errors.any() && state.status == StatusCode::OK {
        state.status = StatusCode::BAD_REQUEST;
    }
    let tenant = &caller.tenant_id;
    let list_path = paths::stream_deliveries(tenant, stream_id);
    let pairs = state.filters.pairs();
    let older = deliveries.as_ref().and_then(|page: &Page<DeliveryView>| {
        page.next.map(|next| {
            let next = next.to_string();
            let mut pairs = pairs.clone();
            pairs.push(("before", &next));
            with_query(&list_path, &pairs)
        })
    });
    let newest = state
        .before
        .is_some()
        .then(|| with_query(&list_path, &pairs));
    let page = ListPage {
        stream_id,
        stream_name: &stream_name,
        filters: &state.filters,
        filtered: !state.filters.is_empty(),
        errors: &state.errors,
        list_error: list_error.as_deref(),
        deliveries: deliveries.as_ref().map(|p| p.items.as_slice()),
        older: older.as_deref(),
        newest: newest.as_deref(),
        redelivery: state.redelivery,
        redeliver_error: state.redeliver_error.as_deref(),
    };
    let frame = signed.frame(service, tenant).await;
    Ok(html(state.status, pages::list(&frame, &page)))
}

/// The stream's name for a page's heading; its id when the token may not read streams.
async fn stream_name(service: &Service, caller: &Caller, id: &str) -> Result<String, Refusal> {
    match streams::get(service, caller, id).await {
        Ok(stream) => Ok(stream.name),
        Err(service::Error::MissingScope(_)) => Ok(id.to_string()),
        Err(e) => Err(e.into()),
    }
}

/// `GET /tenants/{tenant}/deliveries/{id}`: one delivery, each attempt's request and answer.
pub(super) async fn show(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Refusal> {
    let caller = signed.on_tenant(&service, &tenant).await?;
    let pairs = query_pairs(query.as_deref());
    let queued = field(&pairs, "queued").and_then(|n| n.parse().ok());
    delivery_page(
        &service,
        &signed,
        &caller,
        &id,
        StatusCode::OK,
        queued,
        None,
    )
    .await
}

#[derive(serde::Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /tenants/{tenant}/deliveries/{id}/redeliver`: queues the delivery's event to its
/// stream again, as `POST /v1/event-streams/{id}/redeliver/{event_id}` does.
pub(super) async fn redeliver_one(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, id)): Path<(String, String)>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, Refusal> {
    let Form(form) = form.map_err(bad_form)?;
    signed.check_csrf(&form.csrf)?;
    let caller = signed.on_tenant(&service, &tenant).await?;
    let delivery = deliveries::get(&service, &caller, &id).await?;
    let result =
        deliveries::redeliver_event(&service, &caller, &delivery.stream_id, &delivery.event_id)
            .await;
    match result {
        Ok(queued) => {
            let path = with_query(
                &paths::delivery(&caller.tenant_id, &id),
                &[("queued", &queued.to_string())],
            );
            Ok(see_other(&path))
        }
        Err(e @ service::Error::Store(_)) => Err(e.into()),
        Err(e) => {
            let message = upper_first(&e.to_string());
            let status = ApiError::from(e).status;
            delivery_page(&service, &signed, &caller, &id, status, None, Some(message)).await
        }
    }
}

async fn delivery_page(
    service: &Service,
    signed: &Signed,
    caller: &Caller,
    id: &str,
    status: StatusCode,
    queued: Option<u64>,
    redeliver_error: Option<String>,
) -> Result<Response, Refusal> {
    let delivery = deliveries::get(service, caller, id).await?;
    let stream_name = match streams::get(service, caller, &delivery.stream_id).await {
        Ok(stream) => Some(stream.name),
        Err(service::Error::MissingScope(_) | service::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let requests = match deliveries::sent_requests(service, caller, &delivery).await {
        Ok(SentRequests::Rebuilt {
            body,
            attempts,
            erased_at,
        }) => Ok(pages::Requests {
            body,
            attempts,
            erased_at,
        }),
        Ok(SentRequests::Unavailable(why)) => Err(why.to_string()),
        Err(e @ service::Error::MissingScope(_)) => Err(format!(
            "{}, which showing the request needs: it holds the event's data.",
            upper_first(&e.to_string())
        )),
        Err(e) => return Err(e.into()),
    };
    let page = DeliveryPage {
        delivery: &delivery,
        stream_name: stream_name.as_deref(),
        requests,
        queued,
        redeliver_error: redeliver_error.as_deref(),
    };
    let frame = signed.frame(service, &caller.tenant_id).await;
    Ok(html(status, pages::delivery(&frame, &page)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_refused_beside_its_field() {
        let filters = Filters {
            statuses: vec!["failed".into(), "lost".into()],
            event_type: "user.created".into(),
            from: "2026-11-30 16:00".into(),
            to: "2026-11-30 15:00".into(),
        };
        let errors = filters.check().unwrap_err();
        assert!(errors.status.unwrap().contains("“lost”"));
        assert!(errors.from.is_none());
        assert!(errors.to.unwrap().contains("before the “From” time"));
        let filters = Filters {
            event_type: "user.created, user.deleted".into(),
            from: "2026-11-30".into(),
            ..Filters::default()
        };
        let filter = filters.check().unwrap();
        assert_eq!(filter.event_types, ["user.created", "user.deleted"]);
        assert_eq!(filter.date_from.as_deref(), Some("2026-11-30T00:00:00Z"));
    }
}
