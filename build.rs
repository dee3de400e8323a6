//! Marks the build when `HERALD_TEST_DATABASE_URL` is set, so the tests that need PostgreSQL
//! run then and are reported as ignored otherwise (Rust decides `#[ignore]` when it compiles);
//! likewise `HERALD_TEST_PROMETHEUS_PYTHON` (a Python with PyPI `prometheus-client`) for the
//! test that checks `/metrics` with that reference parser.
//!
//! The tests of TLS to PostgreSQL also need the certificate the server presents (or the one
//! that signed it): `HERALD_TEST_DATABASE_ROOT_CERT`, or by default Debian's self-signed
//! `ssl-cert-snakeoil.pem`, which a Debian PostgreSQL serves unless configured otherwise.
//!
//! The tests that run the projects `herald scaffold` writes need a toolchain prepared for
//! each language: `HERALD_TEST_SCAFFOLD_NODE_MODULES` (a `node_modules` holding npm
//! `standardwebhooks`), `HERALD_TEST_SCAFFOLD_PYTHON` (a Python with PyPI `standardwebhooks`)
//! and `HERALD_TEST_SCAFFOLD_CARGO_TARGET` (a target directory for the generated Rust project).
//!
//! The console's browser test needs `HERALD_TEST_BROWSER_NODE_MODULES` (a `node_modules`
//! holding npm `playwright-core`, which drives the machine's Chromium).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(herald_postgres_tests)");
    println!("cargo::rerun-if-env-changed=HERALD_TEST_DATABASE_URL");
    if std::env::var_os("HERALD_TEST_DATABASE_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=herald_postgres_tests");
    }
    println!("cargo::rustc-check-cfg=cfg(herald_prometheus_parser_tests)");
    println!("cargo::rerun-if-env-changed=HERALD_TEST_PROMETHEUS_PYTHON");
    if std::env::var_os("HERALD_TEST_PROMETHEUS_PYTHON").is_some_and(|path| !path.is_empty()) {
        println!("cargo::rustc-cfg=herald_prometheus_parser_tests");
    }
    println!("cargo::rustc-check-cfg=cfg(herald_postgres_tls_tests)");
    println!("cargo::rerun-if-env-changed=HERALD_TEST_DATABASE_ROOT_CERT");
    let root_cert = std::env::var("HERALD_TEST_DATABASE_ROOT_CERT")
        .ok()
        .filter(|path| !path.is_empty());
    let snakeoil = std::path::Path::new(DEBIAN_SNAKEOIL_CERT).exists();
    if snakeoil {
        println!("cargo::rerun-if-changed={DEBIAN_SNAKEOIL_CERT}");
    }
    if std::env::var_os("HERALD_TEST_DATABASE_URL").is_some_and(|url| !url.is_empty())
        && (root_cert.is_some() || snakeoil)
    {
        println!("cargo::rustc-cfg=herald_postgres_tls_tests");
    }
    for (variable, cfg) in [
        (
            "HERALD_TEST_SCAFFOLD_NODE_MODULES",
            "herald_scaffold_node_tests",
        ),
        (
            "HERALD_TEST_SCAFFOLD_PYTHON",
            "herald_scaffold_python_tests",
        ),
        (
            "HERALD_TEST_SCAFFOLD_CARGO_TARGET",
            "herald_scaffold_rust_tests",
        ),
        ("HERALD_TEST_BROWSER_NODE_MODULES", "herald_browser_tests"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={variable}");
        if std::env::var_os(variable).is_some_and(|value| !value.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}

/// Where Debian keeps the self-signed certificate its PostgreSQL serves by default.
const DEBIAN_SNAKEOIL_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
