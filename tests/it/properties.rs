//! Property tests of everything that parses outside input, and of the signer: publish bodies
//! and CloudEvents attributes, the JSON depth limit, timestamps, `traceparent`, subscription
//! patterns, delivery filters (through the API), tenant schemas for `data`, the configuration
//! file, and Standard Webhooks signatures against the reference crate's signer and verifier.
//!
//! Inputs come from generators and from the seed corpus in `tests/corpus/`: each seed is
//! checked as it is, then mutated (bytes flipped, cut, repeated, JSON tokens spliced in) so
//! the cases reach past the first `{`. Failing cases are kept in
//! `tests/proptest-regressions.txt` and run first from then on. `PROPTEST_CASES` sets the
//! cases per property (256 by default; the README gives a longer run).

use std::path::PathBuf;

use axum::http::HeaderMap;
use herald::catalog::{Catalog, is_valid_pattern, is_valid_type_name, pattern_matches};
use herald::destinations::webhook::signing::{SigningKey, signature_header};
use herald::event::{MAX_JSON_DEPTH, format_time, json_depth, parse_event, parse_time};
use herald::secret::Secret;
use herald::trace::TraceParent;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;
use serde_json::value::RawValue;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions.txt",
        ))),
        ..ProptestConfig::default()
    }
}

fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

fn corpus_lines(file: &str) -> Vec<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(file);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| line.as_bytes().to_vec())
        .collect()
}

/// Tokens spliced into seeds: what parsers branch on.
const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    ",",
    ":",
    "null",
    "true",
    "0",
    "-1.5e300",
    "1e999",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"type\"",
    "\"data\"",
    "\"data_base64\"",
    "\"id\"",
    "\"time\"",
    "\"source\"",
    "\"specversion\"",
    "\"user.created\"",
    "\"1.0\"",
    "\"2025-01-29T18:08:43Z\"",
    "\"tenant\"",
    "\"subject\"",
    " ",
    "\u{e9}",
    "\u{1f600}",
    "[[[[[[[[",
    "]]]]]]]]",
];

/// One edit of a seed; positions are taken modulo its length.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Remove(usize, usize),
    Insert(usize, &'static str),
    Repeat(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<usize>(), 1..16usize).prop_map(|(at, n)| Edit::Remove(at, n)),
        (any::<usize>(), prop::sample::select(JSON_TOKENS)).prop_map(|(at, t)| Edit::Insert(at, t)),
        (any::<usize>(), 1..64usize).prop_map(|(at, n)| Edit::Repeat(at, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match *e {
            Edit::Set(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] = b;
            }
            Edit::Set(..) => {}
            Edit::Remove(i, n) => {
                let i = at(i, bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Insert(i, token) => {
                let i = at(i, bytes.len());
                bytes.splice(i..i, token.bytes());
            }
            Edit::Repeat(i, n) => {
                let i = at(i, bytes.len());
                let end = (i + n).min(bytes.len());
                let copy = bytes[i..end].to_vec();
                bytes.splice(i..i, copy);
            }
        }
    }
    bytes
}

/// A seed from `seeds`, edited 0 to 7 times.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit(), 0..8),
    )
        .prop_map(|(seed, edits)| apply(seed, &edits))
}

// ---- Publish bodies and CloudEvents attributes -------------------------------------------

const NOW: i64 = 1_700_000_000_000;

