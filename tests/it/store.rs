//! The store conformance suite: what every `Store` must do, run against each backend as a
//! test of its own (`store::sqlite::...`, `store::postgres::...`). The PostgreSQL half needs
//! `HERALD_TEST_DATABASE_URL` (each test gets a schema of its own); without it those tests are
//! reported as ignored, never as passed. A new backend joins `conformance!`.

use std::sync::Arc;

use herald::destinations::Destination;
use herald::destinations::webhook::WebhookConfig;
use herald::event::Event;
use herald::secret::{Cipher, Secret, StreamSecret};
use herald::store::postgres::PgStore;
use herald::store::sqlite::SqliteStore;
use herald::store::{
    AttemptRecord, ClaimRequest, ConsoleLink, ConsoleSession, DeliveryFilter, DeliveryStatus,
    Erase, EventFilter, FannedOut, Holding, LogPosition, LogStart, MAX_INLINE_DELIVERIES, Store,
    StoreError, StreamUpdate, Swept, Tenant, Token, hash_token,
};
use herald::stream::{ContentMode, PayloadFormat, RetryPolicy, Stream, StreamStatus, Subscription};
use serde_json::value::RawValue;

use crate::helpers::{Scratch, postgres_database};

const NOW: i64 = 1_700_000_000_000;

/// Each test below, once per backend.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                #[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
                async fn $test() {
                    super::$test(super::postgres().await).await
                }
            )*
        }
    };
}

conformance!(
    closing_a_tenant_stops_what_sends_and_acts_for_it_and_keeps_the_rest_for_deletion,
    deleting_a_tenant_leaves_no_lease_on_its_deliveries,
    a_write_that_fails_leaves_leases_as_they_were,
    retention_keeps_events_only_for_streams_that_still_exist,
    erasure_leaves_only_what_identifies_an_event,
    publishing_is_idempotent_per_tenant_source_and_id,
    only_enabled_and_paused_streams_get_deliveries_and_only_enabled_ones_are_leased,
    a_claim_is_exclusive_until_recorded_released_or_lapsed,
    recorded_outcomes_move_deliveries_through_their_states,
    redelivery_requeues_finished_deliveries_with_a_fresh_budget,
    an_attempt_from_before_a_cancellation_cannot_decide_the_redelivered_round,
    rows_of_one_tenant_are_invisible_to_another,
    a_rotated_secret_signs_beside_the_new_one_until_it_expires,
    the_audit_log_filters_pages_erases_and_sweeps,
    statistics_and_backlog_follow_recorded_attempts,
    a_tenants_activity_gives_each_streams_backlog_and_hourly_outcomes_at_once,
    backlogs_count_the_pending_deliveries_of_enabled_streams_across_tenants,
    skipping_a_backlog_or_deleting_a_stream_cancels_what_is_pending,
    tokens_are_found_by_hash_listed_per_tenant_and_revoked,
    a_batch_of_outcomes_judges_stream_health_as_if_stored_one_by_one,
    a_claim_serves_only_streams_that_are_enabled_now,
    a_failing_stream_is_disabled_only_once_it_has_failed_for_its_period,
    any_destination_kind_round_trips_with_its_content_settings_and_attempt_detail,
    a_large_fan_out_is_created_in_chunks_for_the_streams_subscribed_at_its_publish,
    a_fan_out_wider_than_a_chunk_gives_each_stream_every_event_once,
    stream_names_are_unique_per_tenant_and_earlier_duplicates_keep_working,
    the_event_log_is_read_in_order_from_any_start_and_per_tenant,
    retention_keeps_the_newest_event_so_log_offsets_never_repeat,
    retention_removes_whole_days_and_a_duplicate_is_refused_across_them,
    a_listen_session_is_held_by_one_connection_and_deleted_once_expired,
    console_sessions_serve_while_their_token_is_valid_and_end_with_it,
    a_console_link_is_taken_once_before_it_ends_and_its_sessions_keep_its_grant,
);

struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    /// The embedded store's data directory.
    dir: Option<tempfile::TempDir>,
    database: Option<Scratch>,
}

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &dir.path().join("store.sqlite3"),
        Cipher::from_base64(KEY).unwrap(),
    )
    .unwrap();
    with_tenants(Backend {
        name: "sqlite",
        store: Arc::new(store),
        dir: Some(dir),
        database: None,
    })
    .await
}

async fn postgres() -> Backend {
    let database = postgres_database().await;
    let store = PgStore::connect(&database.url, Cipher::from_base64(KEY).unwrap(), 4)
        .await
        .expect("the PostgreSQL store opens");
    with_tenants(Backend {
        name: "postgres",
        store: Arc::new(store),
        dir: None,
        database: Some(database),
    })
    .await
}

/// Makes the backend's database refuse to insert rows of `table` for which `condition` holds,
/// as a constraint would: a real failure inside a write, to see what a failed write leaves.
async fn refuse_inserts(b: &Backend, table: &str, condition: &str) {
    if let Some(dir) = &b.dir {
        let conn = rusqlite::Connection::open(dir.path().join("store.sqlite3")).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn.execute_batch(&format!(
            "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} WHEN {condition} \
             BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ))
        .unwrap();
    }
    if let Some(database) = &b.database {
        let (client, connection) = herald::store::postgres::parse_url(&database.url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'refused'; END $$; \
                 CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} FOR EACH ROW \
                 WHEN ({condition}) EXECUTE FUNCTION refuse_{table}()"
            ))
            .await
            .unwrap();
    }
}

async fn with_tenants(backend: Backend) -> Backend {
    for tenant in ["ten_a", "ten_b"] {
        backend
            .store
            .create_tenant(Tenant {
                id: tenant.into(),
                name: tenant.into(),
                created_at: NOW,
            })
            .await
            .unwrap();
    }
    backend
}

fn event(id: &str, event_type: &str) -> Event {
    Event {
        id: id.into(),
        source: "/test".into(),
        event_type: event_type.into(),
        time: NOW,
        subject: None,
        datacontenttype: None,
        dataschema: None,
        data: RawValue::from_string("{\"n\":1}".into()).unwrap(),
        extensions: Default::default(),
    }
}

async fn stream(store: &dyn Store, tenant: &str, id: &str, pattern: &str, status: StreamStatus) {
    let stream = Stream {
        tenant_id: tenant.into(),
        id: id.into(),
        name: id.into(),
        status,
        status_reason: None,
        subscriptions: vec![Subscription {
            event_type: pattern.into(),
        }],
        destination: Destination::Webhook(WebhookConfig::new("https://example.com".into(), None)),
        payload_format: PayloadFormat::Cloudevents,
        content_mode: None,
        retry_policy: RetryPolicy::default(),
        max_consecutive_failures: 0,
        disable_after_failing_seconds: 0,
        created_at: NOW,
        updated_at: NOW,
        expires_at: None,
    };
    let secret = StreamSecret {
        secret: Secret::new(herald::ids::signing_secret()),
        created_at: NOW,
        expires_at: None,
    };
    store.create_stream(stream, Some(secret)).await.unwrap();
}

fn request(tenant: &str, stream: &str, limit: usize) -> Vec<ClaimRequest> {
    vec![ClaimRequest {
        tenant_id: tenant.into(),
        stream_id: stream.into(),
        limit,
    }]
}

fn outcome(
    claimed: &herald::store::Claimed,
    status: DeliveryStatus,
    next: Option<i64>,
) -> AttemptRecord {
    AttemptRecord {
        key: claimed.key,
        lease: claimed.lease,
        tenant_id: claimed.tenant_id.clone(),
        stream_id: claimed.stream_id.clone(),
        delivery_id: claimed.id.clone(),
        event_id: claimed.event.id.clone(),
        event_type: claimed.event.event_type.clone(),
        attempt_number: claimed.attempts + 1,
        attempted_at: NOW,
        duration_ms: 3,
        response_status: Some(if status == DeliveryStatus::Succeeded {
            200
        } else {
            500
        }),
        response_body: Some("body".into()),
        error_kind: None,
        error_message: None,
        detail: None,
        status,
        next_attempt_at: next,
        refused: false,
        disable_stream: None,
        max_consecutive_failures: 0,
        disable_after_failing_seconds: 0,
    }
}

async fn publishing_is_idempotent_per_tenant_source_and_id(b: Backend) {
    let store = &*b.store;
    stream(store, "ten_a", "est_a", "user.*", StreamStatus::Enabled).await;
    let first = store
        .publish("ten_a", vec![event("e1", "user.created")], NOW, None)
        .await
        .unwrap();
    let again = store
        .publish("ten_a", vec![event("e1", "user.created")], NOW, None)
        .await
        .unwrap();
    let other = store
        .publish("ten_b", vec![event("e1", "user.created")], NOW, None)
        .await
        .unwrap();
    assert!(
        !first[0].duplicate && again[0].duplicate && !other[0].duplicate,
        "{}",
        b.name
    );
    assert_eq!(first[0].streams, ["est_a"], "{}", b.name);
    assert!(
        again[0].streams.is_empty() && other[0].streams.is_empty(),
        "{}",
        b.name
    );
    assert_eq!(
        store.event_deliveries("ten_a", "e1").await.unwrap().len(),
        1,
        "{}",
        b.name
    );
    assert!(
        store
            .event_deliveries("ten_b", "e1")
            .await
            .unwrap()
            .is_empty(),
        "{}",
        b.name
    );
}

async fn only_enabled_and_paused_streams_get_deliveries_and_only_enabled_ones_are_leased(
    b: Backend,
) {
    let store = &*b.store;
    stream(store, "ten_a", "est_on", "*", StreamStatus::Enabled).await;
    stream(store, "ten_a", "est_paused", "*", StreamStatus::Paused).await;
    stream(store, "ten_a", "est_off", "*", StreamStatus::Disabled).await;
    stream(store, "ten_a", "est_other", "flow.*", StreamStatus::Enabled).await;
    let published = store
        .publish(
            "ten_a",
            vec![event("e1", "user.created")],
            NOW,
            Some(NOW + 60_000),
        )
        .await
        .unwrap();
    let mut streams = published[0].streams.clone();
    streams.sort();
    assert_eq!(streams, ["est_on", "est_paused"], "{}", b.name);
    let leased: Vec<_> = published[0]
        .leased
        .iter()
        .map(|c| c.stream_id.as_str())
        .collect();
    assert_eq!(leased, ["est_on"], "{}", b.name);
    // Leased at publish: not claimable until recorded, released or lapsed.
    let batch = store
        .claim(request("ten_a", "est_on", 10), NOW, NOW + 60_000)
        .await
        .unwrap();
    assert!(batch[0].deliveries.is_empty(), "{}", b.name);
}

async fn a_claim_is_exclusive_until_recorded_released_or_lapsed(b: Backend) {
    let store = &*b.store;
    stream(store, "ten_a", "est_a", "*", StreamStatus::Enabled).await;
    let events = (0..5)
        .map(|i| event(&format!("e{i}"), "user.created"))
        .collect();
    store.publish("ten_a", events, NOW, None).await.unwrap();

    let first = store
        .claim(request("ten_a", "est_a", 3), NOW, NOW + 1_000)
        .await
        .unwrap();
    assert_eq!(first[0].deliveries.len(), 3, "{}", b.name);
    assert_eq!(first[0].next_due, Some(NOW), "{}: more is due", b.name);
    let second = store
        .claim(request("ten_a", "est_a", 10), NOW, NOW + 1_000)
        .await
        .unwrap();
    assert_eq!(second[0].deliveries.len(), 2, "{}", b.name);
    assert_eq!(
        second[0].next_due,
        Some(NOW + 1_000),
        "{}: nothing else pending but the leased ones, due again when their leases lapse",
        b.name
    );
    let keys: std::collections::HashSet<i64> = first[0]
        .deliveries
        .iter()
        .chain(&second[0].deliveries)
        .map(|d| d.key)
        .collect();
    assert_eq!(keys.len(), 5, "{}: no delivery claimed twice", b.name);

    // Released: claimable again at once. Lapsed: claimable after the lease.
    let released = &first[0].deliveries[0];
    store
        .release(vec![(released.key, released.lease)], NOW)
        .await
        .unwrap();
    let again = store
        .claim(request("ten_a", "est_a", 10), NOW, NOW + 1_000)
        .await
        .unwrap();
    assert_eq!(again[0].deliveries.len(), 1, "{}", b.name);
    assert_eq!(again[0].deliveries[0].key, released.key, "{}", b.name);
    let lapsed = store
        .claim(request("ten_a", "est_a", 10), NOW + 1_001, NOW + 2_000)
        .await
        .unwrap();
    assert_eq!(
        lapsed[0].deliveries.len(),
        5,
        "{}: every lease lapsed",
        b.name
    );
}

async fn recorded_outcomes_move_deliveries_through_their_states(b: Backend) {
    let store = &*b.store;
    stream(store, "ten_a", "est_a", "*", StreamStatus::Enabled).await;
    let events = ["ok", "retry", "fail"]
        .iter()
        .map(|id| event(id, "user.created"))
        .collect();
    store.publish("ten_a", events, NOW, None).await.unwrap();
    let claimed = store
        .claim(request("ten_a", "est_a", 3), NOW, NOW + 60_000)
        .await
        .unwrap();
    let by_id = |id: &str| {
        claimed[0]
            .deliveries
            .iter()
            .find(|d| d.event.id == id)
            .unwrap()
    };
    store
        .record(
            vec![
                outcome(by_id("ok"), DeliveryStatus::Succeeded, None),
                outcome(by_id("retry"), DeliveryStatus::Pending, Some(NOW + 10_000)),
                outcome(by_id("fail"), DeliveryStatus::Failed, None),
            ],
            NOW,
        )
        .await
        .unwrap();
    let status = |id: &'static str| async move {
        let d = store.event_deliveries("ten_a", id).await.unwrap().remove(0);
        (d.status, d.attempts.len(), d.next_attempt_at)
    };
    assert_eq!(
        status("ok").await,
        (DeliveryStatus::Succeeded, 1, None),
        "{}",
        b.name
    );
    assert_eq!(
        status("fail").await,
        (DeliveryStatus::Failed, 1, None),
        "{}",
        b.name
    );
    assert_eq!(
        status("retry").await,
        (DeliveryStatus::Pending, 1, Some(NOW + 10_000)),
        "{}",
        b.name
    );

    let early = store
        .claim(request("ten_a", "est_a", 10), NOW + 9_999, NOW + 60_000)
        .await
        .unwrap();
    assert!(early[0].deliveries.is_empty(), "{}: not due yet", b.name);
    assert_eq!(early[0].next_due, Some(NOW + 10_000), "{}", b.name);
    let due = store
        .claim(request("ten_a", "est_a", 10), NOW + 10_000, NOW + 60_000)
        .await
        .unwrap();
    assert_eq!(due[0].deliveries.len(), 1, "{}", b.name);
    assert_eq!(
        due[0].deliveries[0].attempts, 1,
        "{}: one attempt made before",
        b.name
    );

    let stats = store
        .stats("ten_a", "est_a", NOW - 3_600_000, NOW + 3_600_000)
        .await
        .unwrap();
    let total: (u64, u64, u64) = stats.iter().fold((0, 0, 0), |t, r| {
        (t.0 + r.succeeded, t.1 + r.failed, t.2 + r.attempts)
    });
    assert_eq!(total, (1, 1, 3), "{}", b.name);
}

async fn redelivery_requeues_finished_deliveries_with_a_fresh_budget(b: Backend) {
    let store = &*b.store;
    stream(store, "ten_a", "est_a", "*", StreamStatus::Enabled).await;
    store
        .publish("ten_a", vec![event("e1", "user.created")], NOW, None)
        .await
        .unwrap();
    let claimed = store
        .claim(request("ten_a", "est_a", 1), NOW, NOW + 60_000)
        .await
        .unwrap();
    let d = &claimed[0].deliveries[0];
    store
        .record(vec![outcome(d, DeliveryStatus::Failed, None)], NOW)
        .await
        .unwrap();

    let filter = DeliveryFilter {
        statuses: vec![DeliveryStatus::Failed],
        ..Default::default()
    };
    let counted = store
        .redeliver("ten_a", "est_a", filter.clone(), true, NOW)
        .await
        .unwrap();
    assert_eq!(counted, 1, "{}", b.name);
    assert_eq!(
        store
            .redeliver("ten_a", "est_a", filter, false, NOW)
            .await
            .unwrap(),
        1,
        "{}",
        b.name
    );
    let again = store
        .claim(request("ten_a", "est_a", 1), NOW, NOW + 60_000)
        .await
        .unwrap();
    assert_eq!(
        again[0].deliveries[0].attempts, 0,
        "{}: a fresh retry budget",
        b.name
    );
    assert_eq!(
        store
            .redeliver_event("ten_b", "est_a", "e1", NOW)
            .await
            .unwrap(),
        None,
        "{}: another tenant's event is unknown",
        b.name
    );
}

