//! TLS to PostgreSQL: each `sslmode` connects or refuses as libpq's does, against the real
//! server, and a node on `verify-full` publishes and delivers with every session encrypted.
//! These tests need `HERALD_TEST_DATABASE_URL` and the certificate the server presents (or its
//! CA): `HERALD_TEST_DATABASE_ROOT_CERT`, by default Debian's self-signed snakeoil certificate,
//! which is issued to `localhost`. Without either they are reported as ignored.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;
use herald::store::postgres::parse_url;

/// The name on the server's certificate: the snakeoil certificate's only name.
const CERT_HOST: &str = "localhost";

/// A self-signed certificate for `localhost` too, with a key of its own: the server's
/// certificate does not chain to it.
const OTHER_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIUN8Ze4EAAKXEerrVU+s+mamHUM0MwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEzMDA5MDUwMloYDzIxMjYxMTA2
MDkwNTAyWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATMMLzux4kl8RywujdpfrTyw1qYSYw1LVrbsFsLIXliIWRk2FVO38lX
EjNo2//l3RXfOInJ0SSYFOfvoWmOUncBo2kwZzAdBgNVHQ4EFgQUFbTzfRhxslV2
TzN8mRuUfv8CHg4wHwYDVR0jBBgwFoAUFbTzfRhxslV2TzN8mRuUfv8CHg4wDwYD
VR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3QwCgYIKoZIzj0EAwID
SAAwRQIhAJ2N8svl4ISwgj8ZZfnKi9twZDihgpBwoPDz98Jq1oisAiA2GV4VWf1Z
a4DbLqT6UW8agaTddfWajD714CNJpvzrFA==
-----END CERTIFICATE-----
";

fn root_cert() -> String {
    std::env::var("HERALD_TEST_DATABASE_ROOT_CERT")
        .ok()
        .or(option_env!("HERALD_TEST_DATABASE_ROOT_CERT").map(str::to_string))
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| "/etc/ssl/certs/ssl-cert-snakeoil.pem".into())
}

fn base_url() -> String {
    std::env::var("HERALD_TEST_DATABASE_URL")
        .expect("this test needs HERALD_TEST_DATABASE_URL (it was set when the tests were built)")
}

/// `url` on `host` (by name or address), with `tls` in place of its own TLS parameters.
fn tls_url(url: &str, host: &str, tls: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_host(Some(host)).unwrap();
    let query: Vec<&str> = url
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| {
            !pair.is_empty() && !pair.starts_with("sslmode=") && !pair.starts_with("sslrootcert=")
        })
        .chain(tls.split('&').filter(|pair| !pair.is_empty()))
        .collect();
    let query = query.join("&");
    url.set_query((!query.is_empty()).then_some(query.as_str()));
    url.to_string()
}

/// Connects as Herald does; tells whether the session is encrypted, as the server sees it.
async fn encrypted(url: &str) -> Result<bool, String> {
    let target = parse_url(url).map_err(|e| e.to_string())?;
    let (client, connection) = target
        .connect()
        .await
        .map_err(|e| herald::error_chain(&e))?;
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| herald::error_chain(&e))?;
    Ok(row.get(0))
}

#[tokio::test]
#[cfg_attr(
    not(herald_postgres_tls_tests),
    ignore = "needs HERALD_TEST_DATABASE_URL and the server's certificate"
)]
async fn each_sslmode_connects_or_refuses_as_libpq_does() {
    let base = base_url();
    let root = root_cert();
    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other.path(), OTHER_CA).unwrap();
    let other = other.path().display().to_string();
    let at = |host: &str, tls: &str| tls_url(&base, host, tls);

    // Connects, and whether the session is encrypted.
    let connects = [
        (at("127.0.0.1", "sslmode=disable"), false),
        // prefer, libpq's default: TLS, since the server offers it.
        (at("127.0.0.1", ""), true),
        (at("127.0.0.1", "sslmode=prefer"), true),
        // require checks nothing of the certificate without a root certificate.
        (at("127.0.0.1", "sslmode=require"), true),
        (
            at("127.0.0.1", &format!("sslmode=require&sslrootcert={root}")),
            true,
        ),
        // verify-ca checks the chain, not the name.
        (
            at(
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={root}"),
            ),
            true,
        ),
        (
            at(
                CERT_HOST,
                &format!("sslmode=verify-full&sslrootcert={root}"),
            ),
            true,
        ),
    ];
    for (url, tls) in connects {
        assert_eq!(encrypted(&url).await, Ok(tls), "{url}");
    }

    // Refused, and the reason.
    let refused = [
        // verify-full checks the name: the certificate is not for an address.
        (
            at(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={root}"),
            ),
            "certificate not valid for name \"127.0.0.1\"",
        ),
        (
            at(
                CERT_HOST,
                &format!("sslmode=verify-full&sslrootcert={other}"),
            ),
            "invalid peer certificate",
        ),
        (
            at(CERT_HOST, &format!("sslmode=verify-ca&sslrootcert={other}")),
            "invalid peer certificate",
        ),
        // As in libpq, require with a root certificate verifies the chain.
        (
            at(CERT_HOST, &format!("sslmode=require&sslrootcert={other}")),
            "invalid peer certificate",
        ),
    ];
    for (url, reason) in refused {
        let err = encrypted(&url).await.unwrap_err();
        assert!(
            err.contains("TLS handshake") && err.contains(reason),
            "{url}: {err}"
        );
    }
}