/// Whatever the bytes, the parser answers with an event or a typed refusal, and an event it
/// accepts renders to a payload that parses back to the same event.
fn check_publish_body(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(bytes) else {
        return Ok(()); // not JSON: refused before any event is parsed
    };
    let catalog = Catalog::builtin();
    match parse_event(&raw, &catalog, NOW, "urn:default") {
        Err(e) => {
            prop_assert!(
                [
                    "invalid_event",
                    "missing_type",
                    "unknown_event_type",
                    "invalid_data",
                    "event_too_large",
                    "too_deep"
                ]
                .contains(&e.code),
                "unexpected code {}",
                e.code
            );
            prop_assert!(!e.message.is_empty());
        }
        Ok(event) => {
            prop_assert!(catalog.get(&event.event_type).is_some());
            prop_assert!(!event.id.trim().is_empty() && !event.source.trim().is_empty());
            for name in event.extensions.keys() {
                prop_assert!(
                    name.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                        || name == "data_base64",
                    "extension {name:?} kept"
                );
            }
            let rendered = event.to_cloudevent();
            let value: Value = serde_json::from_slice(&rendered)
                .map_err(|e| TestCaseError::fail(format!("rendered payload is not JSON: {e}")))?;
            prop_assert_eq!(&value["id"], &Value::String(event.id.clone()));
            let again = parse_event(
                &serde_json::from_slice::<Box<RawValue>>(&rendered).unwrap(),
                &catalog,
                NOW + 1,
                "urn:other",
            )
            .map_err(|e| TestCaseError::fail(format!("rendered payload refused: {e:?}")))?;
            prop_assert_eq!(again.data.get(), event.data.get(), "data changed");
            let rendered_again = again.to_cloudevent();
            prop_assert_eq!(
                String::from_utf8_lossy(&rendered_again),
                String::from_utf8_lossy(&rendered)
            );
            serde_json::from_slice::<Value>(&event.to_audit())
                .map_err(|e| TestCaseError::fail(format!("audit payload is not JSON: {e}")))?;
        }
    }
    Ok(())
}

#[test]
fn every_event_seed_parses_or_is_refused_with_a_code() {
    for seed in corpus("events") {
        check_publish_body(&seed).unwrap();
    }
}