/// A delivery cancelled while its attempt is under way, then redelivered and claimed again:
/// the old attempt's outcome is kept as an attempt but decides nothing, and the new lease's
/// outcome does. Lease generations never repeat across cancellation and redelivery.
async fn an_attempt_from_before_a_cancellation_cannot_decide_the_redelivered_round(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    stream(store, "ten_a", "est_a", "*", StreamStatus::Enabled).await;
    let published = store
        .publish(
            "ten_a",
            vec![event("c1", "user.created")],
            NOW,
            Some(NOW + 60_000),
        )
        .await
        .unwrap();
    let old = published[0].leased[0].clone();
    let stream_row = store.get_stream("ten_a", "est_a").await.unwrap().unwrap();
    let update = StreamUpdate {
        stream: stream_row,
        skip_backlog: true,
        notices: Vec::new(),
    };
    assert!(store.update_stream(update).await.unwrap().is_some());
    let view = store.get_delivery("ten_a", &old.id).await.unwrap().unwrap();
    assert_eq!(view.status, DeliveryStatus::Cancelled, "{name}");
    assert_eq!(
        store
            .redeliver_event("ten_a", "est_a", "c1", NOW + 1)
            .await
            .unwrap(),
        Some(1),
        "{name}"
    );
    // The old attempt ends before the delivery is claimed again, and again after.
    let late = || async {
        store
            .record(vec![outcome(&old, DeliveryStatus::Failed, None)], NOW + 3)
            .await
            .unwrap();
        let view = store.get_delivery("ten_a", &old.id).await.unwrap().unwrap();
        assert_eq!(
            view.status,
            DeliveryStatus::Pending,
            "{name}: the old attempt decided the new round"
        );
        view.attempts.len()
    };
    assert_eq!(late().await, 1, "{name}: the old attempt is kept");
    let claimed = store
        .claim(request("ten_a", "est_a", 10), NOW + 2, NOW + 60_000)
        .await
        .unwrap();
    assert_eq!(claimed[0].deliveries.len(), 1, "{name}");
    let new = claimed[0].deliveries[0].clone();
    assert_eq!(new.key, old.key, "{name}: the same delivery, queued again");
    assert_ne!(new.lease, old.lease, "{name}: under a new lease");
    assert_eq!(late().await, 2, "{name}");
    store
        .record(
            vec![outcome(&new, DeliveryStatus::Succeeded, None)],
            NOW + 4,
        )
        .await
        .unwrap();
    let view = store.get_delivery("ten_a", &old.id).await.unwrap().unwrap();
    assert_eq!(view.status, DeliveryStatus::Succeeded, "{name}");
    assert_eq!(store.backlog("ten_a", "est_a").await.unwrap().pending, 0);
}

async fn rows_of_one_tenant_are_invisible_to_another(b: Backend) {
    let store = &*b.store;
    stream(store, "ten_a", "est_a", "*", StreamStatus::Enabled).await;
    assert!(
        store.get_stream("ten_b", "est_a").await.unwrap().is_none(),
        "{}",
        b.name
    );
    assert!(
        store.list_streams("ten_b").await.unwrap().is_empty(),
        "{}",
        b.name
    );
    assert!(
        !store.delete_stream("ten_b", "est_a", NOW).await.unwrap(),
        "{}",
        b.name
    );
    assert!(
        store
            .stream_secrets("ten_b", "est_a", NOW)
            .await
            .unwrap()
            .is_empty(),
        "{}",
        b.name
    );
    store
        .publish("ten_a", vec![event("e1", "user.created")], NOW, None)
        .await
        .unwrap();
    assert!(
        store
            .get_event("ten_b", "e1", None)
            .await
            .unwrap()
            .is_none(),
        "{}",
        b.name
    );
    let d = store
        .event_deliveries("ten_a", "e1")
        .await
        .unwrap()
        .remove(0);
    assert!(
        store.get_delivery("ten_b", &d.id).await.unwrap().is_none(),
        "{}",
        b.name
    );
    assert!(
        store.get_delivery("ten_a", &d.id).await.unwrap().is_some(),
        "{}",
        b.name
    );
}

async fn a_rotated_secret_signs_beside_the_new_one_until_it_expires(b: Backend) {
    let store = &*b.store;
    stream(store, "ten_a", "est_a", "*", StreamStatus::Enabled).await;
    let new = StreamSecret {
        secret: Secret::new(herald::ids::signing_secret()),
        created_at: NOW + 1,
        expires_at: None,
    };
    assert!(
        store
            .rotate_secret("ten_a", "est_a", new.clone(), NOW + 1_000)
            .await
            .unwrap()
    );
    let during = store
        .stream_secrets("ten_a", "est_a", NOW + 999)
        .await
        .unwrap();
    assert_eq!(during.len(), 2, "{}", b.name);
    assert_eq!(during[0].secret, new.secret, "{}: newest first", b.name);
    let after = store
        .stream_secrets("ten_a", "est_a", NOW + 1_000)
        .await
        .unwrap();
    assert_eq!(after.len(), 1, "{}", b.name);
    assert!(
        !store
            .rotate_secret("ten_a", "est_missing", new, NOW)
            .await
            .unwrap(),
        "{}",
        b.name
    );
}

async fn the_audit_log_filters_pages_erases_and_sweeps(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    stream(store, "ten_a", "est_a", "user.*", StreamStatus::Enabled).await;
    let mut personal = event("p1", "user.created");
    personal.subject = Some("usr_1".into());
    personal.extensions = serde_json::from_str(r#"{"userid":"u1","projectid":"prj"}"#).unwrap();
    let events = vec![
        personal,
        event("p2", "user.deleted"),
        event("p3", "role.created"),
    ];
    store.publish("ten_a", events, NOW, None).await.unwrap();

    let all = store
        .list_events("ten_a", EventFilter::default(), None, 2)
        .await
        .unwrap();
    let ids: Vec<_> = all.items.iter().map(|l| l.event.id.as_str()).collect();
    assert_eq!(ids, ["p3", "p2"], "{name}: newest first");
    let rest = store
        .list_events("ten_a", EventFilter::default(), all.next, 2)
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1, "{name}");
    assert!(rest.next.is_none(), "{name}");
    for filter in [
        EventFilter {
            event_type: Some("user.created".into()),
            ..Default::default()
        },
        EventFilter {
            subject: Some("usr_1".into()),
            ..Default::default()
        },
        EventFilter {
            projectid: Some("prj".into()),
            ..Default::default()
        },
        EventFilter {
            userid: Some("u1".into()),
            ..Default::default()
        },
    ] {
        let found = store.list_events("ten_a", filter, None, 10).await.unwrap();
        assert_eq!(found.items.len(), 1, "{name}");
        assert_eq!(found.items[0].event.id, "p1", "{name}");
    }
    assert!(
        store
            .list_events("ten_b", EventFilter::default(), None, 10)
            .await
            .unwrap()
            .items
            .is_empty(),
        "{name}"
    );

    let erased = store
        .erase("ten_a", Erase::Subject("usr_1".into()), NOW + 5)
        .await
        .unwrap();
    assert_eq!(erased, 1, "{name}");
    let p1 = store.get_event("ten_a", "p1", None).await.unwrap().unwrap();
    assert_eq!(p1.event.data.get(), "null", "{name}");
    assert_eq!(p1.erased_at, Some(NOW + 5), "{name}");
    assert!(p1.event.extensions.is_empty(), "{name}");

    // Retention keeps the store's newest event whatever its age: this one is newer.
    store
        .publish(
            "ten_b",
            vec![event("newest", "role.created")],
            NOW + 10,
            None,
        )
        .await
        .unwrap();
    // p1 and p2 have deliveries pending: only p3 (no stream) may be swept now.
    let swept = store.sweep(Some(NOW + 1), None, 100).await.unwrap();
    assert_eq!(swept.events, 1, "{name}");
    assert!(
        store
            .get_event("ten_a", "p3", None)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    let batch = store
        .claim(request("ten_a", "est_a", 10), NOW, NOW + 60_000)
        .await
        .unwrap();
    let outcomes = batch[0]
        .deliveries
        .iter()
        .map(|c| outcome(c, DeliveryStatus::Succeeded, None))
        .collect();
    store.record(outcomes, NOW).await.unwrap();
    let swept = store
        .sweep(Some(NOW + 1), Some(NOW + 1), 100)
        .await
        .unwrap();
    assert_eq!(
        swept,
        Swept {
            events: 2,
            bodies: 0
        },
        "{name}: their attempts went with them"
    );
    assert!(
        store
            .get_delivery("ten_a", &batch[0].deliveries[0].id)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
}

async fn statistics_and_backlog_follow_recorded_attempts(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    stream(store, "ten_a", "est_a", "*", StreamStatus::Enabled).await;
    let events = vec![event("s1", "user.created"), event("s2", "user.created")];
    store.publish("ten_a", events, NOW, None).await.unwrap();
    let backlog = store.backlog("ten_a", "est_a").await.unwrap();
    assert_eq!(
        (backlog.pending, backlog.oldest_created_at),
        (2, Some(NOW)),
        "{name}"
    );

    let batch = store
        .claim(request("ten_a", "est_a", 10), NOW, NOW + 60_000)
        .await
        .unwrap();
    let [first, second] = &batch[0].deliveries[..] else {
        panic!("{name}: both claimed");
    };
    let mut slow = outcome(second, DeliveryStatus::Pending, Some(NOW + 10_000));
    slow.duration_ms = 700;
    store
        .record(
            vec![outcome(first, DeliveryStatus::Succeeded, None), slow],
            NOW,
        )
        .await
        .unwrap();
    let backlog = store.backlog("ten_a", "est_a").await.unwrap();
    assert_eq!(backlog.pending, 1, "{name}");

    let hour = NOW - NOW % 3_600_000;
    let rows = store
        .stats("ten_a", "est_a", hour, hour + 3_600_000)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{name}");
    let row = &rows[0];
    assert_eq!(
        (row.hour, row.event_type.as_str()),
        (hour, "user.created"),
        "{name}"
    );
    assert_eq!(
        (row.succeeded, row.failed, row.attempts, row.failed_attempts),
        (1, 0, 2, 1),
        "{name}"
    );
    assert_eq!(row.latency[herald::store::latency_bucket(3)], 1, "{name}");
    assert_eq!(row.latency[herald::store::latency_bucket(700)], 1, "{name}");
    assert!(
        store
            .stats("ten_b", "est_a", hour, hour + 3_600_000)
            .await
            .unwrap()
            .is_empty()
    );
}

/// What a list of a tenant's streams shows, read at once: each stream's backlog and its
/// finished deliveries per hour (summed over event types), within the range only, and
/// nothing of another tenant's streams or of a deleted one.
async fn a_tenants_activity_gives_each_streams_backlog_and_hourly_outcomes_at_once(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    const HOUR: i64 = 3_600_000;
    let hour = NOW - NOW % HOUR;
    for id in ["est_one", "est_two", "est_gone"] {
        stream(store, "ten_a", id, "*", StreamStatus::Enabled).await;
    }
    stream(store, "ten_b", "est_other", "*", StreamStatus::Enabled).await;
    let events = vec![
        event("a1", "user.created"),
        event("a2", "order.paid"),
        event("a3", "user.created"),
    ];
    store.publish("ten_a", events, NOW, None).await.unwrap();
    let events = vec![event("b1", "user.created")];
    store.publish("ten_b", events, NOW, None).await.unwrap();

    // est_one: a success and a failure of two event types in one hour, one still pending;
    // est_two: a success an hour later and one two hours before the range; est_gone and
    // ten_b's stream: outcomes that must not show.
    let mut records = Vec::new();
    for (tenant, id) in [
        ("ten_a", "est_one"),
        ("ten_a", "est_two"),
        ("ten_a", "est_gone"),
        ("ten_b", "est_other"),
    ] {
        let batch = store
            .claim(request(tenant, id, 10), NOW, NOW + 60_000)
            .await
            .unwrap();
        let claimed = &batch[0].deliveries;
        match id {
            "est_one" => {
                let by_id = |e: &str| claimed.iter().find(|c| c.event.id == e).unwrap();
                records.push(outcome(by_id("a1"), DeliveryStatus::Succeeded, None));
                records.push(outcome(by_id("a2"), DeliveryStatus::Failed, None));
                records.push(outcome(
                    by_id("a3"),
                    DeliveryStatus::Pending,
                    Some(NOW + 10_000),
                ));
            }
            "est_two" => {
                for (c, at) in claimed.iter().zip([NOW + HOUR, NOW - 3 * HOUR]) {
                    let mut record = outcome(c, DeliveryStatus::Succeeded, None);
                    record.attempted_at = at;
                    records.push(record);
                }
                // Its third event stays pending: the lease is let go below.
            }
            _ => {
                for c in claimed {
                    records.push(outcome(c, DeliveryStatus::Failed, None));
                }
            }
        }
    }
    store.record(records, NOW).await.unwrap();
    let two = store
        .claim(request("ten_a", "est_two", 10), NOW, NOW + 60_000)
        .await
        .unwrap();
    assert!(
        two.iter().all(|b| b.deliveries.is_empty()),
        "{name}: still leased"
    );
    assert!(store.delete_stream("ten_a", "est_gone", NOW).await.unwrap());

    let activity = store
        .stream_activity("ten_a", hour - HOUR, hour + 2 * HOUR)
        .await
        .unwrap();
    let mut backlogs: Vec<_> = activity
        .backlogs
        .iter()
        .map(|(id, b)| (id.as_str(), b.pending, b.oldest_created_at))
        .collect();
    backlogs.sort();
    assert_eq!(
        backlogs,
        [("est_one", 1, Some(NOW)), ("est_two", 1, Some(NOW))],
        "{name}"
    );
    let mut hours: Vec<_> = activity
        .hours
        .iter()
        .map(|(id, hours)| {
            let hours: Vec<_> = hours
                .iter()
                .map(|h| (h.hour, h.succeeded, h.failed))
                .collect();
            (id.as_str(), hours)
        })
        .collect();
    hours.sort();
    assert_eq!(
        hours,
        [
            ("est_one", vec![(hour, 1, 1)]),
            ("est_two", vec![(hour + HOUR, 1, 0)]),
        ],
        "{name}: summed over event types, in range, of existing streams of the tenant"
    );

    let other = store
        .stream_activity("ten_b", hour - HOUR, hour + 2 * HOUR)
        .await
        .unwrap();
    assert_eq!(
        other.hours.get("est_other").map(|h| h.len()),
        Some(1),
        "{name}"
    );
    assert!(other.backlogs.is_empty(), "{name}");
}

/// What the metrics report as the backlog: per enabled stream, every tenant's.
async fn backlogs_count_the_pending_deliveries_of_enabled_streams_across_tenants(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    stream(store, "ten_a", "est_on", "*", StreamStatus::Enabled).await;
    stream(store, "ten_a", "est_paused", "*", StreamStatus::Paused).await;
    stream(store, "ten_b", "est_b", "user.*", StreamStatus::Enabled).await;
    let events = vec![event("e1", "user.created"), event("e2", "user.created")];
    store.publish("ten_a", events, NOW, None).await.unwrap();
    let events = vec![event("e3", "user.created")];
    store
        .publish("ten_b", events, NOW + 5_000, None)
        .await
        .unwrap();
    let batch = store
        .claim(request("ten_a", "est_on", 10), NOW, NOW + 60_000)
        .await
        .unwrap();
    let [first, second] = &batch[0].deliveries[..] else {
        panic!("{name}: both claimed");
    };
    store
        .record(
            vec![
                outcome(first, DeliveryStatus::Succeeded, None),
                outcome(second, DeliveryStatus::Pending, Some(NOW + 10_000)),
            ],
            NOW,
        )
        .await
        .unwrap();

    let mut backlogs: Vec<_> = store
        .backlogs()
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.tenant_id, b.stream_id, b.pending, b.next_due_at))
        .collect();
    backlogs.sort();
    assert_eq!(
        backlogs,
        [
            ("ten_a".into(), "est_on".into(), 1, Some(NOW + 10_000)),
            ("ten_b".into(), "est_b".into(), 1, Some(NOW + 5_000)),
        ],
        "{name}: the paused stream's deliveries wait on an operator, not on Herald"
    );
}