// Multi-threaded: the test waits on a child process while its receiver must keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(herald_postgres_tls_tests),
    ignore = "needs HERALD_TEST_DATABASE_URL and the server's certificate"
)]
async fn a_node_on_verify_full_publishes_and_delivers_over_tls() {
    let database = postgres_database().await;
    let url = tls_url(
        &database.url,
        CERT_HOST,
        &format!("sslmode=verify-full&sslrootcert={}", root_cert()),
    );
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let server = start_server(dir.path(), &[("HERALD_DATABASE_URL", &url)]);
    let http = reqwest::Client::new();
    server.create_stream(&http, &receiver).await;
    let published = http
        .post(format!("{}/v1/events", server.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"id": "over-tls", "source": "/tls", "type": "user.created"}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0].json()["id"], "over-tls");

    // The node's sessions carry the scratch schema's name: the pools' and the one listening
    // for other nodes' notifications are all encrypted.
    let application = database
        .url
        .rsplit_once("application_name=")
        .unwrap()
        .1
        .to_string();
    let target = parse_url(&base_url()).unwrap();
    let (client, connection) = target.connect().await.unwrap();
    tokio::spawn(connection);
    let sessions = client
        .query(
            "SELECT s.ssl, a.query LIKE 'LISTEN%' FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
            &[&application],
        )
        .await
        .unwrap();
    let listening = sessions.iter().filter(|row| row.get::<_, bool>(1)).count();
    assert_eq!(listening, 1, "one session listens for notifications");
    assert!(sessions.len() >= 2, "{} sessions", sessions.len());
    assert!(
        sessions.iter().all(|row| row.get::<_, bool>(0)),
        "every session of the node is encrypted"
    );
}

/// `herald migrate` connects the same way, and a bad TLS option stops it with a message that
/// names the option and never the password.
#[tokio::test]
#[cfg_attr(
    not(herald_postgres_tls_tests),
    ignore = "needs HERALD_TEST_DATABASE_URL and the server's certificate"
)]
async fn migrate_honours_the_tls_options_and_names_a_bad_one() {
    let database = postgres_database().await;
    let root = root_cert();
    let with_password = |host: &str, tls: &str| {
        let mut url = url::Url::parse(&tls_url(&database.url, host, tls)).unwrap();
        url.set_password(Some("hunter2")).unwrap();
        url.to_string()
    };
    let migrate = |url: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["migrate", "--database-url", url])
            .env_remove("HERALD_DATABASE_URL")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !stderr.contains("hunter2"),
            "the password was printed: {stderr}"
        );
        (output.status.success(), stderr)
    };

    let (ok, stderr) = migrate(&with_password(
        CERT_HOST,
        &format!("sslmode=verify-full&sslrootcert={root}"),
    ));
    assert!(ok, "{stderr}");

    let bad = [
        (
            CERT_HOST,
            "sslmode=verify-everything".to_string(),
            "unknown sslmode `verify-everything`",
        ),
        (
            CERT_HOST,
            "sslmode=verify-full".to_string(),
            "sslmode=verify-full needs sslrootcert",
        ),
        (
            CERT_HOST,
            "sslmode=verify-ca&sslrootcert=no-such-ca.pem".to_string(),
            "sslrootcert no-such-ca.pem cannot be read",
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={root}"),
            "certificate not valid for name",
        ),
    ];
    for (host, tls, reason) in bad {
        let (ok, stderr) = migrate(&with_password(host, &tls));
        assert!(!ok && stderr.contains(reason), "{tls}: {stderr}");
    }
}