/// A JSON value, nested at most `depth` deep, with strings full of brackets and escapes.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[\\[\\]{}\"\\\\a-z \u{e9}\u{1f600}]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(12, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\\[\"]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A valid event in the shape a publisher sends, with every optional attribute maybe there.
fn event_body() -> impl Strategy<Value = Value> {
    let catalog = Catalog::builtin();
    let types: Vec<String> = catalog
        .all()
        .iter()
        .filter(|t| t.schema.is_none())
        .map(|t| t.name.clone())
        .collect();
    (
        prop::sample::select(types),
        prop::option::of("[^\u{0}]{1,40}".prop_filter("not blank", |s| !s.trim().is_empty())),
        prop::option::of("[a-z:/._-]{1,30}".prop_filter("not blank", |s| !s.trim().is_empty())),
        prop::option::of(-62_135_596_800_000i64..253_402_300_799_999),
        prop::option::of("[^\u{0}]{0,20}"),
        prop::option::of(json_value()),
        prop::collection::btree_map(
            "[a-z0-9]{1,20}".prop_filter("not a core attribute", |n| {
                ![
                    "specversion",
                    "id",
                    "source",
                    "type",
                    "time",
                    "subject",
                    "data",
                    "datacontenttype",
                    "dataschema",
                    "tenant",
                ]
                .contains(&n.as_str())
            }),
            prop_oneof![
                "[^\u{0}]{0,30}".prop_map(Value::String),
                any::<i32>().prop_map(Value::from),
                any::<bool>().prop_map(Value::Bool),
            ],
            0..4,
        ),
    )
        .prop_map(|(t, id, source, time, subject, data, extensions)| {
            let mut body = serde_json::Map::new();
            body.insert("type".into(), t.into());
            if let Some(id) = id {
                body.insert("id".into(), id.into());
            }
            if let Some(source) = source {
                body.insert("source".into(), source.into());
            }
            if let Some(time) = time {
                body.insert("time".into(), format_time(time).into());
            }
            if let Some(subject) = subject {
                body.insert("subject".into(), subject.into());
            }
            if let Some(data) = data {
                body.insert("data".into(), data);
            }
            body.extend(extensions);
            Value::Object(body)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_event_seeds_parse_or_are_refused_with_a_code(bytes in mutated(corpus("events"))) {
        check_publish_body(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_parse_or_are_refused_with_a_code(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_publish_body(&bytes)?;
    }

    /// Every valid event is accepted, keeps what was sent, and renders back to itself.
    #[test]
    fn valid_events_round_trip(body in event_body()) {
        let text = serde_json::to_string(&body).unwrap();
        let raw: Box<RawValue> = serde_json::from_str(&text).unwrap();
        let event = parse_event(&raw, &Catalog::builtin(), NOW, "urn:default")
            .map_err(|e| TestCaseError::fail(format!("refused: {e:?}")))?;
        prop_assert_eq!(&event.event_type, body["type"].as_str().unwrap());
        if let Some(id) = body["id"].as_str() {
            prop_assert_eq!(&event.id, id);
        }
        match body["time"].as_str() {
            Some(time) => prop_assert_eq!(Some(event.time), parse_time(time)),
            None => prop_assert_eq!(event.time, NOW),
        }
        // `data` verbatim; the rest as values (a float's text may be written differently).
        if let Some(data) = body.get("data") {
            prop_assert_eq!(event.data.get(), serde_json::to_string(data).unwrap());
        }
        let rendered: Value = serde_json::from_slice(&event.to_cloudevent()).unwrap();
        for (name, value) in body.as_object().unwrap() {
            if name != "data" {
                prop_assert_eq!(&rendered[name], value, "attribute {}", name);
            }
        }
        check_publish_body(text.as_bytes())?;
    }

    /// The depth limit counts what a JSON parser would, whatever the strings hold.
    #[test]
    fn json_depth_agrees_with_the_parsed_value(value in json_value(), pretty in any::<bool>()) {
        let text = if pretty {
            serde_json::to_vec_pretty(&value).unwrap()
        } else {
            serde_json::to_vec(&value).unwrap()
        };
        prop_assert_eq!(json_depth(&text), depth(&value));
    }

    /// Too deep is refused with `too_deep`, never a parser's own error or a stack overflow.
    #[test]
    fn deep_data_is_refused_as_too_deep(extra in 1usize..2_000) {
        let n = MAX_JSON_DEPTH + extra;
        let text = format!(r#"{{"type":"user.created","data":{}{}}}"#, "[".repeat(n - 1), "]".repeat(n - 1));
        let raw: Box<RawValue> = match serde_json::from_str(&text) {
            Ok(raw) => raw,
            Err(_) => return Ok(()), // serde_json's own limit, met before Herald's
        };
        let err = parse_event(&raw, &Catalog::builtin(), NOW, "urn:x").unwrap_err();
        prop_assert_eq!(err.code, "too_deep");
    }

    /// Every millisecond from year 1 to 9999 formats and parses back to itself.
    #[test]
    fn times_round_trip(ms in -62_135_596_800_000i64..253_402_300_799_999) {
        prop_assert_eq!(parse_time(&format_time(ms)), Some(ms));
    }

    /// A time the parser accepts formats to a time that parses to the same instant.
    #[test]
    fn parsed_times_are_stable(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})") {
        if let Some(ms) = parse_time(&text) {
            prop_assert_eq!(parse_time(&format_time(ms)), Some(ms), "{}", format_time(ms));
        }
    }
}

// ---- traceparent -------------------------------------------------------------------------

/// The W3C rules, written the plain way: four dash-separated lowercase-hex fields of 2, 32,
/// 16 and 2 digits; version `ff` invalid; version 00 with nothing after; ids not all zero.
fn traceparent_model(text: &str) -> Option<TraceParent> {
    let fields: Vec<&str> = text.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        (s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then(|| {
            (0..n / 2)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
                .collect::<Vec<u8>>()
        })
    };
    if fields.len() < 4 {
        return None;
    }
    let version = hex(fields[0], 2)?[0];
    let trace_id: [u8; 16] = hex(fields[1], 32)?.try_into().unwrap();
    let parent_id: [u8; 8] = hex(fields[2], 16)?.try_into().unwrap();
    let flags = hex(fields[3], 2)?[0];
    if version == 0xff || (version == 0 && fields.len() != 4) {
        return None;
    }
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// Text shaped like a `traceparent`, each field right or wrong in one of the ways that
/// matter: its length, case, all zeros, version `ff`, something after the flags.
fn traceparent_like() -> impl Strategy<Value = String> {
    let field = |n: usize| {
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), n / 2).prop_map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
            1 => Just("0".repeat(n)),
            1 => Just("f".repeat(n)),
            1 => Just("A".repeat(n)),
            1 => "[0-9a-f]{0,40}",
        ]
    };
    (
        field(2),
        field(32),
        field(16),
        field(2),
        prop::option::of("-?[a-z0-9-]{0,8}"),
        "[ \t]{0,2}",
    )
        .prop_map(|(v, t, p, f, rest, pad)| {
            format!("{pad}{v}-{t}-{p}-{f}{}{pad}", rest.unwrap_or_default())
        })
}

#[test]
fn every_traceparent_seed_agrees_with_the_model() {
    for seed in corpus_lines("traceparent.txt") {
        let text = String::from_utf8(seed).unwrap();
        assert_eq!(
            TraceParent::parse(&text),
            traceparent_model(&text),
            "{text:?}"
        );
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn traceparents_round_trip(trace_id in any::<[u8; 16]>(), parent_id in any::<[u8; 8]>(), flags in any::<u8>()) {
        prop_assume!(trace_id != [0; 16] && parent_id != [0; 8]);
        let parent = TraceParent { trace_id, parent_id, flags };
        prop_assert_eq!(TraceParent::parse(&parent.to_string()), Some(parent));
        prop_assert_eq!(TraceParent::parse(&parent.child()).map(|c| c.trace_id), Some(trace_id));
    }

    #[test]
    fn traceparent_parsing_agrees_with_the_model(
        text in prop_oneof![
            mutated(corpus_lines("traceparent.txt")).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            traceparent_like(),
            "[0-9a-fA-F\\- ]{0,70}",
        ]
    ) {
        prop_assert_eq!(TraceParent::parse(&text), traceparent_model(&text));
    }
}

// ---- Subscription patterns ----------------------------------------------------------------

/// Names from a few segments, so that patterns and types often share prefixes.
fn type_name() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["user", "herald", "created", "run", "a", "a_b", "7"]),
        1..5,
    )
    .prop_map(|segments| segments.join("."))
}

fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        type_name(),
        type_name().prop_map(|p| format!("{p}.*")),
    ]
}

/// `*`: every type whose first segment is not `herald` (or that has no second one);
/// `p.*`: types with the segments of `p` and more; otherwise equality, by segments.
fn pattern_model(pattern: &str, event_type: &str) -> bool {
    let t: Vec<&str> = event_type.split('.').collect();
    if pattern == "*" {
        return !(t.len() > 1 && t[0] == "herald");
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            let p: Vec<&str> = prefix.split('.').collect();
            t.len() > p.len() && t[..p.len()] == p[..]
        }
        None => pattern.split('.').eq(t.iter().copied()),
    }
}

/// A type name by a scan of its characters: segments of `[a-z0-9_]`, dots between them.
fn type_name_model(name: &str) -> bool {
    let mut segment_len = 0;
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' | '_' => segment_len += 1,
            '.' if segment_len > 0 => segment_len = 0,
            _ => return false,
        }
    }
    segment_len > 0 && name.len() <= herald::catalog::MAX_TYPE_LEN
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn patterns_match_as_the_model_says(pattern in pattern(), event_type in type_name()) {
        prop_assert!(is_valid_pattern(&pattern));
        prop_assert_eq!(pattern_matches(&pattern, &event_type), pattern_model(&pattern, &event_type));
    }

    #[test]
    fn names_and_patterns_are_validated_as_the_model_says(text in "[a-z0-9_.*A-Z -]{0,12}") {
        prop_assert_eq!(is_valid_type_name(&text), type_name_model(&text));
        let pattern_ok = text == "*"
            || text.strip_suffix(".*").map_or(type_name_model(&text), type_name_model);
        prop_assert_eq!(is_valid_pattern(&text), pattern_ok);
    }
}

// ---- Configuration ------------------------------------------------------------------------

fn load_config(text: &[u8]) -> Result<herald::Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, text).unwrap();
    herald::Config::load(Some(file), &herald::config::Overrides::default())
        .map_err(|e| e.to_string())
}