async fn skipping_a_backlog_or_deleting_a_stream_cancels_what_is_pending(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    stream(store, "ten_a", "est_a", "*", StreamStatus::Paused).await;
    stream(store, "ten_a", "est_b", "*", StreamStatus::Enabled).await;
    store
        .publish("ten_a", vec![event("c1", "user.created")], NOW, None)
        .await
        .unwrap();
    let mut enabled = store.get_stream("ten_a", "est_a").await.unwrap().unwrap();
    enabled.status = StreamStatus::Enabled;
    let update = StreamUpdate {
        stream: enabled,
        skip_backlog: true,
        notices: Vec::new(),
    };
    assert!(
        store.update_stream(update).await.unwrap().is_some(),
        "{name}"
    );
    assert!(
        store
            .delete_stream("ten_a", "est_b", NOW + 1)
            .await
            .unwrap(),
        "{name}"
    );
    assert!(
        !store
            .delete_stream("ten_a", "est_b", NOW + 1)
            .await
            .unwrap(),
        "{name}"
    );
    let deliveries = store.event_deliveries("ten_a", "c1").await.unwrap();
    assert_eq!(deliveries.len(), 2, "{name}");
    assert!(
        deliveries
            .iter()
            .all(|d| d.status == DeliveryStatus::Cancelled),
        "{name}"
    );
    let claimed = store
        .claim(
            [request("ten_a", "est_a", 10), request("ten_a", "est_b", 10)].concat(),
            NOW + 2,
            NOW + 60_000,
        )
        .await
        .unwrap();
    assert!(claimed.iter().all(|c| c.deliveries.is_empty()), "{name}");
}