fn config_seeds() -> Vec<Vec<u8>> {
    let mut seeds = corpus("config");
    seeds.push(
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/herald.default.toml"))
            .unwrap(),
    );
    seeds
}

/// Every key the default file sets or documents, with the value it shows.
fn documented_keys() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/herald.default.toml"),
    )
    .unwrap();
    text.lines()
        .map(|line| line.trim_start_matches('#').trim())
        .filter_map(|line| line.split_once(" = "))
        .filter(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_config_seed_loads() {
    for seed in config_seeds() {
        load_config(&seed).unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&seed)));
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any file gives a configuration or an error that says something.
    #[test]
    fn mutated_config_files_load_or_explain(bytes in mutated(config_seeds())) {
        if let Err(e) = load_config(&bytes) {
            prop_assert!(!e.trim().is_empty());
        }
    }

    /// A key given a value of the wrong kind is refused by its name.
    #[test]
    fn a_wrong_value_names_its_key(
        key in prop::sample::select(documented_keys()),
        value in prop::sample::select(vec!["{ x = 1 }", "[[1], [2]]"]),
    ) {
        let (key, _) = key;
        let err = load_config(format!("{key} = {value}\n").as_bytes());
        prop_assert!(err.as_ref().is_err_and(|e| e.contains(&key)), "{:?}", err);
    }
}

// ---- Standard Webhooks signatures -----------------------------------------------------------

fn secret() -> impl Strategy<Value = String> {
    use base64::Engine as _;
    prop::collection::vec(any::<u8>(), 24..=64).prop_map(|bytes| {
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    })
}

fn headers(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", id.parse().unwrap());
    headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
    headers.insert("webhook-signature", signature.parse().unwrap());
    headers
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

proptest! {
    #![proptest_config(config())]

    /// The same bytes as the reference signer, for any id, timestamp and body.
    #[test]
    fn signatures_match_the_reference_signer(secret in secret(), id in "[!-~]{1,64}", timestamp in any::<i64>(), body in ".{0,200}") {
        let ours = SigningKey::parse(&Secret::new(secret.clone())).unwrap();
        let reference = standardwebhooks::Webhook::new(&secret).unwrap();
        prop_assert_eq!(ours.sign(&id, timestamp, body.as_bytes()), reference.sign(&id, timestamp, body.as_bytes()).unwrap());
    }

    /// What Herald sends verifies with the reference verifier, also beside a rotated-out key's
    /// token, and fails once any one byte of the body, id or signature changes.
    #[test]
    fn signatures_verify_and_any_change_breaks_them(
        secret in secret(),
        other in secret(),
        rotated in any::<bool>(),
        id in "[!-~]{1,64}",
        skew in -290i64..290,
        body in ".{1,200}",
        at in any::<usize>(),
        replacement in "[!-~]",
    ) {
        let key = SigningKey::parse(&Secret::new(secret.clone())).unwrap();
        let old = SigningKey::parse(&Secret::new(other)).unwrap();
        let timestamp = now_seconds() + skew;
        let keys = if rotated { vec![old, key] } else { vec![key] };
        let signature = signature_header(&keys, &id, timestamp, body.as_bytes());
        let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
        prop_assert!(verifier.verify(body.as_bytes(), &headers(&id, timestamp, &signature)).is_ok());

        let changed = |s: &str| {
            let i = at % s.len();
            let mut bytes = s.as_bytes().to_vec();
            let with = replacement.as_bytes()[0];
            bytes[i] = if bytes[i] == with { if with == b'!' { b'"' } else { b'!' } } else { with };
            bytes
        };
        let new_body = changed(&body);
        prop_assert!(verifier.verify(&new_body, &headers(&id, timestamp, &signature)).is_err());
        let new_id = String::from_utf8(changed(&id)).unwrap();
        prop_assert!(verifier.verify(body.as_bytes(), &headers(&new_id, timestamp, &signature)).is_err());
        // The last token is the current key's; change a byte of its base64 part.
        let token_start = signature.rfind("v1,").unwrap() + 3;
        let mut tampered = signature.clone().into_bytes();
        let i = token_start + at % (signature.len() - token_start);
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        prop_assert!(verifier.verify(body.as_bytes(), &headers(&id, timestamp, &tampered)).is_err());
        prop_assert!(verifier.verify(body.as_bytes(), &headers(&id, timestamp + 1, &signature)).is_err());
    }
}

// ---- Delivery filters, through the API ----------------------------------------------------

/// The delivery filters (`statuses`, `event_types`, `date_from`, `date_to`) as the API parses
/// them, against a model, on a real server (and on PostgreSQL in CI's second pass).
mod api {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use herald::clock::Clock as _;
    use proptest::prelude::*;
    use proptest::test_runner::TestRunner;
    use serde_json::{Value, json};

    use crate::helpers::*;

    const TYPES: &[&str] = &["user.created", "user.deleted", "flow.run.finished"];
    const STATUSES: &[&str] = &["pending", "succeeded", "failed", "cancelled"];
    /// When the clock starts (ManualClock's default) and how far apart the events are.
    const STEP_MS: i64 = 60_000;

    #[derive(Debug, Clone)]
    struct Query {
        statuses: Option<Vec<&'static str>>,
        event_types: Option<Vec<&'static str>>,
        date_from: Option<&'static str>,
        date_to: Option<&'static str>,
    }

    fn query(times: Vec<&'static str>) -> impl Strategy<Value = Query> {
        let words = |pool: Vec<&'static str>| {
            prop::option::of(prop::collection::vec(prop::sample::select(pool), 0..4))
        };
        let mut statuses: Vec<&'static str> = STATUSES.to_vec();
        statuses.extend(["", " pending ", "PENDING", "done"]);
        let mut types: Vec<&'static str> = TYPES.to_vec();
        types.extend(["", " user.created ", "nope.none"]);
        let mut dates = times;
        dates.extend(["yesterday", "2020-13-01T00:00:00Z", ""]);
        (
            words(statuses),
            words(types),
            prop::option::of(prop::sample::select(dates.clone())),
            prop::option::of(prop::sample::select(dates)),
        )
            .prop_map(|(statuses, event_types, date_from, date_to)| Query {
                statuses,
                event_types,
                date_from,
                date_to,
            })
    }

    /// What the API must answer: the ids listed, or that the query is refused.
    fn model(query: &Query, events: &[(String, &str, i64)]) -> Result<BTreeSet<String>, ()> {
        let split = |list: &Option<Vec<&str>>| -> Vec<String> {
            list.iter()
                .flat_map(|words| {
                    words
                        .join(",")
                        .split(',')
                        .map(|w| w.trim().to_string())
                        .collect::<Vec<_>>()
                })
                .filter(|w| !w.is_empty())
                .collect()
        };
        let statuses = split(&query.statuses);
        if statuses.iter().any(|s| !STATUSES.contains(&s.as_str())) {
            return Err(());
        }
        let types = split(&query.event_types);
        let date = |d: Option<&str>| -> Result<Option<i64>, ()> {
            d.map(|d| herald::event::parse_time(d).ok_or(()))
                .transpose()
        };
        let (from, to) = (date(query.date_from)?, date(query.date_to)?);
        if let (Some(f), Some(t)) = (from, to)
            && f > t
        {
            return Err(());
        }
        Ok(events
            .iter()
            .filter(|(_, t, _)| types.is_empty() || types.iter().any(|x| x == t))
            // Every delivery of a paused stream is pending.
            .filter(|_| statuses.is_empty() || statuses.iter().any(|s| s == "pending"))
            .filter(|(_, _, at)| from.is_none_or(|f| *at >= f) && to.is_none_or(|t| *at < t))
            .map(|(id, _, _)| id.clone())
            .collect())
    }

    #[test]
    fn delivery_filters_select_what_the_model_says() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (app, stream, events, times) = runtime.block_on(async {
            let app = spawn_app().await;
            // Paused: its deliveries stay pending, so the model knows every status.
            let stream = app
                .create_stream(
                    "http://127.0.0.1:9/hook",
                    &["*"],
                    json!({"status": "paused"}),
                )
                .await["id"]
                .as_str()
                .unwrap()
                .to_string();
            let mut events = Vec::new();
            let mut times = Vec::new();
            for i in 0..12 {
                let event_type = TYPES[i % TYPES.len()];
                let id = format!("e{i}");
                app.publish(json!({"id": id, "type": event_type})).await;
                events.push((id, event_type, app.clock.now_ms()));
                // A bound at an event's own time and one just after it.
                let at = herald::event::format_time(app.clock.now_ms());
                let after = herald::event::format_time(app.clock.now_ms() + 1);
                times.push(&*Box::leak(at.into_boxed_str()));
                times.push(&*Box::leak(after.into_boxed_str()));
                app.clock.advance(Duration::from_millis(STEP_MS as u64));
            }
            (app, stream, events, times)
        });
        let mut runner = TestRunner::new(super::config());
        runner
            .run(&query(times), |query| {
                let mut url = format!("/v1/event-streams/{stream}/deliveries?take=100");
                let mut add = |name: &str, value: &str| {
                    url.push_str(&format!(
                        "&{name}={}",
                        percent_encoding::utf8_percent_encode(
                            value,
                            percent_encoding::NON_ALPHANUMERIC
                        )
                    ));
                };
                if let Some(s) = &query.statuses {
                    add("statuses", &s.join(","));
                }
                if let Some(t) = &query.event_types {
                    add("event_types", &t.join(","));
                }
                if let Some(d) = query.date_from {
                    add("date_from", d);
                }
                if let Some(d) = query.date_to {
                    add("date_to", d);
                }
                let (status, body) = runtime.block_on(app.get(&url));
                match model(&query, &events) {
                    Err(()) => {
                        prop_assert_eq!(status.as_u16(), 400, "{} answered {}", url, body);
                        prop_assert_eq!(&body["error"]["code"], "invalid_request");
                    }
                    Ok(expected) => {
                        prop_assert_eq!(status.as_u16(), 200, "{} answered {}", url, body);
                        let listed: BTreeSet<String> = body["deliveries"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|d| d["event_id"].as_str().unwrap().to_string())
                            .collect();
                        prop_assert_eq!(listed, expected, "{}", url);
                        prop_assert_eq!(&body["next"], &Value::Null);
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}

// ---- Tenant schemas for `data` ------------------------------------------------------------

#[test]
fn every_schema_seed_compiles_and_points_into_every_data_seed() {
    let mut refusals = 0;
    for schema in corpus("schemas") {
        let schema: Value = serde_json::from_slice(&schema).unwrap();
        let compiled = herald::catalog::schema::Schema::compile(&schema)
            .unwrap_or_else(|e| panic!("{schema}: {e}"));
        for data in corpus("schema-data") {
            let data: Value = serde_json::from_slice(&data).unwrap();
            if let Err(e) = compiled.validate(&data) {
                refusals += 1;
                assert!(
                    data.pointer(&e.path).is_some(),
                    "{:?} is not in {data}",
                    e.path
                );
            }
        }
    }
    assert!(refusals > 0, "no seed is refused: the paths go unchecked");
}

proptest! {
    #![proptest_config(config())]

    /// Any schema text compiles or is refused with a reason, and a compiled schema judges any
    /// `data`, pointing a refusal at a place that exists in it.
    #[test]
    fn schemas_compile_or_explain_and_point_into_data(
        schema in mutated(corpus("schemas")),
        data in prop_oneof![
            json_value(),
            // Data close to what the seed schemas want, so refusals point deep into it.
            mutated(corpus("schema-data"))
                .prop_map(|b| serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null)),
        ],
    ) {
        let Ok(schema) = serde_json::from_slice::<Value>(&schema) else {
            return Ok(());
        };
        match herald::catalog::schema::Schema::compile(&schema) {
            Err(reason) => prop_assert!(!reason.trim().is_empty()),
            Ok(compiled) => {
                if let Err(e) = compiled.validate(&data) {
                    prop_assert!(data.pointer(&e.path).is_some(), "{:?} is not in {}", e.path, data);
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
    }
}