async fn tokens_are_found_by_hash_listed_per_tenant_and_revoked(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    let token = |id: &str, tenant: Option<&str>| Token {
        id: id.into(),
        tenant_id: tenant.map(String::from),
        name: id.into(),
        scopes: vec!["read:events".into()],
        created_at: NOW,
    };
    store
        .put_token(token("tok_p", None), hash_token("platform"))
        .await
        .unwrap();
    store
        .put_token(token("tok_a", Some("ten_a")), hash_token("tenant"))
        .await
        .unwrap();
    assert_eq!(store.count_tokens().await.unwrap(), 2, "{name}");
    let found = store
        .find_token(hash_token("tenant"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.id.as_str(), found.tenant_id.as_deref()),
        ("tok_a", Some("ten_a"))
    );
    assert_eq!(found.scopes, ["read:events"], "{name}");
    assert!(
        store
            .find_token(hash_token("nope"))
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    let platform: Vec<_> = store.list_tokens(None).await.unwrap();
    assert_eq!(platform.len(), 1, "{name}");
    assert_eq!(platform[0].id, "tok_p", "{name}");
    assert!(
        !store
            .revoke_token(Some("ten_b"), "tok_a", NOW)
            .await
            .unwrap(),
        "{name}"
    );
    assert!(
        store
            .revoke_token(Some("ten_a"), "tok_a", NOW)
            .await
            .unwrap(),
        "{name}"
    );
    assert!(
        store
            .find_token(hash_token("tenant"))
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    // Putting the same secret again (a configured admin token at each start) leaves it
    // revoked; a new secret under the same id is a new, valid token.
    store
        .put_token(token("tok_a", Some("ten_a")), hash_token("tenant"))
        .await
        .unwrap();
    assert!(
        store
            .find_token(hash_token("tenant"))
            .await
            .unwrap()
            .is_none(),
        "{name}: a revoked token stays revoked"
    );
    store
        .put_token(token("tok_a", Some("ten_a")), hash_token("renewed"))
        .await
        .unwrap();
    assert!(
        store
            .find_token(hash_token("renewed"))
            .await
            .unwrap()
            .is_some(),
        "{name}"
    );

    // Deleting a tenant takes everything it owns with it.
    stream(store, "ten_b", "est_b", "*", StreamStatus::Enabled).await;
    store
        .publish("ten_b", vec![event("t1", "user.created")], NOW, None)
        .await
        .unwrap();
    assert!(store.delete_tenant("ten_b").await.unwrap(), "{name}");
    assert!(store.get_tenant("ten_b").await.unwrap().is_none(), "{name}");
    assert!(
        store.get_stream("ten_b", "est_b").await.unwrap().is_none(),
        "{name}"
    );
    assert!(
        store
            .get_event("ten_b", "t1", None)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    assert!(!store.delete_tenant("ten_b").await.unwrap(), "{name}");
}

async fn closing_a_tenant_stops_what_sends_and_acts_for_it_and_keeps_the_rest_for_deletion(
    b: Backend,
) {
    let store = &*b.store;
    let name = b.name;
    let token = |id: &str, tenant: &str| Token {
        id: id.into(),
        tenant_id: Some(tenant.into()),
        name: id.into(),
        scopes: vec!["read:events".into()],
        created_at: NOW,
    };
    for tenant in ["ten_a", "ten_b"] {
        store
            .put_token(token(&format!("tok_{tenant}"), tenant), hash_token(tenant))
            .await
            .unwrap();
        stream(
            store,
            tenant,
            &format!("est_{tenant}"),
            "*",
            StreamStatus::Enabled,
        )
        .await;
        store
            .publish(tenant, vec![event("c1", "user.created")], NOW, None)
            .await
            .unwrap();
    }
    store
        .create_console_session(ConsoleSession {
            hash: hash_token("hcs_b"),
            token_hash: hash_token("ten_b"),
            tenant_id: Some("ten_b".into()),
            scopes: None,
            name: None,
            created_at: NOW,
            expires_at: NOW + 1_000,
        })
        .await
        .unwrap();

    assert!(store.close_tenant("ten_b").await.unwrap(), "{name}");
    // Nothing sends or acts for it any more...
    assert!(
        store
            .find_token(hash_token("ten_b"))
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    assert!(
        store
            .find_console_session(hash_token("hcs_b"))
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    assert!(
        store.list_streams("ten_b").await.unwrap().is_empty(),
        "{name}"
    );
    assert!(
        !store
            .backlogs()
            .await
            .unwrap()
            .iter()
            .any(|b| b.tenant_id == "ten_b"),
        "{name}"
    );
    // ...while the tenant and its log wait for the deletion proper.
    assert!(store.get_tenant("ten_b").await.unwrap().is_some(), "{name}");
    assert!(
        store
            .get_event("ten_b", "c1", None)
            .await
            .unwrap()
            .is_some(),
        "{name}"
    );
    // Another tenant is untouched.
    assert!(
        store
            .find_token(hash_token("ten_a"))
            .await
            .unwrap()
            .is_some(),
        "{name}"
    );
    assert_eq!(
        store.list_streams("ten_a").await.unwrap().len(),
        1,
        "{name}"
    );

    assert!(store.delete_tenant("ten_b").await.unwrap(), "{name}");
    assert!(
        store
            .get_event("ten_b", "c1", None)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    assert!(!store.close_tenant("ten_b").await.unwrap(), "{name}");
}

async fn a_batch_of_outcomes_judges_stream_health_as_if_stored_one_by_one(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    for (stream_id, event_type) in [("est_a", "user.created"), ("est_b", "role.created")] {
        stream(store, "ten_a", stream_id, event_type, StreamStatus::Enabled).await;
    }
    let events = (0..3)
        .flat_map(|i| {
            [
                event(&format!("a{i}"), "user.created"),
                event(&format!("b{i}"), "role.created"),
            ]
        })
        .collect();
    store.publish("ten_a", events, NOW, None).await.unwrap();
    let batches = store
        .claim(
            [request("ten_a", "est_a", 3), request("ten_a", "est_b", 2)].concat(),
            NOW,
            NOW + 60_000,
        )
        .await
        .unwrap();
    let claimed = |stream: &str| {
        batches
            .iter()
            .find(|b| b.stream_id == stream)
            .unwrap()
            .deliveries
            .clone()
    };
    // est_a: two failures reach its limit of two, then a success: still disabled.
    let mut records: Vec<AttemptRecord> = claimed("est_a")
        .iter()
        .zip([
            DeliveryStatus::Failed,
            DeliveryStatus::Failed,
            DeliveryStatus::Succeeded,
        ])
        .map(|(c, status)| {
            let mut r = outcome(c, status, None);
            r.max_consecutive_failures = 2;
            r
        })
        .collect();
    // est_b: the endpoint answered 410 Gone, then a success: still disabled.
    let b_claimed = claimed("est_b");
    let mut gone = outcome(&b_claimed[0], DeliveryStatus::Failed, None);
    gone.response_status = Some(410);
    gone.disable_stream = Some("the endpoint answered 410 Gone".into());
    records.push(gone);
    records.push(outcome(&b_claimed[1], DeliveryStatus::Succeeded, None));

    let mut effects = store.record(records, NOW).await.unwrap();
    effects.disabled_streams.sort();
    assert_eq!(effects.disabled_streams, ["est_a", "est_b"], "{name}");
    for stream_id in ["est_a", "est_b"] {
        let stream = store.get_stream("ten_a", stream_id).await.unwrap().unwrap();
        assert_eq!(stream.status, StreamStatus::Disabled, "{name} {stream_id}");
    }
    assert!(
        store
            .get_stream("ten_a", "est_a")
            .await
            .unwrap()
            .unwrap()
            .status_reason
            .unwrap()
            .contains("2 failed attempts in a row"),
        "{name}"
    );
}

async fn a_failing_stream_is_disabled_only_once_it_has_failed_for_its_period(b: Backend) {
    const HOUR: i64 = 3_600_000;
    let store = &*b.store;
    let name = b.name;
    stream(
        store,
        "ten_a",
        "est_t",
        "user.created",
        StreamStatus::Enabled,
    )
    .await;
    let events = (0..6)
        .map(|i| event(&format!("t{i}"), "user.created"))
        .collect();
    store.publish("ten_a", events, NOW, None).await.unwrap();
    let batches = store
        .claim(request("ten_a", "est_t", 6), NOW, NOW + 60_000)
        .await
        .unwrap();
    let claimed = batches[0].deliveries.clone();
    assert_eq!(claimed.len(), 6, "{name}");
    // Two failures in a row allowed, and an hour of failing.
    let attempt = |i: usize, status: DeliveryStatus, at: i64| {
        let mut r = outcome(&claimed[i], status, None);
        if status == DeliveryStatus::Pending {
            r.next_attempt_at = Some(at + HOUR);
        }
        r.attempted_at = at;
        r.max_consecutive_failures = 2;
        r.disable_after_failing_seconds = 3_600;
        r
    };
    let status = || async {
        store
            .get_stream("ten_a", "est_t")
            .await
            .unwrap()
            .unwrap()
            .status
    };
    // Two failures within a second reach the count, not the period.
    let effects = store
        .record(
            vec![
                attempt(0, DeliveryStatus::Pending, NOW),
                attempt(1, DeliveryStatus::Pending, NOW + 1_000),
            ],
            NOW + 1_000,
        )
        .await
        .unwrap();
    assert!(effects.disabled_streams.is_empty(), "{name}");
    assert_eq!(status().await, StreamStatus::Enabled, "{name}");
    // A success ends the run: the next failure starts the period again.
    store
        .record(
            vec![attempt(2, DeliveryStatus::Succeeded, NOW + 2_000)],
            NOW + 2_000,
        )
        .await
        .unwrap();
    let later = NOW + 10 * HOUR;
    store
        .record(vec![attempt(3, DeliveryStatus::Pending, later)], later)
        .await
        .unwrap();
    let effects = store
        .record(
            vec![attempt(4, DeliveryStatus::Pending, later + HOUR - 1)],
            later + HOUR - 1,
        )
        .await
        .unwrap();
    assert!(
        effects.disabled_streams.is_empty(),
        "{name}: failing for less than the period since the last success"
    );
    assert_eq!(status().await, StreamStatus::Enabled, "{name}");
    let effects = store
        .record(
            vec![attempt(5, DeliveryStatus::Pending, later + HOUR)],
            later + HOUR,
        )
        .await
        .unwrap();
    assert_eq!(effects.disabled_streams, ["est_t"], "{name}");
    let disabled = store.get_stream("ten_a", "est_t").await.unwrap().unwrap();
    assert_eq!(disabled.status, StreamStatus::Disabled, "{name}");
    let reason = disabled.status_reason.unwrap();
    assert!(
        reason.contains("3 failed attempts in a row over 60 minutes"),
        "{name}: {reason}"
    );
}

async fn a_claim_serves_only_streams_that_are_enabled_now(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    stream(store, "ten_a", "est_a", "*", StreamStatus::Enabled).await;
    store
        .publish("ten_a", vec![event("q1", "user.created")], NOW, None)
        .await
        .unwrap();
    // Paused elsewhere (another node, or before the dispatcher heard of it).
    let set_status = |status| async move {
        let mut stream = store.get_stream("ten_a", "est_a").await.unwrap().unwrap();
        stream.status = status;
        let update = StreamUpdate {
            stream,
            skip_backlog: false,
            notices: Vec::new(),
        };
        store.update_stream(update).await.unwrap().unwrap();
    };
    set_status(StreamStatus::Paused).await;
    let batch = store
        .claim(request("ten_a", "est_a", 10), NOW, NOW + 60_000)
        .await
        .unwrap();
    assert!(
        batch[0].deliveries.is_empty(),
        "{name}: nothing for a paused stream"
    );
    set_status(StreamStatus::Enabled).await;
    let batch = store
        .claim(request("ten_a", "est_a", 10), NOW, NOW + 60_000)
        .await
        .unwrap();
    assert_eq!(
        batch[0].deliveries.len(),
        1,
        "{name}: served again once enabled"
    );
}

async fn any_destination_kind_round_trips_with_its_content_settings_and_attempt_detail(b: Backend) {
    let store = &*b.store;
    let destination: Destination = serde_json::from_value(serde_json::json!({
        "type": "eventbridge",
        "configuration": {
            "aws_account_id": "123456789012", "aws_region": "eu-west-1",
            "aws_access_key_id": "AKIA", "aws_secret_access_key": "sealed at rest",
        }
    }))
    .unwrap();
    let bus = Stream {
        tenant_id: "ten_a".into(),
        id: "est_bus".into(),
        name: "bus".into(),
        status: StreamStatus::Enabled,
        status_reason: None,
        subscriptions: vec![Subscription {
            event_type: "*".into(),
        }],
        destination,
        payload_format: PayloadFormat::Audit,
        content_mode: Some(ContentMode::Structured),
        retry_policy: RetryPolicy::default(),
        max_consecutive_failures: 0,
        disable_after_failing_seconds: 0,
        created_at: NOW,
        updated_at: NOW,
        expires_at: None,
    };
    store.create_stream(bus, None).await.unwrap();
    let got = store.get_stream("ten_a", "est_bus").await.unwrap().unwrap();
    assert_eq!(got.destination.kind(), "eventbridge", "{}", b.name);
    assert_eq!(got.payload_format, PayloadFormat::Audit, "{}", b.name);
    assert_eq!(
        got.content_mode,
        Some(ContentMode::Structured),
        "{}",
        b.name
    );
    let Destination::Eventbridge(config) = &got.destination else {
        panic!("{}: not an eventbridge destination", b.name);
    };
    assert_eq!(
        config.aws_secret_access_key.as_ref().unwrap().expose(),
        "sealed at rest",
        "{}: credentials come back from the sealed column",
        b.name
    );
    assert!(
        store
            .stream_secrets("ten_a", "est_bus", NOW)
            .await
            .unwrap()
            .is_empty(),
        "{}: a kind without stream secrets has none",
        b.name
    );

    store
        .publish("ten_a", vec![event("e1", "user.created")], NOW, None)
        .await
        .unwrap();
    let claimed = store
        .claim(request("ten_a", "est_bus", 10), NOW, NOW + 60_000)
        .await
        .unwrap()
        .remove(0)
        .deliveries
        .remove(0);
    assert_eq!(claimed.lease_until, NOW + 60_000, "{}", b.name);
    let mut record = outcome(&claimed, DeliveryStatus::Failed, None);
    record.response_body = None;
    record.error_kind = Some("rejected");
    record.error_message = Some("AccessDeniedException: no".into());
    record.detail = Some(r#"{"aws_error_code":"AccessDeniedException"}"#.into());
    record.refused = true;
    store.record(vec![record], NOW).await.unwrap();
    let delivery = store
        .event_deliveries("ten_a", "e1")
        .await
        .unwrap()
        .remove(0);
    assert_eq!(delivery.status, DeliveryStatus::Failed, "{}", b.name);
    assert_eq!(
        delivery.attempts[0].detail.as_deref(),
        Some(r#"{"aws_error_code":"AccessDeniedException"}"#),
        "{}",
        b.name
    );
    assert_eq!(
        delivery.attempts[0].error_kind.as_deref(),
        Some("rejected"),
        "{}",
        b.name
    );
}

/// Erasure removes everything that can carry personal data, on every backend alike: the
/// payload in either form, the subject, every extension attribute, the attempts' response
/// bodies; and a delivery still pending sends what is left.
async fn erasure_leaves_only_what_identifies_an_event(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    stream(store, "ten_a", "est_a", "user.*", StreamStatus::Enabled).await;
    let personal = |id: &str, extensions: &str| {
        let mut e = event(id, "user.created");
        e.subject = Some("usr_1".into());
        e.dataschema = Some("https://example.com/schema".into());
        e.extensions = serde_json::from_str(extensions).unwrap();
        e
    };
    let mut binary = personal(
        "bin",
        r#"{"data_base64":"amFuZUBleGFtcGxlLmNvbQ==","userid":"u1","projectid":"prj",
            "platformid":"plt","customerid":"c9"}"#,
    );
    binary.data = RawValue::from_string("null".into()).unwrap();
    binary.datacontenttype = Some("application/octet-stream".into());
    let events = vec![
        binary,
        personal("json", r#"{"userid":"u1"}"#),
        Event {
            subject: Some("usr_2".into()),
            extensions: serde_json::from_str(r#"{"userid":"u2"}"#).unwrap(),
            ..event("other", "user.created")
        },
    ];
    store.publish("ten_a", events, NOW, None).await.unwrap();
    let claimed = store
        .claim(request("ten_a", "est_a", 10), NOW, NOW + 60_000)
        .await
        .unwrap();
    let outcomes = claimed[0]
        .deliveries
        .iter()
        .map(|c| {
            let mut o = outcome(c, DeliveryStatus::Pending, Some(NOW + 10));
            o.response_body = Some("echo: jane@example.com".into());
            o
        })
        .collect();
    store.record(outcomes, NOW).await.unwrap();

    let erased = store
        .erase("ten_a", Erase::Subject("usr_1".into()), NOW + 5)
        .await
        .unwrap();
    assert_eq!(erased, 2, "{name}");
    let bin = store
        .get_event("ten_a", "bin", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bin.erased_at, Some(NOW + 5), "{name}");
    let rendered: serde_json::Value = serde_json::from_slice(&bin.event.to_cloudevent()).unwrap();
    assert_eq!(
        rendered,
        serde_json::json!({"specversion": "1.0", "id": "bin", "source": "/test",
            "type": "user.created", "time": herald::event::format_time(NOW)}),
        "{name}: only what identifies the event stays"
    );
    for filter in [
        EventFilter {
            subject: Some("usr_1".into()),
            ..Default::default()
        },
        EventFilter {
            userid: Some("u1".into()),
            ..Default::default()
        },
        EventFilter {
            projectid: Some("prj".into()),
            ..Default::default()
        },
    ] {
        let found = store
            .list_events("ten_a", filter.clone(), None, 10)
            .await
            .unwrap();
        assert!(
            found.items.is_empty(),
            "{name}: {filter:?} still finds them"
        );
    }
    let log = store
        .list_events("ten_a", EventFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(log.items.len(), 3, "{name}: the events stay");
    for logged in &log.items {
        let erased = logged.event.id != "other";
        assert_eq!(logged.erased_at.is_some(), erased, "{name}");
        assert_eq!(logged.event.extensions.is_empty(), erased, "{name}");
    }

    // The attempts keep their outcomes, not what the receiver echoed.
    for d in &claimed[0].deliveries {
        let view = store.get_delivery("ten_a", &d.id).await.unwrap().unwrap();
        let expected = (d.event.id == "other").then(|| "echo: jane@example.com".to_string());
        assert_eq!(view.attempts.len(), 1, "{name}");
        assert_eq!(view.attempts[0].response_status, Some(500), "{name}");
        assert_eq!(view.attempts[0].response_body, expected, "{name}");
    }
    // What the pending deliveries send next is the erased event.
    let retried = store
        .claim(request("ten_a", "est_a", 10), NOW + 10, NOW + 60_000)
        .await
        .unwrap();
    assert_eq!(retried[0].deliveries.len(), 3, "{name}");
    for d in retried[0]
        .deliveries
        .iter()
        .filter(|d| d.event.id != "other")
    {
        let body = String::from_utf8(d.event.to_cloudevent()).unwrap();
        for personal in [
            "amFuZUBleGFtcGxl",
            "usr_1",
            "u1",
            "prj",
            "plt",
            "c9",
            "\"n\":1",
        ] {
            assert!(
                !body.contains(personal),
                "{name}: {personal} is still sent: {body}"
            );
        }
    }

    // An id named twice is one event, erased once.
    let erased = store
        .erase(
            "ten_a",
            Erase::Events(vec!["other".into(), "other".into()]),
            NOW + 20,
        )
        .await
        .unwrap();
    assert_eq!(erased, 1, "{name}");
}

/// A delivery pending to a stream that no longer exists never finishes, so it does not keep
/// its event from retention, on any backend.
async fn retention_keeps_events_only_for_streams_that_still_exist(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    stream(store, "ten_a", "est_a", "user.*", StreamStatus::Enabled).await;
    let events = vec![
        event("kept", "user.created"),
        event("orphan", "role.created"),
    ];
    store.publish("ten_a", events, NOW, None).await.unwrap();
    let queued = store
        .redeliver_event("ten_a", "est_gone", "orphan", NOW)
        .await
        .unwrap();
    assert_eq!(queued, Some(1), "{name}");
    let orphan = store.event_deliveries("ten_a", "orphan").await.unwrap();
    assert_eq!(orphan[0].status, DeliveryStatus::Pending, "{name}");
    // Retention keeps the store's newest event whatever its age.
    store
        .publish("ten_a", vec![event("newer", "role.created")], NOW + 5, None)
        .await
        .unwrap();

    let swept = store.sweep(Some(NOW + 1), None, 100).await.unwrap();
    assert_eq!(swept.events, 1, "{name}");
    assert!(
        store
            .get_event("ten_a", "orphan", None)
            .await
            .unwrap()
            .is_none(),
        "{name}: a delivery to a deleted stream kept its event"
    );
    assert!(
        store
            .get_delivery("ten_a", &orphan[0].id)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    assert!(
        store
            .get_event("ten_a", "kept", None)
            .await
            .unwrap()
            .is_some(),
        "{name}: pending to a stream that exists"
    );
}

/// A write that fails stores nothing, and changes no lease either: not one taken by a publish
/// that failed part-way (on the embedded store its row id is reused, and the lease would hide
/// the next delivery), not one given back by an outcome that could not be stored (the
/// delivery could then be claimed again while its attempt is still being recorded).
async fn a_write_that_fails_leaves_leases_as_they_were(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    stream(store, "ten_a", "est_a", "user.*", StreamStatus::Enabled).await;
    stream(store, "ten_a", "est_b", "role.*", StreamStatus::Enabled).await;
    refuse_inserts(&b, "deliveries", "NEW.event_type = 'role.created'").await;
    refuse_inserts(&b, "attempts", "NEW.response_body = 'unstorable'").await;

    // The first event's delivery is leased before the second event's is refused.
    let events = vec![event("u1", "user.created"), event("r1", "role.created")];
    let failed = store
        .publish("ten_a", events, NOW, Some(NOW + 60_000))
        .await;
    assert!(failed.is_err(), "{name}: {failed:?}");
    assert!(
        store
            .get_event("ten_a", "u1", None)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    store
        .publish("ten_a", vec![event("u2", "user.created")], NOW, None)
        .await
        .unwrap();
    let claimed = store
        .claim(request("ten_a", "est_a", 10), NOW, NOW + 60_000)
        .await
        .unwrap();
    let ids: Vec<_> = claimed[0].deliveries.iter().map(|c| &c.event.id).collect();
    assert_eq!(
        ids,
        ["u2"],
        "{name}: the failed publish left a lease behind"
    );

    let mut unstorable = outcome(&claimed[0].deliveries[0], DeliveryStatus::Succeeded, None);
    unstorable.response_body = Some("unstorable".into());
    let failed = store.record(vec![unstorable], NOW + 1).await;
    assert!(failed.is_err(), "{name}: {failed:?}");
    let again = store
        .claim(request("ten_a", "est_a", 10), NOW + 2, NOW + 60_000)
        .await
        .unwrap();
    assert!(
        again[0].deliveries.is_empty(),
        "{name}: an outcome that was not stored gave its lease back"
    );
    let view = store
        .get_delivery("ten_a", &claimed[0].deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status, DeliveryStatus::Pending, "{name}");
    assert!(view.attempts.is_empty(), "{name}");
}

/// Reads keep working when the embedded store's writer thread is gone, so readiness must ask
/// the writer too: a store that cannot write is not ready.
#[tokio::test]
async fn the_embedded_store_is_not_ready_once_its_writer_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &dir.path().join("store.sqlite3"),
        Cipher::from_base64(KEY).unwrap(),
    )
    .unwrap();
    store.ping().await.unwrap();
    store.kill_writer_for_tests().await;
    assert!(store.list_tenants().await.is_ok(), "reads still work");
    let tenant = Tenant {
        id: "ten_c".into(),
        name: "c".into(),
        created_at: NOW,
    };
    assert!(store.create_tenant(tenant).await.is_err(), "writes do not");
    assert!(store.ping().await.is_err(), "the store says it is ready");
}

/// Deleting a tenant deletes its deliveries with their leases, on every backend: a lease
/// left behind (the embedded store keeps them in memory, and reuses the row ids deletion
/// frees) would hide another tenant's next delivery until it lapsed.
async fn deleting_a_tenant_leaves_no_lease_on_its_deliveries(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    stream(store, "ten_b", "est_b", "*", StreamStatus::Enabled).await;
    let published = store
        .publish(
            "ten_b",
            vec![event("b1", "user.created")],
            NOW,
            Some(NOW + 60_000),
        )
        .await
        .unwrap();
    let leased = published[0].leased[0].clone();
    assert!(store.delete_tenant("ten_b").await.unwrap(), "{name}");

    stream(store, "ten_a", "est_a", "*", StreamStatus::Enabled).await;
    store
        .publish("ten_a", vec![event("a1", "user.created")], NOW, None)
        .await
        .unwrap();
    let claimed = store
        .claim(request("ten_a", "est_a", 10), NOW, NOW + 60_000)
        .await
        .unwrap();
    let ids: Vec<_> = claimed[0].deliveries.iter().map(|c| &c.event.id).collect();
    assert_eq!(ids, ["a1"], "{name}: the deleted tenant's lease hid it");

    // The deleted tenant's attempt, finishing late, takes nothing from the new delivery.
    store
        .record(vec![outcome(&leased, DeliveryStatus::Succeeded, None)], NOW)
        .await
        .unwrap();
    let again = store
        .claim(request("ten_a", "est_a", 10), NOW + 1, NOW + 60_000)
        .await
        .unwrap();
    assert!(
        again[0].deliveries.is_empty(),
        "{name}: a1 is still under way"
    );
    // Nor does a late release of the deleted tenant's lease (a dispatcher giving back what
    // it had queued).
    store
        .release(vec![(leased.key, leased.lease)], NOW)
        .await
        .unwrap();
    let again = store
        .claim(request("ten_a", "est_a", 10), NOW + 2, NOW + 60_000)
        .await
        .unwrap();
    assert!(
        again[0].deliveries.is_empty(),
        "{name}: a1 is still under way after a stale release"
    );
}

/// Every chunk of every pending fan-out, taking turns as the fan-out worker does.
async fn fan_out_all(store: &dyn Store) -> Vec<FannedOut> {
    fan_out_all_by(store, MAX_INLINE_DELIVERIES).await
}

async fn fan_out_all_by(store: &dyn Store, limit: usize) -> Vec<FannedOut> {
    let mut chunks: Vec<FannedOut> = Vec::new();
    let after = |chunks: &[FannedOut]| chunks.last().map_or(0, |c| c.fanout);
    while let Some(chunk) = store.fan_out(after(&chunks), limit, NOW).await.unwrap() {
        chunks.push(chunk);
        assert!(chunks.len() < 1_000, "the fan-out never ends");
    }
    chunks
}

/// The streams an event has deliveries to, sorted.
async fn delivered_to(store: &dyn Store, tenant: &str, event_id: &str) -> Vec<String> {
    let mut streams: Vec<String> = store
        .event_deliveries(tenant, event_id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.stream_id)
        .collect();
    streams.sort();
    streams
}

/// A publish that would create more than `MAX_INLINE_DELIVERIES` deliveries commits its
/// events with a pending fan-out instead; `fan_out` creates the deliveries in chunks of about
/// that size, pending fan-outs taking turns, for the streams subscribed at the publish that
/// still exist. Retention keeps the events meanwhile.
async fn a_large_fan_out_is_created_in_chunks_for_the_streams_subscribed_at_its_publish(
    b: Backend,
) {
    let store = &*b.store;
    let name = b.name;
    for id in ["est_1", "est_2", "est_3"] {
        stream(store, "ten_a", id, "user.*", StreamStatus::Enabled).await;
    }
    stream(store, "ten_a", "est_paused", "*", StreamStatus::Paused).await;
    stream(store, "ten_a", "est_flow", "flow.*", StreamStatus::Enabled).await;
    // 4 streams take each user event: just over the limit.
    let n = MAX_INLINE_DELIVERIES / 4 + 1;
    let mut events: Vec<Event> = (0..n)
        .map(|i| event(&format!("u{i}"), "user.created"))
        .collect();
    events.push(event("r0", "role.created"));
    let published = store
        .publish("ten_a", events, NOW, Some(NOW + 60_000))
        .await
        .unwrap();
    assert!(published.iter().all(|p| p.deferred), "{name}");
    assert!(published.iter().all(|p| p.leased.is_empty()), "{name}");
    let mut told = published[0].streams.clone();
    told.sort();
    assert_eq!(told, ["est_1", "est_2", "est_3", "est_paused"], "{name}");
    assert_eq!(published[n].streams, ["est_paused"], "{name}");
    assert!(
        delivered_to(store, "ten_a", "u0").await.is_empty(),
        "{name}"
    );

    // Under the limit, a publish writes its deliveries at once.
    stream(store, "ten_b", "est_b", "*", StreamStatus::Enabled).await;
    let small = store
        .publish("ten_b", vec![event("b0", "user.created")], NOW, None)
        .await
        .unwrap();
    assert!(!small[0].deferred, "{name}");
    assert_eq!(
        delivered_to(store, "ten_b", "b0").await,
        ["est_b"],
        "{name}"
    );

    let swept = store.sweep(Some(NOW + 1), None, 10_000).await.unwrap();
    assert!(
        store
            .get_event("ten_a", "u0", None)
            .await
            .unwrap()
            .is_some(),
        "{name}: retention took an event whose fan-out is pending ({swept:?})"
    );

    // A stream deleted before its deliveries exist gets none; one created after the publish
    // gets none either.
    assert!(store.delete_stream("ten_a", "est_3", NOW).await.unwrap());
    stream(store, "ten_a", "est_late", "*", StreamStatus::Enabled).await;
    // Another tenant's fan-out, published later, takes turns with the first.
    for i in 0..4 {
        stream(
            store,
            "ten_b",
            &format!("est_b{i}"),
            "*",
            StreamStatus::Enabled,
        )
        .await;
    }
    let events = (0..MAX_INLINE_DELIVERIES / 5 + 1)
        .map(|i| event(&format!("v{i}"), "user.created"))
        .collect();
    let second = store.publish("ten_b", events, NOW, None).await.unwrap();
    assert!(second[0].deferred, "{name}");

    let chunks = fan_out_all(store).await;
    assert!(chunks.len() >= 4, "{name}: {} chunks", chunks.len());
    assert_ne!(chunks[0].fanout, chunks[1].fanout, "{name}: no turns");
    assert!(store.fan_out(0, 10, NOW).await.unwrap().is_none(), "{name}");
    for i in [0, n / 2, n - 1] {
        assert_eq!(
            delivered_to(store, "ten_a", &format!("u{i}")).await,
            ["est_1", "est_2", "est_paused"],
            "{name}: u{i}"
        );
    }
    assert_eq!(
        delivered_to(store, "ten_a", "r0").await,
        ["est_paused"],
        "{name}"
    );
    assert_eq!(delivered_to(store, "ten_b", "v3").await.len(), 5, "{name}");
    let claimed = store
        .claim(request("ten_a", "est_1", 10_000), NOW, NOW + 60_000)
        .await
        .unwrap();
    assert_eq!(claimed[0].deliveries.len(), n, "{name}");
    assert!(
        claimed[0].deliveries.iter().all(|d| d.attempts == 0),
        "{name}"
    );
}

/// Chunks narrower than the tenant's streams (a few events to a few streams each, the shape
/// the fan-out worker uses) still give every stream each of its events exactly once; a stream
/// re-enabled with its backlog skipped while the fan-out is pending gets none of the rest.
async fn a_fan_out_wider_than_a_chunk_gives_each_stream_every_event_once(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    let streams = 40;
    for i in 0..streams {
        stream(
            store,
            "ten_a",
            &format!("est_{i:02}"),
            "*",
            StreamStatus::Enabled,
        )
        .await;
    }
    stream(store, "ten_a", "est_skip", "*", StreamStatus::Paused).await;
    let n = MAX_INLINE_DELIVERIES / streams + 7;
    let events = (0..n)
        .map(|i| event(&format!("w{i}"), "user.created"))
        .collect();
    let published = store.publish("ten_a", events, NOW, None).await.unwrap();
    assert!(published[0].deferred, "{name}");
    assert_eq!(published[0].streams.len(), streams + 1, "{name}");

    let mut skipped = store
        .get_stream("ten_a", "est_skip")
        .await
        .unwrap()
        .unwrap();
    skipped.status = StreamStatus::Enabled;
    let update = StreamUpdate {
        stream: skipped,
        skip_backlog: true,
        notices: Vec::new(),
    };
    assert!(
        store.update_stream(update).await.unwrap().is_some(),
        "{name}"
    );

    let chunks = fan_out_all_by(store, 250).await;
    assert!(
        chunks.len() > (streams * n) / 250,
        "{name}: {} chunks",
        chunks.len()
    );
    for i in 0..streams {
        let claimed = store
            .claim(
                request("ten_a", &format!("est_{i:02}"), 10_000),
                NOW,
                NOW + 60_000,
            )
            .await
            .unwrap();
        let mut ids: Vec<&str> = claimed[0]
            .deliveries
            .iter()
            .map(|d| d.event.id.as_str())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "{name}: est_{i:02}");
        assert_eq!(claimed[0].deliveries.len(), n, "{name}: est_{i:02}");
    }
    let skip = store
        .claim(request("ten_a", "est_skip", 10_000), NOW, NOW + 60_000)
        .await
        .unwrap();
    assert!(
        skip[0].deliveries.is_empty(),
        "{name}: the skipped backlog came back"
    );
}

/// A fan-out interrupted by a stop resumes where it stopped when the embedded store opens
/// again, and creates nothing twice.
#[tokio::test]
async fn a_fan_out_resumes_after_the_store_is_reopened() {
    let b = sqlite().await;
    let dir = b.dir.as_ref().unwrap().path().to_path_buf();
    for i in 0..5 {
        stream(
            &*b.store,
            "ten_a",
            &format!("est_{i}"),
            "*",
            StreamStatus::Enabled,
        )
        .await;
    }
    let n = MAX_INLINE_DELIVERIES;
    let events = (0..n)
        .map(|i| event(&format!("e{i}"), "user.created"))
        .collect();
    b.store.publish("ten_a", events, NOW, None).await.unwrap();
    let first = b
        .store
        .fan_out(0, MAX_INLINE_DELIVERIES, NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.streams.len(), 5);
    b.store.close().await;
    drop(b.store);
    // Five chunks of 200 events to the 5 streams; the first is done.
    let next: i64 = rusqlite::Connection::open(dir.join("store.sqlite3"))
        .unwrap()
        .query_row("SELECT next FROM fanouts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(next, 200);

    let store = SqliteStore::open(
        &dir.join("store.sqlite3"),
        Cipher::from_base64(KEY).unwrap(),
    )
    .unwrap();
    assert_eq!(fan_out_all(&store).await.len(), 4, "resumed, not restarted");
    let count: i64 = rusqlite::Connection::open(dir.join("store.sqlite3"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count as usize, 5 * n);
    assert_eq!(delivered_to(&store, "ten_a", "e0").await.len(), 5);
    assert_eq!(
        delivered_to(&store, "ten_a", &format!("e{}", n - 1))
            .await
            .len(),
        5
    );
}

/// Polls `job` once: far enough for its first writer job to be queued.
async fn start<F: std::future::Future + Unpin>(job: &mut F) {
    std::future::poll_fn(|cx| {
        let polled = std::pin::Pin::new(&mut *job).poll(cx);
        assert!(polled.is_pending(), "the bulk write ended in one turn");
        std::task::Poll::Ready(())
    })
    .await;
}

/// A large administrative write (a redelivery, an erasure by subject, a tenant's deletion)
/// goes to the embedded store's one writer a chunk at a time: a publish sent while it runs is
/// written after its first chunk, not after all of it.
#[tokio::test]
async fn bulk_writes_let_publishes_through_between_chunks() {
    use herald::store::sqlite::BULK_CHUNK;
    let b = sqlite().await;
    let store = &*b.store;
    let file = b.dir.as_ref().unwrap().path().join("store.sqlite3");
    let count = |sql: &str| -> usize {
        rusqlite::Connection::open(&file)
            .unwrap()
            .query_row(sql, [], |r| r.get::<_, i64>(0))
            .unwrap() as usize
    };
    let n = 3 * BULK_CHUNK;
    stream(
        store,
        "ten_a",
        "est_a",
        "user.created",
        StreamStatus::Paused,
    )
    .await;
    for first in (0..n).step_by(1_000) {
        let events = (first..first + 1_000)
            .map(|i| Event {
                subject: Some("user-7".into()),
                ..event(&format!("bulk{i}"), "user.created")
            })
            .collect();
        store.publish("ten_a", events, NOW, None).await.unwrap();
    }
    let mut quick = 0;
    let mut publish_between = || {
        quick += 1;
        let event = event(&format!("quick{quick}"), "user.created");
        async move {
            store
                .publish("ten_b", vec![event], NOW, None)
                .await
                .unwrap()
        }
    };

    let redeliver = store.redeliver("ten_a", "est_a", DeliveryFilter::default(), false, NOW + 1);
    let mut redeliver = std::pin::pin!(redeliver);
    start(&mut redeliver).await;
    publish_between().await;
    let requeued = format!("SELECT COUNT(*) FROM deliveries WHERE due_at = {}", NOW + 1);
    assert_eq!(
        count(&requeued),
        BULK_CHUNK,
        "the publish waited for one chunk"
    );
    assert_eq!(redeliver.await.unwrap(), n as u64);
    assert_eq!(count(&requeued), n);

    let erase = store.erase("ten_a", Erase::Subject("user-7".into()), NOW);
    let mut erase = std::pin::pin!(erase);
    start(&mut erase).await;
    publish_between().await;
    let erased = "SELECT COUNT(*) FROM events WHERE erased_at IS NOT NULL";
    assert_eq!(
        count(erased),
        BULK_CHUNK,
        "the publish waited for one chunk"
    );
    assert_eq!(erase.await.unwrap(), n as u64);
    assert_eq!(count(erased), n);

    // A tenant's deletion: its deliveries go a chunk at a time, publishes in between.
    let delete = store.delete_tenant("ten_a");
    let mut delete = std::pin::pin!(delete);
    let deliveries = "SELECT COUNT(*) FROM deliveries WHERE tenant_id = 'ten_a'";
    let mut partly_deleted = false;
    loop {
        let polled = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(delete.as_mut(), cx))
        })
        .await;
        if let std::task::Poll::Ready(deleted) = polled {
            assert!(deleted.unwrap());
            break;
        }
        publish_between().await;
        let left = count(deliveries);
        partly_deleted |= 0 < left && left < n;
    }
    assert!(
        partly_deleted,
        "a publish got through while the tenant's deliveries were being deleted"
    );
    assert_eq!(count(deliveries), 0);
    assert_eq!(
        count("SELECT COUNT(*) FROM events WHERE tenant_id = 'ten_a'"),
        0
    );
    assert!(
        count("SELECT COUNT(*) FROM events WHERE tenant_id = 'ten_b'") >= 3,
        "every publish in between was written"
    );
}

/// Event ids read from the tenant's log after `after`, in log order, with the last position:
/// read until at least `want` have come. On PostgreSQL a read may lag while other tests'
/// transactions are open (the log serves nothing past the oldest open one), hence the wait.
async fn read_ids(
    store: &dyn Store,
    tenant: &str,
    after: LogPosition,
    want: usize,
) -> (Vec<String>, LogPosition) {
    let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
    let mut ids = Vec::new();
    let mut position = after;
    loop {
        let events = store.read_log(tenant, position, 2).await.unwrap();
        if events.is_empty() {
            if ids.len() >= want || tokio::time::Instant::now() > deadline {
                return (ids, position);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for (at, logged) in events {
            assert!(at > position, "positions only grow");
            position = at;
            ids.push(logged.event.id);
        }
    }
}

/// The event log's readers (`GET /v1/events/stream`): every start, in order, tenant by tenant,
/// and an offset that is not in the log anymore (or never was the tenant's) is refused.
async fn the_event_log_is_read_in_order_from_any_start_and_per_tenant(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    let end = |tenant: &'static str| async move {
        store
            .log_position(tenant, LogStart::End)
            .await
            .unwrap()
            .unwrap()
    };
    let empty = end("ten_a").await;
    assert_eq!(
        read_ids(store, "ten_a", empty, 0).await.0,
        Vec::<String>::new(),
        "{name}"
    );
    store
        .publish(
            "ten_a",
            vec![event("a1", "user.created"), event("a2", "user.deleted")],
            NOW,
            None,
        )
        .await
        .unwrap();
    store
        .publish("ten_b", vec![event("b1", "user.created")], NOW + 1, None)
        .await
        .unwrap();
    store
        .publish("ten_a", vec![event("a3", "user.created")], NOW + 2, None)
        .await
        .unwrap();
    let (ids, last) = read_ids(store, "ten_a", empty, 3).await;
    assert_eq!(ids, ["a1", "a2", "a3"], "{name}: from the end before them");
    assert_eq!(read_ids(store, "ten_b", empty, 1).await.0, ["b1"], "{name}");

    // Resuming after each event gives exactly what follows it.
    let first = store.read_log("ten_a", empty, 1).await.unwrap();
    let (after_a1, _) = first[0];
    let resumed = store
        .log_position(
            "ten_a",
            LogStart::After {
                position: after_a1,
                received_since: None,
            },
        )
        .await
        .unwrap()
        .expect("a1 is in the log");
    assert_eq!(
        read_ids(store, "ten_a", resumed, 2).await.0,
        ["a2", "a3"],
        "{name}"
    );
    assert_eq!(
        store
            .log_position(
                "ten_a",
                LogStart::After {
                    position: after_a1,
                    received_since: Some(NOW + 1),
                },
            )
            .await
            .unwrap(),
        None,
        "{name}: received before the retention cutoff"
    );
    assert_eq!(
        LogPosition::parse(&after_a1.encode()),
        Some(after_a1),
        "{name}: offsets parse back"
    );

    // From the end: only what comes next.
    let now_end = end("ten_a").await;
    assert_eq!(
        read_ids(store, "ten_a", now_end, 0).await.0,
        Vec::<String>::new(),
        "{name}"
    );
    store
        .publish("ten_a", vec![event("a4", "user.created")], NOW + 3, None)
        .await
        .unwrap();
    assert_eq!(
        read_ids(store, "ten_a", now_end, 1).await.0,
        ["a4"],
        "{name}"
    );
    assert_eq!(read_ids(store, "ten_a", last, 1).await.0, ["a4"], "{name}");

    // From a time: the first event received at or after it.
    let from = store
        .log_position("ten_a", LogStart::ReceivedFrom(NOW + 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read_ids(store, "ten_a", from, 2).await.0,
        ["a3", "a4"],
        "{name}"
    );
    let later = store
        .log_position("ten_a", LogStart::ReceivedFrom(NOW + 60_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read_ids(store, "ten_a", later, 0).await.0,
        Vec::<String>::new(),
        "{name}"
    );

    // Another tenant's offset is not a place in this tenant's log.
    let b_events = store.read_log("ten_b", empty, 10).await.unwrap();
    let (b_position, _) = b_events[0];
    assert_eq!(
        store
            .log_position(
                "ten_a",
                LogStart::After {
                    position: b_position,
                    received_since: None,
                }
            )
            .await
            .unwrap(),
        None,
        "{name}"
    );
    // Nor is an event retention removed.
    store.sweep(Some(NOW + 1), None, 100).await.unwrap();
    assert_eq!(
        store
            .log_position(
                "ten_a",
                LogStart::After {
                    position: after_a1,
                    received_since: None,
                }
            )
            .await
            .unwrap(),
        None,
        "{name}: a1 was swept"
    );
}

/// On PostgreSQL, transactions commit in another order than the one in which they took their
/// sequence numbers. The log holds back what an open transaction could still precede: an
/// event published while an older transaction is open is not read until that one ends, and
/// then the older transaction's event comes first.
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn the_postgres_log_never_serves_past_an_open_transaction() {
    let b = postgres().await;
    let store = &*b.store;
    // The store's first write of the day, before the transaction below is open: the first
    // waits for the writes under way (see `postgres_a_new_days_keys_wait_for_the_writes_under_way`).
    store
        .publish("ten_b", vec![event("first", "user.created")], NOW, None)
        .await
        .unwrap();
    let start = store
        .log_position("ten_a", LogStart::End)
        .await
        .unwrap()
        .unwrap();
    let database = b.database.as_ref().unwrap();
    let mut client = crate::helpers::sql_client(&database.url).await;
    // An older transaction takes its id and its seq first, and stays open.
    let late = client.transaction().await.unwrap();
    late.execute(
        "INSERT INTO events (tenant_id, id, source, type, time, data, received_at) \
         VALUES ('ten_a', 'late', '/test', 'user.created', $1, '{}', $1)",
        &[&NOW],
    )
    .await
    .unwrap();
    store
        .publish("ten_a", vec![event("early", "user.created")], NOW, None)
        .await
        .unwrap();
    let (ids, position) = read_ids(store, "ten_a", start, 0).await;
    assert_eq!(
        ids,
        Vec::<String>::new(),
        "nothing is served past the open transaction"
    );
    assert_eq!(position, start);
    late.commit().await.unwrap();
    let (ids, _) = read_ids(store, "ten_a", start, 2).await;
    assert_eq!(
        ids,
        ["late", "early"],
        "the older transaction's event comes first"
    );
}

/// On PostgreSQL the history is a partition per UTC day. Two nodes that publish on a new day
/// at once make its partitions once; a node whose clock is a day behind still takes keys of
/// the latest day, never an earlier one (a drop of that earlier day would take its events);
/// retention drops a day's partitions and its event keys; and a drop a crash interrupted
/// (a partition detached and not dropped) is finished by the next sweep.
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn postgres_history_days_are_partitions_made_once_and_dropped_whole() {
    let b = postgres().await;
    let database = b.database.as_ref().unwrap();
    let other = PgStore::connect(&database.url, Cipher::from_base64(KEY).unwrap(), 4)
        .await
        .unwrap();
    let client = crate::helpers::sql_client(&database.url).await;
    let partitions = || async {
        let rows = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'events'::regclass ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let key_day = |id: &'static str| {
        let client = &client;
        async move {
            let seq: i64 = client
                .query_one("SELECT seq FROM events WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            seq >> 32
        }
    };
    let day = midnight_after_now(2);
    let n = day / DAY;

    let (a, b_) = tokio::join!(
        b.store
            .publish("ten_a", vec![event("a", "user.created")], day + 1, None),
        other.publish("ten_a", vec![event("b", "user.created")], day + 2, None),
    );
    a.unwrap();
    b_.unwrap();
    assert_eq!((key_day("a").await, key_day("b").await), (n, n));
    let made = partitions().await;
    assert!(made.contains(&format!("events_e{n}")), "{made:?}");
    other
        .publish(
            "ten_a",
            vec![event("c", "user.created")],
            day + DAY + 1,
            None,
        )
        .await
        .unwrap();
    assert_eq!(key_day("c").await, n + 1);
    // A node started now, whose clock says day n: the sequences stay on day n + 1.
    let behind = PgStore::connect(&database.url, Cipher::from_base64(KEY).unwrap(), 4)
        .await
        .unwrap();
    behind
        .publish(
            "ten_a",
            vec![event("behind", "user.created")],
            day + 3,
            None,
        )
        .await
        .unwrap();
    assert_eq!(key_day("behind").await, n + 1, "never an earlier day's key");
    other
        .publish(
            "ten_a",
            vec![event("newest", "user.created")],
            day + DAY + 2,
            None,
        )
        .await
        .unwrap();

    // Day n is dropped whole, keys and all; day n + 1 stays, but for the event received
    // before the cutoff, which goes row by row.
    let swept = b.store.sweep(Some(day + DAY), None, 100).await.unwrap();
    assert_eq!(swept.events, 3, "a and b with their day, then behind");
    let left = partitions().await;
    assert!(!left.contains(&format!("events_e{n}")), "{left:?}");
    assert!(left.contains(&format!("events_e{}", n + 1)), "{left:?}");
    for table in ["events", "deliveries", "attempts"] {
        let gone: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NULL",
                &[&format!("{table}_e{n}")],
            )
            .await
            .unwrap()
            .get(0);
        assert!(gone, "{table}");
    }
    let keys: Vec<String> = client
        .query("SELECT id FROM event_keys ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["c", "newest"]);

    // A drop cut short after its detach: the next sweep finishes it.
    other
        .publish(
            "ten_a",
            vec![event("d", "user.created")],
            day + 2 * DAY + 1,
            None,
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "ALTER TABLE events DETACH PARTITION events_e{}",
            n + 1
        ))
        .await
        .unwrap();
    let swept = b.store.sweep(Some(day + 2 * DAY), None, 100).await.unwrap();
    assert_eq!(swept.events, 0, "the detached day is not counted again");
    let loose: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NULL",
            &[&format!("events_e{}", n + 1)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(loose, "the detached partition is dropped");
    assert!(
        b.store
            .get_event("ten_a", "d", None)
            .await
            .unwrap()
            .is_some()
    );
    let keys: Vec<String> = client
        .query("SELECT id FROM event_keys ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["d"], "the keys of the day cut short went with it");
}

/// A day's keys are handed out only once the writes under way when its partitions were
/// attached have ended: such a write routes its rows by the partitions as they were when it
/// began, and would find none for a key of the new day.
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn postgres_a_new_days_keys_wait_for_the_writes_under_way() {
    let b = postgres().await;
    let database = b.database.as_ref().unwrap();
    let day = midnight_after_now(2);
    b.store
        .publish(
            "ten_a",
            vec![event("before", "user.created")],
            day + 1,
            None,
        )
        .await
        .unwrap();
    // A write under way on `events`, as another node's publish would be.
    let mut writer = crate::helpers::sql_client(&database.url).await;
    let under_way = writer.transaction().await.unwrap();
    under_way
        .batch_execute("LOCK TABLE ONLY events IN ROW EXCLUSIVE MODE")
        .await
        .unwrap();

    // Five days on: partitions not made ahead, so the publish makes them.
    let later = day + 5 * DAY;
    let store = b.store.clone();
    let publish = tokio::spawn(async move {
        store
            .publish(
                "ten_a",
                vec![event("later", "user.created")],
                later + 1,
                None,
            )
            .await
    });
    let client = crate::helpers::sql_client(&database.url).await;
    // The store's session that moves the keys looks for the writer's transaction to end.
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            let waiting: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1 \
                     AND pid <> pg_backend_pid() AND query LIKE '%locktype = ''virtualxid''%')",
                    &[&database.schema()],
                )
                .await
                .unwrap()
                .get(0);
            if waiting {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the publish waits for the write under way before it moves the keys");
    let n = later / DAY;
    let (made, events_day, deliveries_day): (bool, i64, i64) = {
        let row = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL, \
                 (SELECT last_value FROM events_seq_seq) >> 32, \
                 (SELECT last_value FROM deliveries_seq_seq) >> 32",
                &[&format!("events_e{n}")],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert!(made, "the day's partitions are made before the wait");
    assert!(
        events_day < n && deliveries_day < n,
        "no key of the new day is handed out while the write is under way"
    );
    assert!(!publish.is_finished());

    under_way.commit().await.unwrap();
    publish.await.unwrap().unwrap();
    let seq: i64 = client
        .query_one("SELECT seq FROM events WHERE id = 'later'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seq >> 32, n);
}

/// On PostgreSQL, a batch of outcomes names the days its deliveries are in, so the server
/// plans and locks no other day's partitions: the tables of a day in between, held by
/// another session (as dropping that day holds them), do not hold up a batch with
/// deliveries on both sides of it, one of them of an older day's event.
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn postgres_outcomes_leave_other_days_alone() {
    let b = postgres().await;
    let store = &*b.store;
    let url = &b.database.as_ref().unwrap().url;
    let mut holder = crate::helpers::sql_client(url).await;
    let today = midnight_after_now(3);
    let (oldest, between) = (today / DAY - 2, today / DAY - 1);
    stream(store, "ten_a", "est_a", "user.*", StreamStatus::Enabled).await;
    // Queued on the oldest day, to `est_a` only.
    store
        .publish(
            "ten_a",
            vec![event("old", "user.created")],
            oldest * DAY + 1,
            None,
        )
        .await
        .unwrap();
    stream(
        store,
        "ten_a",
        "est_b",
        "user.created",
        StreamStatus::Enabled,
    )
    .await;
    // The day between, with an event of its own (delivered).
    let mid = store
        .publish(
            "ten_a",
            vec![event("mid", "user.deleted")],
            between * DAY + 1,
            Some(between * DAY + 60_000),
        )
        .await
        .unwrap();
    store
        .record(
            vec![outcome(&mid[0].leased[0], DeliveryStatus::Succeeded, None)],
            between * DAY + 2,
        )
        .await
        .unwrap();
    // Today, the oldest day's event redelivered to `est_b`: a delivery of today.
    assert_eq!(
        store
            .redeliver_event("ten_a", "est_b", "old", today + 1)
            .await
            .unwrap(),
        Some(1)
    );

    let mut requests = request("ten_a", "est_a", 10);
    requests.extend(request("ten_a", "est_b", 10));
    let claimed = store
        .claim(requests, today + 2, today + 60_000)
        .await
        .unwrap();
    let leased: Vec<_> = claimed.iter().flat_map(|c| &c.deliveries).collect();
    assert_eq!(
        leased
            .iter()
            .map(|d| (d.stream_id.as_str(), d.event.id.as_str(), d.key >> 32))
            .collect::<Vec<_>>(),
        [("est_a", "old", oldest), ("est_b", "old", today / DAY)]
    );
    let holding = holder.transaction().await.unwrap();
    holding
        .batch_execute(&format!(
            "LOCK TABLE events_e{between}, deliveries_e{between}, attempts_e{between} \
             IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    tokio::time::timeout(
        crate::helpers::PATIENCE,
        store.record(
            leased
                .iter()
                .map(|d| outcome(d, DeliveryStatus::Succeeded, None))
                .collect(),
            today + 3,
        ),
    )
    .await
    .expect("the outcomes waited for another day's tables")
    .unwrap();
    holding.rollback().await.unwrap();

    for delivery in leased {
        let stored = store
            .get_delivery("ten_a", &delivery.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (stored.status, stored.attempts.len()),
            (DeliveryStatus::Succeeded, 1),
            "{}",
            delivery.stream_id
        );
    }
}

/// On PostgreSQL, a claim looks up deliveries and events from the day before its own only,
/// so another day's tables held by another session (as dropping that day holds them) do not
/// hold it up. A delivery of an older day is still claimed, with its event, by a wider
/// lookup; the claims after it reach back that far for a while, then no longer.
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn postgres_claims_leave_older_days_alone() {
    let b = postgres().await;
    let store = &*b.store;
    let url = &b.database.as_ref().unwrap().url;
    let mut holder = crate::helpers::sql_client(url).await;
    let today = midnight_after_now(3);
    let oldest = today / DAY - 2;
    stream(
        store,
        "ten_a",
        "est_old",
        "user.created",
        StreamStatus::Enabled,
    )
    .await;
    let queue = |id: &'static str, event_type: &'static str, at: i64| async move {
        store
            .publish("ten_a", vec![event(id, event_type)], at, None)
            .await
            .unwrap();
    };
    queue("old", "user.created", oldest * DAY + 1).await;
    stream(
        store,
        "ten_a",
        "est_new",
        "user.deleted",
        StreamStatus::Enabled,
    )
    .await;
    queue("new", "user.deleted", today + 1).await;
    // The stream's own, found without the oldest day's tables, which another session holds.
    async fn claim_new(
        store: &dyn Store,
        holder: &mut tokio_postgres::Client,
        oldest: i64,
        at: i64,
    ) -> Vec<String> {
        let holding = holder.transaction().await.unwrap();
        holding
            .batch_execute(&format!(
                "LOCK TABLE events_e{oldest}, deliveries_e{oldest} IN ACCESS EXCLUSIVE MODE"
            ))
            .await
            .unwrap();
        let claimed = tokio::time::timeout(
            crate::helpers::PATIENCE,
            // Leased for an hour: still leased at the last claim.
            store.claim(request("ten_a", "est_new", 10), at, at + DAY / 24),
        )
        .await
        .expect("the claim waited for an older day's tables")
        .unwrap();
        holding.rollback().await.unwrap();
        claimed[0]
            .deliveries
            .iter()
            .map(|d| d.event.id.clone())
            .collect()
    }
    assert_eq!(
        claim_new(store, &mut holder, oldest, today + 2).await,
        ["new"]
    );

    // The oldest day's delivery: looked up on every day, not taken for an orphan.
    let claimed = store
        .claim(request("ten_a", "est_old", 10), today + 3, today + 60_000)
        .await
        .unwrap();
    let old = &claimed[0].deliveries;
    assert_eq!(
        old.iter()
            .map(|d| (d.event.id.as_str(), d.key >> 32))
            .collect::<Vec<_>>(),
        [("old", oldest)]
    );
    // Still queued: claimed again once its lease has run out.
    let again = store
        .claim(request("ten_a", "est_old", 10), today + 60_001, today + DAY)
        .await
        .unwrap();
    assert_eq!(
        again[0]
            .deliveries
            .iter()
            .map(|d| d.event.id.as_str())
            .collect::<Vec<_>>(),
        ["old"]
    );

    // Ten minutes on, the claims no longer reach back to it.
    queue("newer", "user.deleted", today + 4).await;
    let later = today + 4 + 10 * 60_000 + 1;
    assert_eq!(
        claim_new(store, &mut holder, oldest, later).await,
        ["newer"]
    );
}

/// On PostgreSQL, dropping a day takes its events' deliveries wherever they are: one a
/// redelivery wrote the next day (in that day's partition) goes with its attempts. A queue
/// row left without its event (a redelivery racing the drop) is dropped by the claim that
/// finds it, not claimed for ever. A concurrent detach a cancel left pending is finished by
/// the next sweep, which then drops that day too.
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn postgres_dropping_a_day_takes_its_deliveries_from_later_days() {
    let b = postgres().await;
    let store = &*b.store;
    let url = &b.database.as_ref().unwrap().url;
    let connect = || crate::helpers::sql_client(url);
    let client = connect().await;
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    // This test's own detaches: other tests' schemas detach days of their own meanwhile.
    const PENDING_HERE: &str = "SELECT COUNT(*) FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhdetachpending AND c.relnamespace = current_schema()::regnamespace";
    let day = midnight_after_now(2);
    let n = day / DAY;
    stream(store, "ten_a", "est_a", "user.*", StreamStatus::Enabled).await;
    published_on(store, "old", day + 1, true).await;
    stream(store, "ten_a", "est_b", "user.*", StreamStatus::Enabled).await;
    let next = day + DAY;
    assert_eq!(
        store
            .redeliver_event("ten_a", "est_b", "old", next)
            .await
            .unwrap(),
        Some(1)
    );
    let claimed = store
        .claim(request("ten_a", "est_b", 10), next + 1, next + 60_000)
        .await
        .unwrap();
    let late = &claimed[0].deliveries[0];
    assert!(
        late.key >> 32 == n + 1,
        "written in the next day's partition"
    );
    // Pending in the next day's partition, it keeps its event's day.
    published_on(store, "meanwhile", next + 1, true).await;
    let swept = store.sweep(Some(next), None, 100).await.unwrap();
    assert_eq!(swept.events, 0);
    assert!(
        store
            .get_event("ten_a", "old", None)
            .await
            .unwrap()
            .is_some()
    );
    store
        .record(
            vec![outcome(late, DeliveryStatus::Succeeded, None)],
            next + 2,
        )
        .await
        .unwrap();
    store
        .delete_stream("ten_a", "est_b", next + 2)
        .await
        .unwrap();
    // A delivery queued for an event that is gone, as a redelivery racing a drop leaves it.
    published_on(store, "lost", next + 3, false).await;
    client
        .batch_execute("DELETE FROM events WHERE id = 'lost'")
        .await
        .unwrap();
    published_on(store, "newer", next + 4, true).await;
    // Once its lease from the publish has lapsed.
    let claimed = store
        .claim(request("ten_a", "est_a", 10), next + 60_004, next + 120_000)
        .await
        .unwrap();
    assert!(claimed[0].deliveries.is_empty());
    assert_eq!(
        count("SELECT COUNT(*) FROM queue").await,
        0,
        "the orphan is gone"
    );

    let swept = store.sweep(Some(next), None, 100).await.unwrap();
    assert_eq!(swept.events, 1);
    let of_the_day: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM deliveries WHERE event_seq >= $1 AND event_seq < $2",
            &[&(n << 32), &((n + 1) << 32)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        of_the_day, 0,
        "the next day's delivery of the dropped day's event"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM attempts").await,
        2,
        "the attempts of the next day's events only"
    );
    assert!(
        store
            .get_delivery("ten_a", &late.id)
            .await
            .unwrap()
            .is_none()
    );

    // A concurrent detach of the next day, cancelled while it waits for a reader.
    let mut reader = connect().await;
    let reading = reader.transaction().await.unwrap();
    reading
        .batch_execute("SELECT 1 FROM events LIMIT 1")
        .await
        .unwrap();
    let detacher = connect().await;
    let pid: i32 = detacher
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let detach = tokio::spawn(async move {
        detacher
            .batch_execute(&format!(
                "ALTER TABLE events DETACH PARTITION events_e{} CONCURRENTLY",
                n + 1
            ))
            .await
    });
    let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
    while count(PENDING_HERE).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the detach never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    client
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .await
        .unwrap();
    assert!(detach.await.unwrap().is_err(), "the detach was cancelled");
    reading.commit().await.unwrap();
    assert_eq!(count(PENDING_HERE).await, 1);
    published_on(store, "latest", next + 2 * DAY, true).await;
    let swept = store.sweep(Some(next + DAY), None, 100).await.unwrap();
    assert_eq!(swept.events, 0, "the pending day's events are not counted");
    assert_eq!(count(PENDING_HERE).await, 0);
    for table in ["events", "deliveries", "attempts"] {
        let gone: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NULL",
                &[&format!("{table}_e{}", n + 1)],
            )
            .await
            .unwrap()
            .get(0);
        assert!(gone, "{table}");
    }
    assert!(
        store
            .get_event("ten_a", "latest", None)
            .await
            .unwrap()
            .is_some()
    );
}

/// On PostgreSQL, a transaction that changes several queue rows and streams takes them in one
/// order: queue rows by key, then streams. Each operation below runs while another
/// transaction holds the first of a stream's two queue rows, taken as recording outcomes takes
/// them; once the operation waits for that transaction, it takes the second row and the
/// stream. Had the operation taken the second row or the stream first, the two would wait for
/// each other and the server would abort one of them.
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn postgres_writes_take_queue_rows_then_streams_in_one_order() {
    let b = postgres().await;
    let store = b.store.clone();
    let lease_until = Some(NOW + 60_000);
    // Two deliveries to a stream of its own, leased, and the queue rows' keys in order.
    let leased = |tenant: &'static str, name: &'static str| {
        let store = store.clone();
        async move {
            let id = format!("est_{name}");
            stream(
                &*store,
                tenant,
                &id,
                &format!("{name}.*"),
                StreamStatus::Enabled,
            )
            .await;
            let events: Vec<_> = (1..=2)
                .map(|n| event(&format!("{name}-{n}"), &format!("{name}.x")))
                .collect();
            let published = store
                .publish(tenant, events, NOW, lease_until)
                .await
                .unwrap();
            let mut claimed: Vec<_> = published.into_iter().flat_map(|p| p.leased).collect();
            claimed.sort_by_key(|c| c.key);
            assert_eq!(claimed.len(), 2);
            (id, claimed)
        }
    };

    // Outcomes offered in the other order than their keys.
    let (id, claimed) = leased("ten_a", "record").await;
    let outcomes: Vec<_> = claimed
        .iter()
        .rev()
        .map(|c| outcome(c, DeliveryStatus::Succeeded, None))
        .collect();
    let recording = store.clone();
    waits_without_deadlock(&b, ("ten_a", &id), &claimed, async move {
        recording.record(outcomes, NOW).await.map(|_| ())
    })
    .await;

    // Leases given back in the other order than their keys.
    let (id, claimed) = leased("ten_a", "release").await;
    let leases: Vec<_> = claimed.iter().rev().map(|c| (c.key, c.lease)).collect();
    let releasing = store.clone();
    waits_without_deadlock(&b, ("ten_a", &id), &claimed, async move {
        releasing.release(leases, NOW).await
    })
    .await;

    // A backlog whose first delivery is due after the second (a retry), skipped with the
    // stream's update.
    let (id, claimed) = leased("ten_a", "skip").await;
    let retry = outcome(&claimed[0], DeliveryStatus::Pending, Some(NOW + 3_600_000));
    store.record(vec![retry], NOW).await.unwrap();
    let mut update = StreamUpdate {
        stream: store.get_stream("ten_a", &id).await.unwrap().unwrap(),
        skip_backlog: true,
        notices: Vec::new(),
    };
    update.stream.updated_at = NOW + 1;
    let updating = store.clone();
    waits_without_deadlock(&b, ("ten_a", &id), &claimed, async move {
        updating.update_stream(update).await.map(|_| ())
    })
    .await;

    // A stream deleted with its backlog.
    let (id, claimed) = leased("ten_a", "delete").await;
    let deleting = store.clone();
    let deleted = id.clone();
    waits_without_deadlock(&b, ("ten_a", &id), &claimed, async move {
        deleting
            .delete_stream("ten_a", &deleted, NOW)
            .await
            .map(|_| ())
    })
    .await;

    // An expired `herald listen` session deleted with its backlog (its deliveries are
    // claimed, never leased at publish).
    let session = listen_session("session.*", NOW);
    store.create_stream(session, None).await.unwrap();
    let events: Vec<_> = (1..=2)
        .map(|n| event(&format!("session-{n}"), "session.x"))
        .collect();
    store.publish("ten_a", events, NOW, None).await.unwrap();
    let batch = store
        .claim(request("ten_a", "est_session", 10), NOW, NOW + 60_000)
        .await
        .unwrap();
    let mut claimed = batch[0].deliveries.clone();
    claimed.sort_by_key(|c| c.key);
    assert_eq!(claimed.len(), 2);
    let sweeping = store.clone();
    waits_without_deadlock(&b, ("ten_a", "est_session"), &claimed, async move {
        let expired = sweeping.delete_expired_streams(NOW + 1).await?;
        assert_eq!(expired, [("ten_a".to_string(), "est_session".to_string())]);
        Ok(())
    })
    .await;

    // A tenant deleted with its backlog, whose first delivery's queue row was written last.
    let (id, claimed) = leased("ten_b", "tenant").await;
    let retry = outcome(&claimed[0], DeliveryStatus::Pending, Some(NOW + 3_600_000));
    store.record(vec![retry], NOW).await.unwrap();
    let deleting = store.clone();
    waits_without_deadlock(&b, ("ten_b", &id), &claimed, async move {
        deleting.delete_tenant("ten_b").await.map(|_| ())
    })
    .await;
}

/// Holds the queue row of `claimed[0]` in a transaction of its own, runs `operation` until it
/// waits for that transaction, then takes the queue row of `claimed[1]` and the stream's row,
/// and commits: the order recording outcomes takes them in. Both must succeed: had the
/// operation taken either before the first row, the two would wait for each other and the
/// server would abort one.
async fn waits_without_deadlock(
    b: &Backend,
    (tenant_id, stream_id): (&str, &str),
    claimed: &[herald::store::Claimed],
    operation: impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
) {
    let queue_row = |key: i64| format!("SELECT 1 FROM queue WHERE seq = {key} FOR UPDATE");
    let stream_row = format!(
        "SELECT 1 FROM streams WHERE tenant_id = '{tenant_id}' AND id = '{stream_id}' FOR UPDATE"
    );
    let (first, then) = (
        queue_row(claimed[0].key),
        [queue_row(claimed[1].key), stream_row],
    );
    let database = b.database.as_ref().unwrap();
    let connect = || crate::helpers::sql_client(&database.url);
    let (mut holder, watcher) = (connect().await, connect().await);
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let tx = holder.transaction().await.unwrap();
    assert_eq!(
        tx.execute(&first, &[]).await.unwrap(),
        1,
        "{stream_id}: {first}"
    );
    let operation = tokio::spawn(operation);
    // Until the operation waits for a lock held here (a session blocked by the holder, not
    // by another: a publish's notification can wait for a lock of its own).
    let mut waited = 0;
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND application_name = current_setting('application_name') \
                 AND $1 = ANY(pg_blocking_pids(pid))",
                &[&holder_pid],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            !operation.is_finished(),
            "{stream_id}: the operation finished without waiting for the held row"
        );
        waited += 1;
        assert!(waited < 1_000, "{stream_id}: the operation never waited");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for sql in &then {
        let taken = tx.execute(sql, &[]).await;
        assert!(
            matches!(taken, Ok(1)),
            "{stream_id}: the holder could not take what it takes next ({sql}): {taken:?}"
        );
    }
    tx.commit().await.unwrap();
    let done = operation.await.unwrap();
    assert!(done.is_ok(), "{stream_id}: {done:?}");
}

/// Runs `sql` on the backend's database directly, as data written before a rule existed.
async fn execute_sql(b: &Backend, sql: &str) {
    if let Some(dir) = &b.dir {
        let conn = rusqlite::Connection::open(dir.path().join("store.sqlite3")).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn.execute_batch(sql).unwrap();
    }
    if let Some(database) = &b.database {
        let client = crate::helpers::sql_client(&database.url).await;
        client.batch_execute(sql).await.unwrap();
    }
}

async fn stream_names_are_unique_per_tenant_and_earlier_duplicates_keep_working(b: Backend) {
    let store = &*b.store;
    for id in ["est_one", "est_two"] {
        stream(store, "ten_a", id, "*", StreamStatus::Enabled).await;
    }
    let mut copy = store.get_stream("ten_a", "est_one").await.unwrap().unwrap();
    copy.id = "est_copy".into();
    let taken = store.create_stream(copy.clone(), None).await;
    assert!(
        matches!(&taken, Err(StoreError::NameTaken(id)) if id == "est_one"),
        "{}: {taken:?}",
        b.name
    );
    assert!(
        store
            .get_stream("ten_a", "est_copy")
            .await
            .unwrap()
            .is_none()
    );
    // Another tenant may use the name.
    copy.tenant_id = "ten_b".into();
    store.create_stream(copy, None).await.unwrap();

    let update = |stream: Stream| StreamUpdate {
        stream,
        skip_backlog: false,
        notices: Vec::new(),
    };
    let mut two = store.get_stream("ten_a", "est_two").await.unwrap().unwrap();
    two.name = "est_one".into();
    let renamed = store.update_stream(update(two.clone())).await;
    assert!(
        matches!(&renamed, Err(StoreError::NameTaken(id)) if id == "est_one"),
        "{}: {renamed:?}",
        b.name
    );
    let kept = store.get_stream("ten_a", "est_two").await.unwrap().unwrap();
    assert_eq!(kept.name, "est_two");

    // Streams that shared a name before names were unique keep working until renamed.
    execute_sql(
        &b,
        "UPDATE streams SET name = 'est_one' WHERE id = 'est_two'",
    )
    .await;
    two.status = StreamStatus::Paused;
    store
        .update_stream(update(two.clone()))
        .await
        .unwrap()
        .unwrap();
    two.name = "est_three".into();
    store.update_stream(update(two)).await.unwrap().unwrap();
    let three = store.get_stream("ten_a", "est_two").await.unwrap().unwrap();
    assert_eq!(
        (three.name.as_str(), three.status),
        ("est_three", StreamStatus::Paused)
    );
}

/// Retention keeps the store's newest event, whatever its age: on the embedded store `seq`
/// is a row id, which SQLite would hand out again once the highest one is gone, and a reader
/// placed after it would then skip the events that took its number.
async fn retention_keeps_the_newest_event_so_log_offsets_never_repeat(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    let start = store
        .log_position("ten_a", LogStart::End)
        .await
        .unwrap()
        .unwrap();
    store
        .publish(
            "ten_a",
            vec![event("a1", "user.created"), event("a2", "user.created")],
            NOW,
            None,
        )
        .await
        .unwrap();
    let (ids, last) = read_ids(store, "ten_a", start, 2).await;
    assert_eq!(ids, ["a1", "a2"], "{name}");
    let swept = store.sweep(Some(NOW + 1), None, 100).await.unwrap();
    assert_eq!(swept.events, 1, "{name}: a1 only");
    store
        .publish("ten_a", vec![event("a3", "user.created")], NOW + 2, None)
        .await
        .unwrap();
    let (ids, _) = read_ids(store, "ten_a", last, 1).await;
    assert_eq!(ids, ["a3"], "{name}");
}

const DAY: i64 = 86_400_000;

/// The first millisecond of a UTC day a few days after `NOW`.
fn midnight_after_now(days: i64) -> i64 {
    NOW - NOW.rem_euclid(DAY) + days * DAY
}

/// Publishes `id` to `ten_a` at `at` and delivers it to `est_a` at once when `delivered`.
async fn published_on(store: &dyn Store, id: &str, at: i64, delivered: bool) {
    let published = store
        .publish(
            "ten_a",
            vec![event(id, "user.created")],
            at,
            Some(at + 60_000),
        )
        .await
        .unwrap();
    assert!(!published[0].duplicate, "{id}");
    if delivered {
        let leased = &published[0].leased[0];
        store
            .record(vec![outcome(leased, DeliveryStatus::Succeeded, None)], at)
            .await
            .unwrap();
    }
}

/// History by UTC day, as retention removes it (on PostgreSQL each day is a partition,
/// dropped whole): a duplicate published on the next day is refused as on the same day;
/// a sweep at a day boundary removes the earlier days' events with their deliveries and
/// keys (so the id can be published again), keeps those a pending delivery holds, and
/// leaves the later days alone.
async fn retention_removes_whole_days_and_a_duplicate_is_refused_across_them(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    stream(store, "ten_a", "est_a", "user.*", StreamStatus::Enabled).await;
    let day = midnight_after_now(3);
    published_on(store, "gone", day + DAY - 1, true).await;
    let again = store
        .publish(
            "ten_a",
            vec![event("gone", "user.created")],
            day + DAY,
            None,
        )
        .await
        .unwrap();
    assert!(again[0].duplicate, "{name}: a duplicate on the next day");
    published_on(store, "held", day + DAY + 5, false).await;
    published_on(store, "done", day + DAY + 6, true).await;
    published_on(store, "later", day + 2 * DAY + 7, true).await;
    let gone = store.event_deliveries("ten_a", "gone").await.unwrap();
    assert_eq!(gone.len(), 1, "{name}");

    let swept = store.sweep(Some(day + 2 * DAY), None, 100).await.unwrap();
    assert_eq!(swept.events, 2, "{name}: gone and done");
    for id in ["gone", "done"] {
        assert!(
            store.get_event("ten_a", id, None).await.unwrap().is_none(),
            "{name}: {id}"
        );
        assert!(
            store
                .event_deliveries("ten_a", id)
                .await
                .unwrap()
                .is_empty(),
            "{name}: {id}"
        );
    }
    assert!(
        store
            .get_delivery("ten_a", &gone[0].id)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    for id in ["held", "later"] {
        assert!(
            store.get_event("ten_a", id, None).await.unwrap().is_some(),
            "{name}: {id}"
        );
    }
    // The swept id is free again.
    published_on(store, "gone", day + 2 * DAY + 8, true).await;

    // Once delivered, the held event goes with the next sweep.
    let claimed = store
        .claim(
            request("ten_a", "est_a", 10),
            day + 2 * DAY + 9,
            day + 3 * DAY,
        )
        .await
        .unwrap();
    let held: Vec<_> = claimed[0].deliveries.iter().collect();
    assert_eq!(held.len(), 1, "{name}");
    assert_eq!(held[0].event.id, "held", "{name}");
    store
        .record(
            vec![outcome(held[0], DeliveryStatus::Succeeded, None)],
            day + 2 * DAY + 10,
        )
        .await
        .unwrap();
    let swept = store.sweep(Some(day + 2 * DAY), None, 100).await.unwrap();
    assert_eq!(swept.events, 1, "{name}: held");
    assert!(
        store
            .get_event("ten_a", "held", None)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    assert!(
        store
            .get_event("ten_a", "gone", None)
            .await
            .unwrap()
            .is_some(),
        "{name}: published again on a later day"
    );
}

/// A listen session's stream: one connection holds it at a time and keeps its expiry ahead;
/// past the expiry it is deleted with what it had pending, and only sessions are.
/// `ten_a`'s `herald listen` session `est_session`, subscribed to `pattern`.
fn listen_session(pattern: &str, expires_at: i64) -> Stream {
    Stream {
        tenant_id: "ten_a".into(),
        id: "est_session".into(),
        name: "herald listen est_session".into(),
        status: StreamStatus::Enabled,
        status_reason: None,
        subscriptions: vec![Subscription {
            event_type: pattern.into(),
        }],
        destination: Destination::Listen(herald::destinations::listen::ListenConfig {
            forward_to: "http://localhost:3000/hook".into(),
        }),
        payload_format: PayloadFormat::Cloudevents,
        content_mode: None,
        retry_policy: RetryPolicy::default(),
        max_consecutive_failures: 0,
        disable_after_failing_seconds: 0,
        created_at: NOW,
        updated_at: NOW,
        expires_at: Some(expires_at),
    }
}

async fn a_listen_session_is_held_by_one_connection_and_deleted_once_expired(b: Backend) {
    let store = &*b.store;
    let mut session = listen_session("*", NOW + 60_000);
    store.create_stream(session.clone(), None).await.unwrap();
    // A plain stream, even one given an expiry, is never a session.
    stream(store, "ten_a", "est_plain", "*", StreamStatus::Enabled).await;
    assert!(
        !store
            .hold_stream("ten_a", "est_plain", "c1", NOW)
            .await
            .unwrap()
    );
    assert!(
        !store
            .hold_stream("ten_b", "est_session", "c1", NOW)
            .await
            .unwrap(),
        "{}",
        b.name
    );

    assert!(
        store
            .hold_stream("ten_a", "est_session", "c1", NOW + 60_000)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .touch_stream("ten_a", "est_session", "c1", NOW + 80_000)
            .await
            .unwrap(),
        Holding::Held
    );
    // A second connection takes it; the first learns so at its next touch.
    assert!(
        store
            .hold_stream("ten_a", "est_session", "c2", NOW + 90_000)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .touch_stream("ten_a", "est_session", "c1", NOW + 100_000)
            .await
            .unwrap(),
        Holding::Taken
    );
    assert_eq!(
        store
            .get_stream("ten_a", "est_session")
            .await
            .unwrap()
            .unwrap()
            .expires_at,
        Some(NOW + 90_000),
        "a taken session's expiry is its new holder's"
    );
    store
        .publish("ten_a", vec![event("e1", "user.created")], NOW, None)
        .await
        .unwrap();
    fan_out_all(store).await;
    assert_eq!(
        store.backlog("ten_a", "est_session").await.unwrap().pending,
        1
    );
    assert!(
        store
            .delete_expired_streams(NOW + 89_999)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.delete_expired_streams(NOW + 90_000).await.unwrap(),
        vec![("ten_a".to_string(), "est_session".to_string())]
    );
    assert!(
        store
            .get_stream("ten_a", "est_session")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_stream("ten_a", "est_plain")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store
            .touch_stream("ten_a", "est_session", "c2", NOW + 120_000)
            .await
            .unwrap(),
        Holding::Gone
    );
    let backlogs = store.backlogs().await.unwrap();
    assert!(
        backlogs.iter().all(|b| b.stream_id != "est_session"),
        "what it had pending went with it: {backlogs:?}"
    );
    // Created again with an expiry in the past: gone at the next sweep.
    session.expires_at = Some(NOW);
    store.create_stream(session, None).await.unwrap();
    assert_eq!(store.delete_expired_streams(NOW).await.unwrap().len(), 1);
}

async fn console_sessions_serve_while_their_token_is_valid_and_end_with_it(b: Backend) {
    let store = &*b.store;
    let name = b.name;
    let token = |id: &str, tenant: Option<&str>| Token {
        id: id.into(),
        tenant_id: tenant.map(String::from),
        name: id.into(),
        scopes: vec!["read:event_streams".into()],
        created_at: NOW,
    };
    store
        .put_token(token("tok_p", None), hash_token("platform"))
        .await
        .unwrap();
    store
        .put_token(token("tok_a", Some("ten_a")), hash_token("tenant a"))
        .await
        .unwrap();
    store
        .put_token(token("tok_b", Some("ten_b")), hash_token("tenant b"))
        .await
        .unwrap();
    let session = |id: &str, token: &str, tenant: Option<&str>, expires_at: i64| ConsoleSession {
        hash: hash_token(id),
        token_hash: hash_token(token),
        tenant_id: tenant.map(String::from),
        scopes: None,
        name: None,
        created_at: NOW,
        expires_at,
    };
    let platform = session("hcs_p", "platform", None, NOW + 1_000);
    for s in [
        platform.clone(),
        session("hcs_a", "tenant a", Some("ten_a"), NOW + 2_000),
        session("hcs_short", "tenant a", Some("ten_a"), NOW + 500),
        session("hcs_b", "tenant b", Some("ten_b"), NOW + 2_000),
    ] {
        store.create_console_session(s).await.unwrap();
    }

    let (found, found_token) = store
        .find_console_session(hash_token("hcs_p"))
        .await
        .unwrap()
        .expect("the session");
    assert_eq!(found, platform, "{name}");
    assert_eq!(
        (found_token.id.as_str(), found_token.tenant_id),
        ("tok_p", None),
        "{name}"
    );
    let (_, tenant_token) = store
        .find_console_session(hash_token("hcs_a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tenant_token.tenant_id.as_deref(), Some("ten_a"), "{name}");
    assert!(
        store
            .find_console_session(hash_token("hcs_unknown"))
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );

    // Its end moves; an unknown session has none to move.
    assert!(
        store
            .touch_console_session(hash_token("hcs_p"), NOW + 5_000)
            .await
            .unwrap()
    );
    let (touched, _) = store
        .find_console_session(hash_token("hcs_p"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(touched.expires_at, NOW + 5_000, "{name}");
    assert!(
        !store
            .touch_console_session(hash_token("hcs_unknown"), NOW)
            .await
            .unwrap(),
        "{name}"
    );

    // Ended sessions are cleared, and only those.
    assert_eq!(
        store
            .delete_expired_console_sessions(NOW + 500)
            .await
            .unwrap(),
        1,
        "{name}"
    );
    assert!(
        !store
            .delete_console_session(hash_token("hcs_short"))
            .await
            .unwrap(),
        "{name}: already cleared"
    );

    // A revoked token's sessions no longer serve.
    assert!(
        store
            .revoke_token(Some("ten_a"), "tok_a", NOW)
            .await
            .unwrap()
    );
    assert!(
        store
            .find_console_session(hash_token("hcs_a"))
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    // Neither do those of a token given another secret (a configured admin token changed).
    store
        .put_token(token("tok_p", None), hash_token("platform, renewed"))
        .await
        .unwrap();
    assert!(
        store
            .find_console_session(hash_token("hcs_p"))
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );

    // Deleting a tenant deletes its tokens' sessions.
    assert!(store.delete_tenant("ten_b").await.unwrap());
    assert!(
        !store
            .delete_console_session(hash_token("hcs_b"))
            .await
            .unwrap(),
        "{name}"
    );
    // Signing out deletes the session, once.
    assert!(
        store
            .delete_console_session(hash_token("hcs_p"))
            .await
            .unwrap(),
        "{name}"
    );
    assert!(
        !store
            .delete_console_session(hash_token("hcs_p"))
            .await
            .unwrap(),
        "{name}"
    );
}

async fn a_console_link_is_taken_once_before_it_ends_and_its_sessions_keep_its_grant(b: Backend) {
    let store = &b.store;
    let name = b.name;
    store
        .put_token(
            Token {
                id: "tok_p".into(),
                tenant_id: None,
                name: "platform".into(),
                scopes: vec!["manage:tenants".into(), "read:events".into()],
                created_at: NOW,
            },
            hash_token("platform"),
        )
        .await
        .unwrap();
    let link = |secret: &str, tenant: &str, expires_at: i64| ConsoleLink {
        hash: hash_token(secret),
        token_hash: hash_token("platform"),
        tenant_id: tenant.into(),
        scopes: vec!["read:events".into()],
        name: Some("Ada at Acme".into()),
        created_at: NOW,
        expires_at,
    };
    let once = link("hcl_once", "ten_a", NOW + 1_000);
    for l in [
        once.clone(),
        link("hcl_ended", "ten_a", NOW + 10),
        link("hcl_b", "ten_b", NOW + 1_000),
    ] {
        store.create_console_link(l).await.unwrap();
    }

    // Looking does not take it; an ended one is not found.
    for _ in 0..2 {
        assert_eq!(
            store
                .find_console_link(hash_token("hcl_once"), NOW)
                .await
                .unwrap()
                .as_ref(),
            Some(&once),
            "{name}"
        );
    }
    assert!(
        store
            .find_console_link(hash_token("hcl_ended"), NOW + 10)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );

    // Of concurrent takers, exactly one gets it; later ones find nothing.
    let takers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .consume_console_link(hash_token("hcl_once"), NOW)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut taken = Vec::new();
    for taker in takers {
        taken.extend(taker.await.unwrap());
    }
    assert_eq!(taken, vec![once], "{name}");
    assert!(
        store
            .consume_console_link(hash_token("hcl_once"), NOW)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    assert!(
        store
            .find_console_link(hash_token("hcl_once"), NOW)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    // An ended link is not given, and is gone after the attempt.
    assert!(
        store
            .consume_console_link(hash_token("hcl_ended"), NOW + 10)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );

    // A session a link opened keeps the link's tenant, scopes and name.
    let session = ConsoleSession {
        hash: hash_token("hcs_link"),
        token_hash: hash_token("platform"),
        tenant_id: Some("ten_a".into()),
        scopes: Some(vec!["read:events".into()]),
        name: Some("Ada at Acme".into()),
        created_at: NOW,
        expires_at: NOW + 1_000,
    };
    store.create_console_session(session.clone()).await.unwrap();
    let (found, token) = store
        .find_console_session(hash_token("hcs_link"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, session, "{name}");
    assert_eq!(token.id, "tok_p", "{name}");

    // Deleting the tenant deletes its links and its link sessions.
    store
        .create_console_link(link("hcl_a", "ten_a", NOW + 5_000))
        .await
        .unwrap();
    assert!(store.delete_tenant("ten_a").await.unwrap());
    assert!(
        store
            .find_console_link(hash_token("hcl_a"), NOW)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    assert!(
        store
            .find_console_session(hash_token("hcs_link"))
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    // A session made while its tenant was being deleted never reaches a tenant made again
    // under that id.
    store
        .create_console_session(ConsoleSession {
            hash: hash_token("hcs_orphan"),
            created_at: NOW,
            ..session.clone()
        })
        .await
        .unwrap();
    store
        .create_tenant(Tenant {
            id: "ten_a".into(),
            name: "someone else".into(),
            created_at: NOW + 1,
        })
        .await
        .unwrap();
    assert!(
        store
            .find_console_session(hash_token("hcs_orphan"))
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    store
        .delete_console_session(hash_token("hcs_orphan"))
        .await
        .unwrap();

    // Withdrawing a tenant's links deletes its unused links and its link sessions, and
    // nothing of another tenant's or of a token's session.
    store
        .create_tenant(Tenant {
            id: "ten_w".into(),
            name: "w".into(),
            created_at: NOW,
        })
        .await
        .unwrap();
    store
        .create_console_link(link("hcl_w1", "ten_w", NOW + 5_000))
        .await
        .unwrap();
    store
        .create_console_link(link("hcl_w2", "ten_w", NOW + 5_000))
        .await
        .unwrap();
    for (id, scopes) in [
        ("hcs_w_link", Some(vec!["read:events".to_string()])),
        ("hcs_w_token", None),
    ] {
        store
            .create_console_session(ConsoleSession {
                hash: hash_token(id),
                tenant_id: Some("ten_w".into()),
                scopes,
                created_at: NOW + 2,
                ..session.clone()
            })
            .await
            .unwrap();
    }
    assert_eq!(
        store.withdraw_console_links("ten_w").await.unwrap(),
        (2, 1),
        "{name}"
    );
    assert!(
        store
            .find_console_session(hash_token("hcs_w_link"))
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    assert!(
        store
            .find_console_session(hash_token("hcs_w_token"))
            .await
            .unwrap()
            .is_some(),
        "{name}"
    );
    assert!(
        store
            .find_console_link(hash_token("hcl_w1"), NOW)
            .await
            .unwrap()
            .is_none(),
        "{name}"
    );
    store
        .delete_console_session(hash_token("hcs_w_token"))
        .await
        .unwrap();

    // Ended links are cleared with ended sessions, and only those.
    store
        .create_console_link(link("hcl_later", "ten_b", NOW + 5_000))
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_expired_console_sessions(NOW + 1_000)
            .await
            .unwrap(),
        1,
        "{name}: hcl_b"
    );
    assert!(
        store
            .find_console_link(hash_token("hcl_later"), NOW + 1_000)
            .await
            .unwrap()
            .is_some(),
        "{name}"
    );
}

/// Waits until `done` holds, polling the store, for at most the suite's patience.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// On PostgreSQL, publishes that arrive while every writer is busy share the next commit. A
/// publish in such a group that fails (here: a row the database refuses) fails alone, as it
/// would have alone: its whole batch is rolled back and it gets the error, while the others
/// in the group are stored, with their deliveries, in one transaction.
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn a_failing_publish_fails_alone_in_its_group_commit() {
    let database = postgres_database().await;
    let pg = Arc::new(
        PgStore::connect(&database.url, Cipher::from_base64(KEY).unwrap(), 4)
            .await
            .expect("the PostgreSQL store opens"),
    );
    let b = with_tenants(Backend {
        name: "postgres",
        store: pg.clone(),
        dir: None,
        database: Some(database),
    })
    .await;
    let store = &*b.store;
    stream(store, "ten_a", "est_a", "user.*", StreamStatus::Enabled).await;
    stream(store, "ten_b", "est_b", "user.*", StreamStatus::Enabled).await;
    refuse_inserts(&b, "events", "NEW.id = 'poison'").await;

    // Holds the first publish's insert, so the others queue behind its commit.
    let mut client = crate::helpers::sql_client(&b.database.as_ref().unwrap().url).await;
    // The day's history partitions are made first (their making waits for the lock below),
    // by a publish whose event is then taken out again.
    store
        .publish("ten_a", vec![event("warm-up", "warm.up")], NOW, None)
        .await
        .unwrap();
    client
        .batch_execute(
            "DELETE FROM event_keys WHERE id = 'warm-up'; DELETE FROM events WHERE id = 'warm-up'",
        )
        .await
        .unwrap();
    // And the next day's, made ahead in the background.
    let next_day = format!("events_e{}", NOW / DAY + 1);
    let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
    while client
        .query_one("SELECT to_regclass($1) IS NULL", &[&next_day])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{next_day} never made"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let lock = client.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE events IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let publish = |tenant: &'static str, ids: &'static [&'static str]| {
        let store = b.store.clone();
        tokio::spawn(async move {
            let events = ids.iter().map(|id| event(id, "user.created")).collect();
            store.publish(tenant, events, NOW, None).await
        })
    };
    // One publish per writer, each held by the lock.
    const FIRST: [&[&str]; 4] = [&["first-0"], &["first-1"], &["first-2"], &["first-3"]];
    let writers = herald::store::postgres::PUBLISH_WRITERS;
    assert!(writers <= FIRST.len());
    let blocked = "SELECT COUNT(*) FROM pg_locks WHERE NOT granted \
                   AND relation = 'events'::regclass";
    let mut firsts = Vec::new();
    for (n, ids) in FIRST.into_iter().take(writers).enumerate() {
        firsts.push(publish("ten_a", ids));
        let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
        while lock.query_one(blocked, &[]).await.unwrap().get::<_, i64>(0) <= n as i64 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publish {n} never reached the table"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    let group = [
        publish("ten_a", &["a1", "a2"]),
        publish("ten_a", &["ok-beside-poison", "poison"]),
        publish("ten_b", &["b1"]),
        publish("ten_a", &["a1"]),
    ];
    until("the group is queued", || pg.publishes_waiting() == 4).await;
    lock.commit().await.unwrap();

    for first in firsts {
        assert!(!first.await.unwrap().unwrap()[0].duplicate);
    }
    let [a, poison, b1, again] = group;
    let a = a.await.unwrap().unwrap();
    let poison = poison.await.unwrap();
    let b1 = b1.await.unwrap().unwrap();
    let again = again.await.unwrap().unwrap();
    assert!(poison.is_err(), "the refused publish fails: {poison:?}");
    assert_eq!(
        a.iter().map(|p| p.duplicate).collect::<Vec<_>>(),
        [false, false]
    );
    assert_eq!(a[0].streams, ["est_a"]);
    assert_eq!(b1[0].streams, ["est_b"]);
    assert!(!b1[0].duplicate);
    assert!(
        again[0].duplicate,
        "a repeat later in the group is a duplicate"
    );
    assert!(
        store
            .get_event("ten_a", "ok-beside-poison", None)
            .await
            .unwrap()
            .is_none(),
        "the failed publish stored nothing of its batch"
    );

    // The others were committed together, in one transaction after the first's.
    let rows = client
        .query(
            "SELECT id, xid, (SELECT COUNT(*) FROM deliveries d WHERE d.tenant_id = e.tenant_id \
             AND d.event_seq = e.seq) FROM events e ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let (firsts, group): (Vec<_>, Vec<_>) = stored
        .iter()
        .partition(|(id, _, _)| id.starts_with("first-"));
    assert_eq!(firsts.len(), writers);
    let ids: Vec<&str> = group.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["a1", "a2", "b1"]);
    assert!(stored.iter().all(|(_, _, deliveries)| *deliveries == 1));
    let xids: std::collections::HashSet<i64> = group.iter().map(|(_, x, _)| *x).collect();
    assert_eq!(xids.len(), 1, "one commit for the group: {stored:?}");
    assert!(
        firsts.iter().all(|(_, x, _)| !xids.contains(x)),
        "the first publishes went alone: {stored:?}"
    );
}
